"""``pkd wise-ft RUN --alpha A --out DIR``: WiSE-FT of a fine-tuned ``model.arch=vlm`` run.

Writes a run folder whose ``best/`` holds ``(1 − α)·θ_F0 + α·θ_ft``
(:func:`pkd.train.wise_ft.wise_ft`); evaluate it with ``pkd evaluate --checkpoint DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def wise_ft(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="a fine-tuned model.arch=vlm run")],
    alpha: Annotated[float, typer.Option(help="weight of the fine-tuned model, in [0, 1]")] = 0.5,
    out: Annotated[Path | None, typer.Option(help="run folder to write (default RUN-wise<A>)")]
    = None,
) -> None:
    """Interpolate the weights of a fine-tuned run with its foundation model (WiSE-FT)."""
    from pkd.train.wise_ft import wise_ft as interpolate_run  # torch: only when the command runs

    target = out or run.with_name(f"{run.name}-wise{alpha:g}")
    print(f"wrote {interpolate_run(run, alpha, target)} (alpha {alpha:g}); evaluate it with "
          f"pkd evaluate --checkpoint {target}")


def register(app: typer.Typer) -> None:
    app.command("wise-ft")(wise_ft)
