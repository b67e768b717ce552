"""``pkd train``: the slim training loop — data from the stores, one task, safe checkpoints.

``fit(cfg)``: seed -> vocabularies + stores -> model + task -> AdamW + schedule -> steps.
Every ``checkpoint_every`` steps (and at the end) a checkpoint is written atomically; every
``eval_every`` steps the validation score is measured and the best model so far is kept in
``RUN/best`` (selection never looks at the test split). ``resume=True`` continues from
``RUN/ckpt`` exactly: model, optimizer, schedule, RNG state and the position inside the epoch.
A non-finite loss stops the run with a clear error; the last good checkpoint stays.
An epoch drops its short last batch, unless it is the only one: a training split with fewer
questions than ``run.batch_size`` (times the processes under torchrun) trains one smaller batch
per epoch, the same on every rank.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pkd.cores import usable_cores
from pkd.errors import PkdError
from pkd.fsio import check_writable
from pkd.prefetch import prefetch
from pkd.stores import ChunkShuffleSampler
from pkd.train import checkpoint as ck
from pkd.train.config import TrainConfig
from pkd.train.config_load import config_to_dict, save_config, validate_config
from pkd.train.data import pinned, to_device
from pkd.train.distributed import World, all_reduce_sum, barrier, close_world, init_world
from pkd.train.host_buffers import HostBuffers
from pkd.train.losses.vqa import vqa_score
from pkd.train.metrics_log import MetricsLog, plot_curves
from pkd.train.prepare import build_run_model, open_stores, split_batches, vocabs
from pkd.train.schedule import make_scheduler
from pkd.train.splits import require_questions, val_split_name
from pkd.train.store_checks import check_provenance
from pkd.train.tasks import method_of


@dataclass
class FitResult:
    run_dir: Path
    steps: int
    best_val: float  # best validation VQA score (%), -1 if never evaluated
    final_checkpoint: Path | None


def set_threads(threads: int, world_size: int) -> int:
    """Torch CPU threads: ``threads``, or (cores - 1) / processes, at least 1.

    More threads than free cores makes torch's OpenMP workers spin against each other (and the
    data reader): measured here, a tiny model's step got 3-10x slower with 2 threads on 2 busy
    cores than with 1.
    """
    cores = usable_cores()
    n = threads or max(1, ((cores or 1) - 1) // max(1, world_size))
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_sampler(batches, cfg: TrainConfig, world: World, shuffle: bool) -> ChunkShuffleSampler:
    """Chunk-shuffled batches over the questions (ordered by image, so chunks are local)."""
    store = batches.stores.regions
    return ChunkShuffleSampler(
        batches.rows["regions"], batch_size=cfg.run.batch_size,
        items_per_chunk=store.spec.items_per_chunk, shuffle=shuffle, seed=cfg.run.seed,
        drop_last=shuffle, rank=world.rank, world_size=world.size)


def evaluate_batches(model, batches, cfg: TrainConfig, world: World) -> float:
    """Mean VQA soft score (%) of the argmax answer over a split (bottom-up convention)."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for batch in prefetch(batches.__getitem__,
                              make_sampler(batches, cfg, world, shuffle=False)):
            batch = _to(batch, world.device)
            scores = vqa_score(model(batch)["logits"].float(), batch["targets"])
            total += torch.tensor([scores.sum().item(), len(scores)], dtype=torch.float64)
    model.train()
    total = all_reduce_sum(total, world)
    return float(100.0 * total[0] / max(1.0, float(total[1])))


def _to(batch: dict, device: torch.device) -> dict:
    return to_device(batch, device)


def _autocast(cfg: TrainConfig, world: World):
    if cfg.run.amp and world.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Trainer:
    """State of one run; ``fit`` drives it. Kept small: setup, step, evaluate, save."""

    def __init__(self, cfg: TrainConfig, resume: bool):
        validate_config(cfg)  # a config built in code, too: refused before anything is written
        self.cfg, self.world = cfg, init_world(cfg.run.device)
        self.method = method_of(cfg)
        set_threads(cfg.run.threads, self.world.size)
        self.run_dir = Path(cfg.run.out_dir)
        seed_everything(cfg.run.seed)
        self.ckpt_root = self.run_dir / "ckpt"
        latest = ck.latest_checkpoint(self.ckpt_root) if resume else None
        if resume and latest is None:
            raise PkdError(f"{self.ckpt_root}: --resume given but there is no checkpoint yet")
        if not resume and self.world.main and ck.latest_checkpoint(self.ckpt_root) is not None:
            raise PkdError(f"{self.run_dir}: run folder already has checkpoints "
                           "(use --resume to continue, or another run.out_dir)")
        if self.world.main:
            check_writable(self.run_dir, "run.out_dir")  # created; refused if not writable
            self.vocabs = vocabs(cfg, self.run_dir, create=True)
        barrier(self.world)
        self.vocabs = vocabs(cfg, self.run_dir, create=False)
        stores = open_stores(cfg)
        if self.world.main:
            check_provenance(self.run_dir, stores)
        self.train_data, self.train = split_batches(
            cfg, cfg.data.train_split, self.vocabs, stores,
            foundation_tokens=self.method.foundation_tokens(cfg), teacher=True)
        val_data, self.val = split_batches(cfg, val_split_name(cfg), self.vocabs, stores,
                                           type_vocab=self.train.type_vocab)
        cuda = self.world.device.type == "cuda"
        self.train.half_on_host = self.val.half_on_host = cuda  # float16 crosses, then converts
        if cuda:  # stores read straight into pinned buffers (DataLoader workers: their own)
            self.val.buffers = HostBuffers(slots=5, pin=True)  # read-ahead depth 2 + 3
            if cfg.run.num_workers <= 0:
                self.train.buffers = HostBuffers(slots=5, pin=True)
        if self.validates:  # best/ is chosen on val: refuse an empty split before training
            require_questions(val_data, "validation")
        self.model = build_run_model(cfg, self.vocabs, stores)
        self.task = self.method.build_task(cfg, self.model, self.vocabs, stores)  # model + losses
        self.task = self.task.to(self.world.device)
        self.ddp = self.task
        if self.world.size > 1:
            # some methods leave parameters without gradient in a step (PKD's memory fusion)
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.task, find_unused_parameters=self.method.ddp_unused_parameters)
        o = cfg.optim
        self.opt = torch.optim.AdamW(self.task.parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                                     weight_decay=o.weight_decay)
        self.sampler = make_sampler(self.train, cfg, self.world, shuffle=True)
        if len(self.sampler) == 0:  # epochs without a step: fit would repeat them forever
            raise PkdError(f"data.train_split={cfg.data.train_split!r}: no training questions "
                           "to cut into batches; training not started")
        self.total = cfg.run.max_steps or cfg.run.epochs * len(self.sampler)
        self.sched = make_scheduler(self.opt, o.warmup_steps, self.total, o.schedule)
        self.step, self.epoch, self.in_epoch, self.best = 0, 0, 0, -1.0
        if latest is not None:
            self._restore(latest)  # refuses a checkpoint of another config
        if self.world.main:
            save_config(cfg, self.run_dir / "config.yaml")
        self.log = (MetricsLog(self.run_dir, self.step if latest else None)
                    if self.world.main else None)

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "in_epoch": self.in_epoch,
                "best": self.best, "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "rng": ck.capture_rng_state(),
                "config": config_to_dict(self.cfg)}

    def save(self) -> Path | None:
        if not self.world.main:
            return None
        return ck.save_checkpoint(self.ckpt_root, self.task.state_dict(), self._state(),
                                  keep_last=self.cfg.run.keep_last)

    def _restore(self, path: Path) -> None:
        weights, state = ck.load_checkpoint(path, expected_config=self.cfg)
        self.task.load_state_dict(weights)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        ck.restore_rng_state(state["rng"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.in_epoch, self.best = int(state["in_epoch"]), float(state["best"])

    def _save_best(self, score: float) -> None:
        self.best = score
        if self.world.main:
            ck.save_checkpoint(self.run_dir / "best", self.model.state_dict(),
                               {"step": self.step, "val_score": score,
                                "config": config_to_dict(self.cfg)}, keep_last=1)

    # ------------------------------------------------------------------ steps
    def train_step(self, batch: dict) -> dict[str, float]:
        with _autocast(self.cfg, self.world):
            out = self.ddp(_to(batch, self.world.device))
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise PkdError(f"{self.run_dir}: loss became {loss.item()} at step {self.step + 1}; "
                           f"stopped. Last good checkpoint: {ck.latest_checkpoint(self.ckpt_root)}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.task.parameters(), self.cfg.optim.grad_clip)
        self.opt.step()
        self.sched.step()
        return {k: float(v.detach()) for k, v in out.items() if k.endswith("loss")}

    @property
    def validates(self) -> bool:
        """Whether the method trains a VQA model to validate (PKD stage 1 trains predictors)."""
        return self.method.validates

    def validate(self) -> float:
        if not self.validates:
            return self.best
        score = evaluate_batches(self.model, self.val, self.cfg, self.world)
        if self.log is not None:
            self.log.log(self.step, "val", {"score": score})
        if score > self.best:
            self._save_best(score)
        return score

    def batch_stream(self):
        """The batches of :meth:`epoch_batches`, read ahead while a step trains: in a thread
        (``run.num_workers = 0``) or in that many DataLoader worker processes (each reopens the
        stores; on GPU nodes with many cores, and the batches come back in order)."""
        n = self.cfg.run.num_workers
        if n <= 0:
            read = self.train.__getitem__
            if self.world.device.type == "cuda":  # pinned in the read-ahead thread
                return prefetch(lambda p: pinned(read(p)), self.epoch_batches(), depth=2)
            return prefetch(read, self.epoch_batches(), depth=2)
        loader = torch.utils.data.DataLoader(
            self.train, batch_size=None, sampler=list(self.epoch_batches()), num_workers=n,
            prefetch_factor=2, pin_memory=self.world.device.type == "cuda")
        return _one_line_errors(loader)

    def epoch_batches(self):
        """The remaining batches of the current epoch (skips those done before a resume)."""
        self.sampler.set_epoch(self.epoch)
        for i, positions in enumerate(self.sampler):
            if i >= self.in_epoch:
                yield positions


def _one_line_errors(loader):
    """Batches of a DataLoader; a PkdError raised in a worker process comes back as the worker's
    traceback in its message ("Caught PkdError in DataLoader worker ..."): keep its one line."""
    try:
        yield from loader
    except PkdError as err:
        text = str(err).rstrip()
        if "Original Traceback" not in text:
            raise
        last = text.splitlines()[-1]
        raise PkdError(last.split("Error: ", 1)[-1]) from None


def _due(step: int, every: int, end_of_epoch: bool) -> bool:
    return (every > 0 and step % every == 0) or (every == 0 and end_of_epoch)


def fit(cfg: TrainConfig, resume: bool = False) -> FitResult:
    """Train ``cfg`` (or continue it with ``resume``); return where the run lives."""
    t = Trainer(cfg, resume)
    r = cfg.run
    try:
        if t.total == 0 and t.best < 0:  # zero-shot: the loaded model, validated as it is
            t.validate()
        while t.step < t.total:
            n_batches = len(t.sampler)
            for batch in t.batch_stream():
                losses = t.train_step(batch)
                t.step, t.in_epoch = t.step + 1, t.in_epoch + 1
                end = t.in_epoch == n_batches
                if t.log is not None and (t.step % max(1, r.log_every) == 0 or end):
                    t.log.log(t.step, "train", {**losses, "lr": t.sched.get_last_lr()[0]})
                if _due(t.step, r.eval_every, end) or t.step == t.total:
                    t.validate()
                if end:
                    t.epoch, t.in_epoch = t.epoch + 1, 0
                if _due(t.step, r.checkpoint_every, end) and t.step < t.total:
                    t.save()
                if t.step >= t.total:
                    break
        final = t.save()
        if t.world.main:
            plot_curves(t.run_dir)
    finally:
        if t.log is not None:
            t.log.close()
        close_world(t.world)
    return FitResult(t.run_dir, t.step, t.best, final)
