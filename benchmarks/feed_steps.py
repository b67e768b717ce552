"""Feed benchmark T3: training with a stub step that sleeps the measured RAM-fed H200 step, fed
by the trainer's own batch stream — how long does a step wait for its batch?

The trainers are built as ``pkd train`` builds them (``gpu.Bench``: VQA v2-format data, a
regions store of 36 x 2048 float16 features, the CLI's foundation stores for PKD, the adapted
teacher's store for DistillVLM — every store uncompressed, pkd's default ``--codec none``; one
more UpDn row reads lz4 regions through Zarr), then the
trainer's own batches (its sampler's order, ``VQABatches`` reading its stores and chunk caches,
one read-ahead thread two batches deep, rows copied once into the ring of host buffers, as
``fit`` feeds a GPU) are drained with a stub step:
a sleep of the H200's RAM-fed step (batches kept float16 on the host, as for a GPU)
(UpDn 37 ms, PKD stage 2 151 ms, DistillVLM student 89 ms: ``results/gpu-h200-2026-12-04-*``).
The same stub is fed from the same arrays held in RAM (``gpu_train_rows.in_ram``, same
read-ahead) for comparison. Each feed first reads four batches untimed (a later epoch: chunk
checksums checked, page cache warm); the chunk caches of Zarr-read stores are emptied before
each pass (at scale they hold a window of chunks, not the data set: each chunk is decoded once
per epoch); rounds alternate store and RAM, the least waiting of ``repeat`` kept.
Target: data wait <= 5% of the step time from the store, for each method.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

H200_STEP_MS = {"baseline": 37.0, "pkd": 151.0, "distillvlm": 89.0}
LABELS = {"baseline": "UpDn baseline", "pkd": "PKD stage 2",
          "distillvlm": "DistillVLM student (cached teacher)"}


def stub_pass(stream, step_s: float) -> tuple[int, float, float]:
    """(steps, seconds waited for batches, wall seconds) of draining ``stream`` with a stub
    step (the copy to the device and the float16 -> float32 there are asynchronous GPU work on
    an H200: inside the sleep)."""
    from gpu_train_rows import drain

    start = time.perf_counter()
    steps, wait = drain(stream, lambda _batch: time.sleep(step_s))
    return steps, wait, time.perf_counter() - start


def feeds(train_images: int, steps: int, work: Path | None,
          methods: tuple[str, ...], lz4: bool = True):
    """For each method (and, with ``lz4``, UpDn on lz4 regions read through Zarr):
    ``(base method, label, trainer, positions, store feed, RAM feed)`` — the trainer built as
    ``pkd train`` builds it, ``steps`` of its batches, its ``VQABatches`` and the same over the
    stores' arrays held in RAM (both keeping float16 on the host, as for a GPU)."""
    from bench_loader import region_arrays, write_store
    from common import SMALL
    from gpu import Bench
    from gpu_sizes import SIZES
    from gpu_train_rows import epoch_positions, in_ram

    from pkd.train.data import Stores, VQABatches

    size = dataclasses.replace(
        SIZES["full"], clip=SMALL, images=train_images, train_images=train_images,
        steps=steps, repeat=1, val_fraction=0.05, train_batch=256, answers=1000,
        models={"student": {"model.arch": "fusion"}})
    args = argparse.Namespace(strict=True, budget=1e9)
    with tempfile.TemporaryDirectory(prefix="pkd-feed-", dir=work) as tmp:
        bench = Bench(args, size, "cpu", "float32", Path(tmp))
        bench.prepare()
        bench.regions = bench.stores / "regions.zarr"
        regions = region_arrays(size.train_images, size.regions, size.region_dim)
        write_store(bench.regions, regions)
        lz4_regions = bench.stores / "regions-lz4.zarr"
        if lz4:
            write_store(lz4_regions, regions, compression="lz4")
        del regions
        bench.runs = Path(tmp) / "runs"
        for method in (*methods, *(("baseline, regions --codec lz4",) if lz4 else ())):
            if method.startswith("baseline, regions"):  # the same rows, lz4 regions via Zarr
                bench.regions, bench.runs = lz4_regions, Path(tmp) / "runs-lz4"
            if method == "pkd":
                from pkd.pipeline.extract import extract_foundation
                from pkd.pipeline.runner import RunOptions

                extract_foundation(bench._recipe(bench.data_train), bench.stores,
                                   RunOptions(overwrite=True))
            base = method.split(",")[0]
            trainer = bench._trainer(base)
            feed = trainer.train
            ram = Stores(**{f.name: in_ram(getattr(feed.stores, f.name))
                            for f in dataclasses.fields(Stores)})
            ram_feed = VQABatches(feed.split, ram, feed.rows, feed.num_answers,
                                  feed.foundation_tokens)
            feed.half_on_host = ram_feed.half_on_host = True  # as on a GPU: float16 crosses
            yield (base, LABELS[base] + method[len(base):], trainer,
                   epoch_positions(trainer, steps), feed, ram_feed)
            if trainer.log is not None:
                trainer.log.close()


def clear_caches(feed) -> None:
    """Empty the chunk caches of a feed's Zarr-read stores (at scale they hold a window of
    chunks, not the data set: each chunk is decoded once per epoch)."""
    from pkd.train.data import Stores

    for f in dataclasses.fields(Stores):
        store = getattr(feed.stores, f.name)
        if store is not None and getattr(store, "_cache", None) is not None:
            store._cache.clear()


def run_t3(train_images: int = 128, steps: int = 12, repeat: int = 2, work: Path | None = None,
           methods: tuple[str, ...] = ("baseline", "distillvlm", "pkd")
           ) -> tuple[list[dict], list[tuple]]:
    """T3 rows and ``(id, what, value, op, target)`` target tuples."""
    from pkd.prefetch import prefetch
    from pkd.train.host_buffers import HostBuffers

    rows, targets = [], []
    for base, label, _, positions, feed, ram_feed in feeds(train_images, steps, work, methods):
        step_s = H200_STEP_MS[base] / 1000
        feed.buffers, ram_feed.buffers = HostBuffers(5), HostBuffers(5)  # fit's ring on a GPU
        for p in positions[:4]:  # warm-up: chunk checks, page cache, caches (as epoch 2+)
            feed[p]
        results = {}
        for _ in range(repeat):  # interleaved rounds, the least waiting kept
            for name, source in (("store", feed), ("RAM", ram_feed)):
                clear_caches(feed)
                stream = prefetch(source.__getitem__, iter(positions), depth=2)
                got = stub_pass(stream, step_s)
                if name not in results or got[1] < results[name][1]:
                    results[name] = got
        for name, (n, wait, wall) in results.items():
            rows.append({"what": f"{label}, {name}", "steps": n,
                         "step ms (stub)": 1000 * step_s, "wait ms/step": 1000 * wait / n,
                         "wait share": wait / wall})
        n, wait, wall = results["store"]
        targets.append(("T3", f"{label}: data wait share from the store", wait / wall, "<=",
                        0.05))
    return rows, targets
