"""A results folder's files: ``results.json`` accumulated over invocations, the tables made from it.

``OUT/results.json`` holds every row any ``pkd demo`` invocation on ``OUT`` scored::

    {"rows": [{"method", "seed", "data_seed", "split", "overall", ...}],   (pkd.demo doc)
     "models": {...}, "stage_seconds": {...},
     "draws": {"<d>": {"region_probes", "foundation_probes", "blind_rules", "answer_priors"}},
                                             dicts: merged key by key, the latest value wins
     "elapsed_s": float, "preset": str, "machine": {...},   of the latest invocation
     "invocations": [{"elapsed_s", "machine", "preset", "methods", "finished"}],  one each
     "summary": [...]}                       pkd.demo.summarize of all the rows

A row is keyed by ``(method, seed, data_seed, split)`` (``data_seed`` 0 when absent): an
invocation's row replaces the saved row with its key and the other saved rows stay, so
``pkd demo --methods a`` then ``--methods b`` leaves both in the table. ``finished`` is the
local ISO time the invocation saved; a file written before ``invocations`` existed gets one
entry for its own invocation (``finished`` None).

Every file is written atomically (a temporary file in the folder, then ``os.replace``): a full
disk or a kill leaves the old file or the new one, never half of one. A ``results.json`` that
is not JSON or has no ``"rows"`` is refused, never overwritten. ``pkd results OUT`` rebuilds
``results.md``, ``results_families.md`` and ``results.png`` from ``results.json`` alone
(:func:`rebuild`), and with ``--readme`` the README's table between :data:`BEGIN` and
:data:`END`.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from pkd.demo.families import FAMILIES_FILE, families_markdown
from pkd.demo.jobs import locked
from pkd.demo.summary import plot_results, results_markdown, summarize
from pkd.errors import PkdError
from pkd.fsio import write_atomic

RESULTS_FILE = "results.json"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"  # README lines around the table
LATEST = ("elapsed_s", "preset", "machine")  # scalars of the latest invocation


def load_results(path: Path) -> dict:
    """The results dict saved in ``path``; PkdError (one line) when it is missing, not JSON,
    or has no ``"rows"`` list."""
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise PkdError(f"{path}: no such file (run pkd demo --out {path.parent} first)") from None
    except ValueError as err:
        raise PkdError(f"{path}: not valid JSON ({err}); fix or move it, it is not "
                       "overwritten") from None
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise PkdError(f"{path}: no \"rows\" list, not a pkd demo results file; fix or move it, "
                       "it is not overwritten")
    for i, row in enumerate(results["rows"]):
        missing = [k for k in ("method", "seed", "split")
                   if not isinstance(row, dict) or k not in row]
        if missing:
            raise PkdError(f"{path}: row {i} has no {missing[0]!r}; fix or move the file, it is "
                           "not overwritten")
    return results


def row_key(row: dict) -> tuple[str, int, int, str]:
    """``(method, seed, data_seed, split)``: what one row of results.json stands for."""
    return row["method"], int(row["seed"]), int(row.get("data_seed", 0)), row["split"]


def _methods(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def invocation(results: dict, finished: str | None) -> dict:
    """One entry of ``"invocations"``: the latest scalars, the methods of its rows, ``finished``."""
    return {**{k: results.get(k) for k in LATEST}, "methods": _methods(results["rows"]),
            "finished": finished}


def merge_results(old: dict | None, new: dict, finished: str) -> dict:
    """``old`` (a loaded results.json, or None) updated by the invocation ``new`` as the module
    doc says; ``"summary"`` is left out (it is computed from the merged rows)."""
    old = old or {"rows": []}
    merged = {k: v for k, v in old.items() if k != "summary"}
    for k, v in new.items():
        if k in ("rows", "summary", "invocations"):
            continue
        both = isinstance(v, dict) and isinstance(merged.get(k), dict)
        merged[k] = {**merged[k], **v} if both else v
    rows = {row_key(r): r for r in old["rows"]}  # insertion order: the saved rows first
    rows.update((row_key(r), r) for r in new["rows"])
    merged["rows"] = list(rows.values())
    earlier = old.get("invocations")
    if earlier is None:  # a file of an older pkd (or none): its own invocation, if it had rows
        earlier = [invocation(old, None)] if old["rows"] else []
    merged["invocations"] = [*earlier, invocation(new, finished)]
    return merged


def now() -> str:
    """Local time, ISO 8601 to the second with its UTC offset."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def merge_into(results: dict, out: Path) -> dict:
    """Merge the invocation ``results`` into ``OUT/results.json`` (held under the folder's
    ``results`` lock, :func:`pkd.demo.jobs.locked`, so two invocations cannot lose each
    other's rows) and write it; ``results`` is updated in place to the merged content, its
    ``"summary"`` included. Returns ``results``.

    Rows that cannot be paired with their reference (seeds that differ, e.g. a method run on
    fewer seeds than its reference in another invocation) are still saved, without
    ``"summary"``, before the one-line PkdError of :func:`pkd.demo.summarize` is raised."""

    path = Path(out) / RESULTS_FILE
    with locked(out, "results"):
        old = load_results(path) if path.exists() else None
        merged = merge_results(old, results, now())
        try:
            merged["summary"] = summarize(merged["rows"])
        except PkdError as err:
            write_atomic(path, json.dumps(merged, indent=2))
            raise PkdError(f"{err} (rows saved in {path}; run the missing seeds, then "
                           f"pkd results {out})") from None
        write_atomic(path, json.dumps(merged, indent=2))
    results.clear()
    results.update(merged)
    return results


def add_folder(out: Path, other: Path) -> dict:
    """Merge ``OTHER/results.json`` into ``OUT/results.json`` (created when missing), under
    ``OUT``'s ``results`` lock: its rows replace ``OUT``'s rows with the same key and add the
    others, its dicts merge key by key, its invocations follow ``OUT``'s. For data draws run in
    separate folders (one machine each); returns the merged results, without ``"summary"``."""
    if Path(other).resolve() == Path(out).resolve():
        raise PkdError(f"pkd results {out} --add {other}: a folder cannot be added to itself")
    new = load_results(Path(other) / RESULTS_FILE)
    path = Path(out) / RESULTS_FILE
    Path(out).mkdir(parents=True, exist_ok=True)
    with locked(out, "results"):
        old = load_results(path) if path.exists() else None
        merged = merge_results(old, {k: v for k, v in new.items() if k != "invocations"}, now())
        added = new.get("invocations") or ([invocation(new, None)] if new["rows"] else [])
        merged["invocations"] = [*merged["invocations"][:-1], *added]
        write_atomic(path, json.dumps(merged, indent=2))
    return merged


def write_tables(results: dict, out: Path) -> list[Path]:
    """``results.md`` (:func:`pkd.demo.results_markdown`), ``results_families.md`` (when rows
    carry per-question-type scores, :mod:`pkd.demo.families`) and ``results.png`` in ``out``;
    returns the paths written."""

    out = Path(out)
    written = [write_atomic(out / "results.md", results_markdown(results))]
    families = families_markdown(results)
    if families:
        written.append(write_atomic(out / FAMILIES_FILE, families))
    written.append(plot_results(results, out / "results.png"))
    return written


def _marked(path: Path) -> tuple[list[str], int, int]:
    """``path``'s lines (ends kept) and the indices of its :data:`BEGIN` and :data:`END` lines;
    PkdError when the file or a marker line is missing."""
    path = Path(path)
    if not path.is_file():
        raise PkdError(f"{path}: no such file")
    lines = path.read_text().splitlines(keepends=True)
    stripped = [ln.strip() for ln in lines]
    begin = stripped.index(BEGIN) if BEGIN in stripped else -1
    if begin < 0 or END not in stripped[begin + 1:]:
        raise PkdError(f"{path}: no {BEGIN} line followed by a {END} line to put the "
                       "results between")
    return lines, begin, stripped.index(END, begin + 1)


def replace_between_markers(path: Path, text: str) -> Path:
    """Put ``text`` between the lines :data:`BEGIN` and :data:`END` of ``path`` (what was there
    goes, the marker lines stay); PkdError when the file or a marker line is missing."""
    lines, begin, end = _marked(path)
    body = text if text.endswith("\n") or not text else text + "\n"
    return write_atomic(Path(path), "".join([*lines[:begin + 1], body, *lines[end:]]))


def rebuild(out: Path, readme: Path | None = None, add: tuple[Path, ...] = ()) -> dict:
    """``pkd results OUT``: the tables and plot of ``OUT/results.json`` written again (nothing
    trained; results.json untouched unless ``add`` names folders whose results.json are merged
    into it first, :func:`add_folder`) and, with ``readme``, the main table put between its
    marker lines; returns the results with a fresh ``"summary"``."""
    if readme is not None:
        _marked(readme)  # a README without its markers: an error before anything is written
    for other in add:
        add_folder(out, other)
    results = load_results(Path(out) / RESULTS_FILE)
    results["summary"] = summarize(results["rows"])
    write_tables(results, out)
    if readme is not None:
        replace_between_markers(readme, readme_block(results, Path(out), Path(readme)))
    return results


def readme_block(results: dict, out: Path, readme: Path) -> str:
    """The README's block: the main table of ``results.md`` and a link to the whole file (the
    grounding checks, blind rules, targets and per-family tables stay there)."""
    full = out / "results.md"
    try:
        link = os.path.relpath(full.resolve(), readme.resolve().parent)
    except ValueError:  # another drive (Windows): an absolute path
        link = str(full.resolve())
    return (results_markdown(results, main_only=True)
            + "\nGrounding checks, blind rules, targets and the per-family tables: "
            + f"[{link}]({link})"
              " (`pkd results` writes both from the run's `results.json`).\n")
