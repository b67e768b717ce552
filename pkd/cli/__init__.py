"""The ``pkd`` command line: a thin Typer layer over the library.

Each command module parses options into one typed config and calls one library function.
User errors (:class:`pkd.errors.PkdError`) become one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import sys

import typer

from pkd.errors import PkdError

app = typer.Typer(
    name="pkd",
    help="Knowledge distillation of vision-language models for VQA (PKD, DistillVLM).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    """Attach every command group; imports stay inside the modules' command bodies."""
    from pkd.cli import data, evaluate, stores

    app.add_typer(data.app, name="data")
    app.add_typer(stores.app, name="stores")
    app.command("evaluate")(evaluate.evaluate)
    for optional in ("extract", "pretrain", "train", "demo"):
        try:
            module = __import__(f"pkd.cli.{optional}", fromlist=["register"])
        except ModuleNotFoundError as err:  # command group not built yet
            if err.name != f"pkd.cli.{optional}":
                raise
            continue
        module.register(app)
        if optional == "extract":
            from pkd.cli.extract_teacher import teacher

            module.app.command("teacher")(teacher)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    from pkd.progress import quiet_transformers

    quiet_transformers()
    try:
        app(args=argv, prog_name="pkd")  # standalone mode: always ends in SystemExit
    except PkdError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)
        return 1
    return 0
