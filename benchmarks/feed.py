"""Feed benchmarks of issue 32 (E1-E3 extraction side, T1-T3 training side): one entry point.

Each benchmark is a function ``args -> Result`` (``feed_result.py``) listed in ``BENCHMARKS``: its
tables (rows of ``{column: value}``, printed with ``common.print_table``) and its targets.
``--only E3`` (comma separated) picks some; the default runs all. After the tables, one line per
target::

    E3 store write / raw write, default codec, to disk = 0.93x (target >= 0.8x: met)

(``MISSED`` when not met). E1 / E2 (``feed_extract.run_e1_e2``: one stubbed ``pkd extract
foundation`` run), T1 (``feed_train.run_t1``), T2 (``feed_supply.run_t2``, on 1 and 2 cores)
and T3 (``feed_steps.run_t3``) live in their
modules, which return rows and ``(id, what, value, op, bound)`` target tuples; ``from_module``
adapts them. E3 (``feed_e3.py``, its codecs in ``feed_codecs.py``): the store's codecs on real
float16 activations, and the store write against a raw sequential write of the same bytes to the
same disk. Run:
``python benchmarks/feed.py [--only E3] [--size cpu] [--store PATH] [--cache DIR]``. Every
benchmark runs on one core (the process pins itself to the first core it may use, with
``OMP_NUM_THREADS=1`` unless set) except T2, which measures 1 and 2 cores: give the run two.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one-thread numbers (set before torch loads)

from common import machine, print_table
from feed_e3 import e3
from feed_result import Result, Target, from_module


def e1_e2(args) -> Result:
    """E1 (overlap) and E2 (host cost) come from one stubbed ``pkd extract foundation`` run."""
    from feed_extract import run_e1_e2

    rows, targets = run_e1_e2(work=args.tmp)
    return from_module("feed E1/E2: pkd extract foundation with an H200-timed stub model "
                       "(benchmarks/feed_extract.py)", "threads of the extraction", rows, targets)


def t1(args) -> Result:
    from feed_train import run_t1

    rows, targets = run_t1(repeat=args.repeat, work=args.tmp)
    return from_module("feed T1: shuffled batch reads, store vs memmap (benchmarks/"
                       "feed_train.py)", "batch reads", rows, targets)


def t2(args) -> Result:
    from feed_supply import run_t2

    rows, targets = run_t2(repeat=args.repeat, work=args.tmp)
    return from_module("feed T2: supply of device-ready batches on 1 and 2 cores, store vs RAM "
                       "(benchmarks/feed_supply.py)", "batches supplied", rows, targets)


def t3(args) -> Result:
    from feed_steps import run_t3

    rows, targets = run_t3(repeat=min(args.repeat, 2), work=args.tmp)
    return from_module("feed T3: training with an H200-timed stub step, fed from the store vs "
                       "RAM (benchmarks/feed_steps.py)", "data wait per step", rows, targets)


# the benchmarks --only picks from (E1 and E2 share one run)
BENCHMARKS = {"E1": e1_e2, "E2": e1_e2, "E3": e3, "T1": t1, "T2": t2, "T3": t3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(sorted(BENCHMARKS)),
                        help="benchmarks to run, comma separated (of "
                        f"{', '.join(sorted(BENCHMARKS))})")
    parser.add_argument("--size", choices=("full", "cpu"), default="full",
                        help="full: ViT-B/16-sized CLIP; cpu: a small CLIP (vision 256 wide)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the fastest is kept")
    parser.add_argument("--cache", type=Path, help="keep model + data here between runs")
    parser.add_argument("--tmp", type=Path, help="folder for the stores and files written "
                        "(default: the system's temporary folder)")
    e3_args = parser.add_argument_group("E3")
    e3_args.add_argument("--images", type=int, default=64, help="images run through the model")
    e3_args.add_argument("--rows", type=int, default=0,
                         help="rows written, images cycled (default: --mb megabytes of them)")
    e3_args.add_argument("--mb", type=float, default=48, help="megabytes written (default 48)")
    e3_args.add_argument("--store", type=Path, help="take vision_tokens from this foundation "
                         "store instead of a model forward")
    args = parser.parse_args(argv)
    names = [n.strip().upper() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} "
                     f"(have {', '.join(sorted(BENCHMARKS))})")
    targets: list[Target] = []
    run = []  # one call per function (E1 and E2 share one)
    for fn in (BENCHMARKS[n] for n in names):
        if fn not in run:
            run.append(fn)
    cores = sorted(os.sched_getaffinity(0))
    for fn in run:  # one core each (the process pins itself), T2 every core it was given
        os.sched_setaffinity(0, cores if fn is t2 else cores[:1])
        result = fn(args)
        print(result.header)
        print(machine())
        for table in result.tables:
            print(table.title)
            print_table(table.rows, table.first)
        for note in result.notes:
            print(note)
        print()
        targets += result.targets
    print("targets:")
    for t in targets:
        print(t.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
