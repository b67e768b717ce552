"""The ``pkd`` command line: a thin Typer layer over the library.

Each command module parses options into one typed config and calls one library function;
the modules' heavy imports stay inside their command bodies.
User errors (:class:`pkd.errors.PkdError`) and file-system errors a user can fix (no space,
read-only, permission, is a folder: :func:`pkd.fsio.os_error_line`) become one ``error:`` line
and exit status 2.
"""

from __future__ import annotations

import sys

import typer

from pkd.cli import (
    data,
    demo,
    evaluate,
    extract,
    extract_predicted,
    extract_teacher,
    pretrain,
    results,
    stores,
    train,
    wise_ft,
)
from pkd.errors import PkdError
from pkd.fsio import os_error_line
from pkd.progress import quiet_transformers

app = typer.Typer(
    name="pkd",
    help="Knowledge distillation of vision-language models for VQA (PKD, DistillVLM).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# Every command of `pkd --help`. A missing or broken command module fails here, at import, instead
# of its command silently vanishing from the CLI.
app.add_typer(data.app, name="data")  # pkd data synth
app.add_typer(stores.app, name="stores")  # pkd stores info | probe | import-h5
app.command("evaluate")(evaluate.evaluate)  # pkd evaluate
extract.register(app)  # pkd extract foundation | regions
extract.app.command("teacher")(extract_teacher.teacher)  # pkd extract teacher
extract.app.command("predicted")(extract_predicted.predicted)  # pkd extract predicted
pretrain.register(app)  # pkd pretrain
train.register(app)  # pkd train
demo.register(app)  # pkd demo
results.register(app)  # pkd results OUT [--readme README.md]
wise_ft.register(app)  # pkd wise-ft RUN --alpha A


def _output_option(argv: list[str]) -> str | None:
    """The value of ``--out`` (``--out X`` or ``--out=X``) in ``argv``, if any."""
    for i, arg in enumerate(argv):
        if arg == "--out" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--out="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    quiet_transformers()
    try:
        app(args=argv, prog_name="pkd")  # standalone mode: always ends in SystemExit
    except PkdError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only output, a path that is a file: one line
        line = os_error_line(err, _output_option(sys.argv[1:] if argv is None else argv))
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)
        return 1
    return 0
