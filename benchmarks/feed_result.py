"""What a feed benchmark returns (``feed.py``): its tables, its targets and notes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    title: str  # printed above the table
    rows: list[dict]  # {first: label, column: value}
    first: str  # the label column


@dataclass
class Target:
    bench: str  # "E3"
    what: str  # what is measured, e.g. "store write / raw write, default codec, to disk"
    value: float
    op: str  # ">=" or "<="
    bound: float
    unit: str = "x"

    @property
    def met(self) -> bool:
        return self.value >= self.bound if self.op == ">=" else self.value <= self.bound

    def line(self) -> str:
        verdict = "met" if self.met else "MISSED"
        return (f"{self.bench} {self.what} = {self.value:.3g}{self.unit} "
                f"(target {self.op} {self.bound:g}{self.unit}: {verdict})")


@dataclass
class Result:
    header: str  # one line: what was measured on what
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed after the tables


def from_module(header: str, title: str, rows: list[dict], targets: list[tuple]) -> Result:
    """A ``Result`` from rows labelled ``what`` and ``(id, what, value, op, bound)`` tuples."""
    return Result(header, [Table(title, rows, "what")],
                  [Target(b, what, float(v), op, bound, unit="") for b, what, v, op, bound
                   in targets])
