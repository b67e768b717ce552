"""The extraction rows of the GPU benchmark (``gpu.Bench``): bare forwards, pkd's runner with
each image reader, compute only, store write alone, pkd as is and its CLI."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from gpu_inputs import crop_size, decoded_bank
from gpu_readers import (
    ReaderStage,
    bare_forward,
    cpu_thread_reader,
    encode_pixels,
    gpu_decode_reader,
    set_attention,
    tensor_reader,
)
from gpu_table import Busy

from pkd.pipeline.extract import extract_foundation
from pkd.pipeline.foundation import FoundationModel, FoundationSpec, load_foundation
from pkd.pipeline.runner import RunOptions, run_stage
from pkd.pipeline.sources import load_source
from pkd.pipeline.stages import FoundationImageStage
from pkd.stores import StoreWriter

DTYPES = ("float32", "float16", "bfloat16")
ATTENTIONS = ("eager", "sdpa")
COMPUTE_ROW = "compute only: decoded tensors, sdpa (no runner, no store)"
WRITE_ROW = "store write alone (StoreWriter: f16 vision tokens + embeds, default codec)"


class NotAvailable(Exception):
    """A row that cannot run on this machine (no CUDA, no torchvision)."""


class ExtractionRows:
    """The extraction half of :class:`gpu.Bench`, which holds what these methods read: ``size``,
    ``table``, ``device``, ``dtype``, ``work``, ``util``, ``threads``, the prepared files and
    ``_recipe`` / ``_free``."""

    def extraction(self) -> None:
        s, t = self.size, self.table
        fm = load_foundation(FoundationSpec(str(self.clip_dir), device=self.device,
                                            dtype=self.dtype))
        pixels = torch.randn(s.batch, 3, *crop_size(fm.image_processor), device=self.device)
        self._model_rows(fm, pixels)
        del fm, pixels
        self._free()
        t.measure("extract: JPEG, pkd as is (1 decode thread, PIL processor), eager",
                  self._as_is)
        t.measure("extract: `pkd extract foundation` CLI (as is; + questions)", self._cli)

    def _model_rows(self, fm: FoundationModel, pixels: torch.Tensor) -> None:
        """The rows that share one loaded model: bare forwards, fast readers, write alone."""
        s, t = self.size, self.table
        n_batches = max(1, s.images // s.batch)
        for attention in ATTENTIONS:
            set_attention(fm, attention)
            for dtype in DTYPES:
                label = f"bare forward {dtype}, {attention}"
                n = max(1, n_batches // 4) if dtype == "float32" else n_batches  # slow: fewer
                t.measure(label, lambda a=attention, d=dtype, lab=label, n=n: self._forward(
                    fm, pixels, n, d, a, lab))
        source = load_source(self.source(self.data_ext))
        pool = ThreadPoolExecutor(self.threads)
        readers = {
            "JPEG, CPU decode threads + PIL processor": (
                ATTENTIONS, lambda: cpu_thread_reader(source, fm.image_processor, pool,
                                                      self.device)),
            "JPEG, GPU decode_jpeg + GPU resize": (("sdpa",), lambda: self._gpu_reader(
                source, fm.image_processor, pool)),
            "decoded tensors (uint8 in RAM)": (ATTENTIONS, lambda: tensor_reader(
                decoded_bank(self.contents, fm.image_processor), self.ids, fm.image_processor,
                self.device)),
        }
        for name, (attentions, make) in readers.items():
            labels = [f"extract: {name}, {a}" for a in attentions]
            try:
                read = make()
            except NotAvailable as why:
                for label in labels:
                    t.na(label, str(why))
                continue
            for attention, label in zip(attentions, labels, strict=True):
                t.measure(label, lambda a=attention, lab=label, rd=read: self._extract(
                    fm, source, rd, a, lab))
            if name.startswith("decoded"):
                t.measure(COMPUTE_ROW, lambda rd=read: self._compute_only(fm, source, rd))
        pool.shutdown()
        t.measure(WRITE_ROW, lambda: self._write_alone(fm, pixels))

    def _forward(self, fm, pixels, n_batches: int, dtype: str, attention: str, label: str):
        best = float("inf")
        with Busy(self.util) as busy:
            for _ in range(self.size.repeat):
                best = min(best, bare_forward(fm, pixels, n_batches, dtype, self.device))
        n = n_batches * len(pixels)
        self.forward_s[dtype, attention] = best / n
        base = self.forward_s.get(("float32", attention))
        self.table.add(label, **{"images/s": n / best, "seconds": best,
                                 "ratio": base * n / best if base else "",
                                 "ratio is": f"speed / float32 {attention}",
                                 "GPU busy %": busy.percent})

    def _ratio_cells(self, seconds: float, n: int, attention: str) -> dict:
        limit = self.forward_s.get((self.dtype, attention))
        return {"images/s": n / seconds, "seconds": seconds,
                "ratio": seconds / n / limit if limit else "",
                "ratio is": f"x forward {self.dtype} {attention}"}

    def _gpu_reader(self, source, processor, pool):
        if self.device != "cuda":
            raise NotAvailable("no cuda")
        try:
            import torchvision.io  # noqa: F401 (never installed on the CPU machine)
        except ImportError:
            raise NotAvailable("no torchvision") from None
        return gpu_decode_reader(source, processor, pool, self.device)

    def _extract(self, fm, source, read, attention: str, label: str) -> None:
        set_attention(fm, attention)
        stage = ReaderStage(fm, source, self.size.batch, read)
        out = self.work / "extract_tmp.zarr"
        best = float("inf")
        with Busy(self.util) as busy:
            for _ in range(self.size.repeat):
                report = run_stage(label, lambda _: stage, out, RunOptions(overwrite=True), label)
                if report.failures:
                    raise RuntimeError(f"{len(report.failures)} images failed, e.g. "
                                       f"{report.failures[0]}")
                best = min(best, report.seconds)
        shutil.rmtree(out, ignore_errors=True)
        self.table.add(label, **self._ratio_cells(best, len(stage.ids), attention),
                       **{"GPU busy %": busy.percent})

    def _compute_only(self, fm, source, read) -> None:
        """The decoded-tensor stage's ``run`` over every image at once: reader, forward and
        conversion overlapped by the prefetch thread, without the runner's shards and writes."""
        set_attention(fm, "sdpa")
        stage = ReaderStage(fm, source, self.size.batch, read)
        best = float("inf")
        with Busy(self.util) as busy:
            for _ in range(self.size.repeat):
                start = time.perf_counter()
                stage.run(stage.ids)
                best = min(best, time.perf_counter() - start)
        self.table.add(COMPUTE_ROW, **self._ratio_cells(best, len(stage.ids), "sdpa"),
                       **{"GPU busy %": busy.percent})

    def _write_alone(self, fm, pixels) -> None:
        set_attention(fm, "sdpa")
        one = encode_pixels(fm, pixels)  # the model's own outputs: realistic compressibility
        stage = FoundationImageStage(fm, load_source(self.source(self.data_ext)), self.size.batch,
                                     {**fm.provenance(), "stage": "foundation/images"})
        spec = dataclasses.replace(stage.spec(), items_per_shard=RunOptions.items_per_shard,
                                   items_per_chunk=RunOptions.items_per_chunk)
        out, best = self.work / "write_tmp.zarr", float("inf")
        for _ in range(self.size.repeat):
            with StoreWriter(out, spec, stage.ids, overwrite=True) as writer:
                start = time.perf_counter()
                for k in writer.pending():
                    n = len(writer.shard_rows(k))
                    tile = np.arange(n) % len(pixels)
                    writer.write_shard(k, {name: a[tile] for name, a in one.items()})
                best = min(best, time.perf_counter() - start)
        shutil.rmtree(out, ignore_errors=True)
        self.table.add(WRITE_ROW, **self._ratio_cells(best, len(stage.ids), "sdpa"))

    def _as_is(self) -> None:
        label = "extract: JPEG, pkd as is (1 decode thread, PIL processor), eager"
        out = self.work / "as_is"
        with Busy(self.util) as busy:
            r = extract_foundation(self._recipe(self.data_train), out,
                                   RunOptions(overwrite=True), targets=("images",)).reports[0]
        shutil.rmtree(out, ignore_errors=True)
        self.table.add(label, **self._ratio_cells(r.seconds, r.items_run, "eager"),
                       **{"GPU busy %": busy.percent})
        self._free()

    def _cli(self) -> None:
        """``pkd extract foundation`` as a user runs it; its stores feed PKD stage 2."""
        label = "extract: `pkd extract foundation` CLI (as is; + questions)"
        cmd = [sys.executable, "-m", "pkd", "extract", "foundation", "--data",
               str(self.data_train), "--dataset", "vqa2", "--splits", "train", "--images",
               str(self.image_dir), "--model", str(self.clip_dir), "--out", str(self.stores),
               "--device", self.device, "--dtype", self.dtype, "--batch-size",
               str(self.size.batch), "--overwrite"]
        self.cli_command = " ".join(cmd[3:])
        start = time.perf_counter()  # cwd: not the checkout, whose pkd/ would shadow the install
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.work,
                              env={**os.environ, "PKD_QUIET": "1"})
        wall = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-300:]}")
        line = next(x for x in done.stdout.splitlines() if "foundation_images.zarr" in x)
        m = re.search(r"(\d+) items in [\d.]+s \((\d+) items/s", line)  # report_line format
        if m is None:
            raise RuntimeError(f"no images/s in the CLI's report line: {line!r}")
        n, seconds = int(m.group(1)), int(m.group(1)) / float(m.group(2))
        self.table.add(label, **self._ratio_cells(seconds, n, "eager"),
                       **{"GPU busy %": "n/a (subprocess)"})
        self.notes.append(f"CLI row: pkd {self.cli_command}: wall {wall:.1f} s "
                          "(start, imports, model load, images, questions); images/s from its "
                          "report line")
