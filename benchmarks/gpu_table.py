"""How the GPU benchmark measures and shows its rows: the table (time budget, errors kept per
row), GPU utilisation sampled while a row runs, and a device sync."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable

import numpy as np
import torch
from common import print_table


class Table:
    """The rows, in print order; a row's cells fill in as it is measured."""

    def __init__(self, strict: bool, budget_s: float):
        self.rows: dict[str, dict] = {}
        self.strict, self.budget_s, self.start = strict, budget_s, time.monotonic()

    def add(self, label: str, **cells) -> dict:
        row = self.rows.setdefault(label, {"what": label})
        row.update(cells)
        return row

    def na(self, label: str, why: str, unit: str = "images/s") -> None:
        self.add(label, **{unit: f"n/a ({why})"})

    def measure(self, labels: str | list[str], fn: Callable[[], None],
                unit: str = "images/s") -> None:
        """Run ``fn`` (which fills the rows); an error or the time budget marks the rows."""
        labels = [labels] if isinstance(labels, str) else labels
        if time.monotonic() - self.start > self.budget_s:
            for label in labels:
                self.na(label, "skipped: time budget", unit)
            return
        try:
            fn()
        except Exception as err:  # one failing row must not lose the others
            if self.strict:
                raise
            traceback.print_exc()
            for label in labels:
                self.na(label, f"error: {type(err).__name__}: {str(err)[:80]}", unit)
        for label in labels:  # as it goes: a run stopped at its time limit keeps these lines
            cells = {k: v for k, v in self.rows.get(label, {}).items() if k != "what" and v != ""}
            print(f"[gpu bench] {label}: " + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in cells.items()),
                file=sys.stderr, flush=True)

    def print(self) -> None:
        cols = ["what", "images/s", "steps/s", "seconds", "ratio", "ratio is", "wait ms",
                "GPU busy %"]
        rows = [{c: r.get(c, "") for c in cols} for r in self.rows.values()]
        print_table(rows, "what")


class Busy:
    """Mean GPU utilisation (NVML, as nvidia-smi shows it) sampled every ``interval`` seconds
    while the block runs: ``percent``, or the reason there is none."""

    def __init__(self, reader: Callable[[], float] | str, interval: float = 0.05):
        """``reader``: returns the utilisation now, or says why it cannot be read."""
        self.reader, self.interval, self.samples = reader, interval, []

    def __enter__(self) -> Busy:
        self._stop = threading.Event()
        if callable(self.reader):
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append(float(self.reader()))
            except Exception:
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if callable(self.reader):
            self._thread.join()

    @property
    def percent(self) -> float | str:
        if not callable(self.reader):
            return f"n/a ({self.reader})"
        return float(np.mean(self.samples)) if self.samples else "n/a (no samples)"


def utilization_reader(device: str) -> Callable[[], float] | str:
    """torch's NVML reading, else nvidia-smi's; else why neither works."""
    if device != "cuda":
        return "no cuda"
    try:
        torch.cuda.utilization()
        return torch.cuda.utilization
    except Exception:
        pass

    def smi() -> float:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                              "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, check=True).stdout
        return float(out.split()[0])

    try:
        smi()
        return smi
    except Exception:
        return "no NVML, no nvidia-smi"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()

