"""The training rows of the GPU benchmark (``gpu.Bench``): a ``Trainer`` built as ``pkd train``
builds it per method, fed from the stores and from the same arrays in RAM."""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable

from bench_loader import RamRegions, region_arrays, write_store
from gpu_table import Busy, sync

from pkd.pipeline.extract import extract_foundation
from pkd.pipeline.runner import RunOptions
from pkd.prefetch import prefetch
from pkd.train.config_load import load_config
from pkd.train.data import Stores, VQABatches
from pkd.train.loop import Trainer
from pkd.train.teacher_extract import extract_teacher


class TrainingRows:
    """The training half of :class:`gpu.Bench`, which holds what these methods read: ``size``,
    ``table``, ``device``, ``util``, ``stores``, ``data_train`` and ``_recipe`` / ``_free``."""

    def training(self) -> None:
        s, t = self.size, self.table
        labels = {"baseline": "UpDn baseline", "pkd": "PKD stage 2",
                  "distillvlm": "DistillVLM student (cached teacher)"}
        self.regions = self.stores / "regions.zarr"
        write_store(self.regions, region_arrays(s.train_images, s.regions, s.region_dim))
        if not (self.stores / "foundation_questions.zarr" / "zarr.json").is_file():
            extract_foundation(self._recipe(self.data_train), self.stores,
                               RunOptions(overwrite=True))  # the CLI row did not make them
        self.runs = self.work / "runs"
        for method, name in labels.items():
            rows = [f"train {name}, {feed}" for feed in ("RAM", "store")]
            if time.monotonic() - t.start > t.budget_s:
                for label in rows:
                    t.na(label, "skipped: time budget", "steps/s")
                continue
            try:
                trainer = self._trainer(method)
            except Exception as err:
                if t.strict:
                    raise
                traceback.print_exc()
                for label in rows:
                    t.na(label, f"error: {type(err).__name__}: {str(err)[:80]}", "steps/s")
                continue
            t.measure(rows, lambda tr=trainer, r=rows: self._train_rows(tr, r), "steps/s")
            if trainer.log is not None:
                trainer.log.close()
            del trainer
            self._free()

    def overrides(self, method: str) -> dict:
        s, m = self.size, self.size.models
        base = {"data.root": self.data_train, "data.dataset": "vqa2",
                "data.regions": self.regions, "data.val_fraction": s.val_fraction,
                "data.answer_min_count": 1, "run.batch_size": s.train_batch, "run.amp": True,
                "run.device": "auto", "run.eval_every": 0, "run.checkpoint_every": 0,
                "run.out_dir": self.runs / method}
        foundation = {"data.foundation_image": self.stores / "foundation_images.zarr",
                      "data.foundation_text": self.stores / "foundation_questions.zarr"}
        teacher = {**m.get("teacher", {}), "data.teacher_regions": self.regions}
        return {**base, **{
            "baseline": {**m.get("updn", {}), "method.name": "baseline"},
            "predictors": {**foundation, **m.get("pkd", {}), "method.name": "pkd-predictors"},
            "pkd": {**foundation, **m.get("updn", {}), **m.get("pkd", {}), "method.name": "pkd",
                    "method.pkd.predictors": self.runs / "predictors"},
            "teacher": {**teacher, "method.name": "teacher-adapt"},
            "distillvlm": {**teacher, **m.get("student", {}), "method.name": "distillvlm",
                           "method.distill.teacher_checkpoint": self.runs / "teacher" / "ckpt",
                           "data.teacher": self.stores / "teacher.zarr"},
        }[method]}

    def config(self, method: str):
        return load_config(None, [f"{k}={v}" for k, v in self.overrides(method).items()])

    def _trainer(self, method: str) -> Trainer:
        """The method's Trainer, after the runs it builds on (checkpoints of step 0 are enough
        to time steps: stage-1 predictors for PKD; adapted teacher + its store for DistillVLM)."""
        needs = {"pkd": "predictors", "distillvlm": "teacher"}.get(method)
        if needs and not (self.runs / needs / "ckpt" / "latest.json").is_file():
            before = Trainer(self.config(needs), resume=False)
            before.save()
            if before.log is not None:
                before.log.close()
            del before
        if method == "distillvlm" and not (self.stores / "teacher.zarr" / "zarr.json").is_file():
            extract_teacher(self.config(method), device=self.device)
        return Trainer(self.config(method), resume=False)

    def _train_rows(self, trainer: Trainer, labels: list[str]) -> None:
        s = self.size
        store_feed = trainer.train
        ram = Stores(**{f.name: in_ram(getattr(store_feed.stores, f.name))
                        for f in dataclasses.fields(Stores)})
        ram_feed = VQABatches(store_feed.split, ram, store_feed.rows, store_feed.num_answers,
                              store_feed.foundation_tokens)
        positions = epoch_positions(trainer, s.steps)
        trainer.task.train()
        for p in positions[:2]:  # warm-up: kernels, allocator, AdamW state
            trainer.train_step(ram_feed[p])
        best: dict[str, tuple[float, float, float | str]] = {}
        for _ in range(s.repeat):
            for label, feed in zip(labels, (ram_feed, store_feed), strict=True):
                for f in dataclasses.fields(Stores):
                    store = getattr(store_feed.stores, f.name)
                    if store is not None and store._cache is not None:
                        store._cache.clear()  # each chunk decoded once per pass
                total, wait, busy = self._train_pass(trainer, feed, positions)
                if label not in best or total < best[label][0]:
                    best[label] = (total, wait, busy)
        ram_rate = len(positions) / best[labels[0]][0]
        for label in labels:
            total, wait, busy = best[label]
            rate = len(positions) / total
            self.table.add(label, **{"steps/s": rate, "seconds": total,
                                     "ratio": rate / ram_rate, "ratio is": "x RAM",
                                     "wait ms": 1000 * wait / len(positions),
                                     "GPU busy %": busy})

    def _train_pass(self, trainer: Trainer, feed, positions) -> tuple[float, float, float | str]:
        """(seconds, seconds waited for batches, GPU busy) of one pass as ``fit`` runs it."""
        sync(self.device)
        with Busy(self.util) as busy:
            start = time.perf_counter()
            stream = prefetch(feed.__getitem__, positions, depth=2)
            _, wait = drain(stream, trainer.train_step)
            sync(self.device)
            total = time.perf_counter() - start
        return total, wait, busy.percent


def drain(stream, step: Callable[[dict], object]) -> tuple[int, float]:
    """Run ``step`` on every batch of ``stream``: (steps, seconds spent waiting for batches)."""
    steps, wait = 0, 0.0
    while True:
        t0 = time.perf_counter()
        batch = next(stream, None)
        wait += time.perf_counter() - t0
        if batch is None:
            return steps, wait
        step(batch)
        steps += 1


def in_ram(store):
    """Every array of ``store`` read into RAM, read like :meth:`FeatureStore.read`."""
    if store is None:
        return None
    ram = RamRegions(store.read_range(0, store.n_items))
    ram.path, ram.spec = store.path, store.spec  # what error messages name
    return ram


def epoch_positions(trainer: Trainer, n: int) -> list:
    """``n`` chunk-shuffled batches of the trainer's sampler (epochs 0, 1, ... as needed)."""
    out, epoch = [], 0
    while len(out) < n:
        trainer.sampler.set_epoch(epoch)
        got = list(trainer.sampler)
        if not got:
            raise RuntimeError("the training split has fewer questions than one batch")
        out += got
        epoch += 1
    return out[:n]

