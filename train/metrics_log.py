"""Training metrics: JSONL + CSV files in the run folder, TensorBoard when installed, a curve PNG.

``metrics.jsonl`` holds one JSON object per logged step (``{"step", "split", ...values}``);
``metrics.csv`` the same rows flattened. On resume, rows logged after the resumed checkpoint are
dropped so the files describe exactly one run.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pkd.fsio import write_atomic


class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.jsonl = Path(run_dir) / "metrics.jsonl"
        self.csv = Path(run_dir) / "metrics.csv"
        rows = self.rows() if resume_step is not None else []
        rows = [r for r in rows if r["step"] <= (resume_step or 0)]
        write_atomic(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        self._rewrite_csv(rows)
        self.tb = _tensorboard(Path(run_dir) / "tb")

    def rows(self) -> list[dict]:
        return read_rows(self.jsonl)

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        row = {"step": step, "split": split, **{k: float(v) for k, v in values.items()}}
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._rewrite_csv(self.rows())
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{split}/{k}", float(v), step)

    def _rewrite_csv(self, rows: list[dict]) -> None:
        keys = sorted({k for r in rows for k in r} - {"step", "split"})
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=["step", "split", *keys])
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.csv, text.getvalue())  # a reader never sees half a table

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_rows(jsonl: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` file ([] when it does not exist)."""
    if not jsonl.is_file():
        return []
    return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter  # torch.utils.tensorboard: optional
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder))


def plot_curves(run_dir: Path, out: Path | None = None) -> Path | None:
    """Training loss and validation score against step, as ``training_curve.png``."""
    data = read_rows(Path(run_dir) / "metrics.jsonl")
    if not data:
        return None
    import matplotlib  # matplotlib: loaded only when curves are drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: loaded only when curves are drawn

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(9, 3.2))
    train = [r for r in data if r["split"] == "train" and "loss" in r]
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train])
    ax_loss.set(xlabel="step", ylabel="training loss")
    val = [r for r in data if r["split"] == "val" and "score" in r]
    ax_val.plot([r["step"] for r in val], [r["score"] for r in val], marker="o")
    ax_val.set(xlabel="step", ylabel="val VQA score (%)")
    fig.tight_layout()
    out = out or Path(run_dir) / "training_curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
