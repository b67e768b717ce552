"""WiSE-FT: interpolate the weights of the foundation model and of its fine-tuned VQA model.

Wortsman et al. (CVPR 2022), "Robust fine-tuning of zero-shot models": for ``α`` in [0, 1],

    θ_α = (1 − α) · θ_F0 + α · θ_ft

for every weight ``F0`` has (the body and its masked-LM / matching heads); weights only the
fine-tuned model has (a new answer head) are kept as fine-tuned. ``α = 1`` is the fine-tuned
model, ``α = 0`` the zero-shot one (through the inherited heads). :func:`wise_ft` writes a run
folder that ``pkd evaluate --checkpoint`` reads like any other: the fine-tuned run's config,
vocabularies and store provenance, and ``best/`` holding ``θ_α``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from pkd.errors import PkdError
from pkd.train import checkpoint as ck
from pkd.train.config_load import config_to_dict, load_config, save_config
from pkd.train.models.vlm import load_foundation

COPIED = ("answers.json", "words.json", "stores.json")


def interpolate(foundation: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor],
                alpha: float) -> dict[str, torch.Tensor]:
    """θ_α of the module docstring; keys of ``tuned`` (D's state dict) that are ``backbone.`` +
    a key of ``foundation`` are mixed, the others kept."""
    out = {}
    for key, value in tuned.items():
        ref = foundation.get(key.removeprefix("backbone.")) if key.startswith("backbone.") else None
        if ref is not None and ref.shape == value.shape and value.is_floating_point():
            out[key] = (1.0 - alpha) * ref.to(value.dtype) + alpha * value
        else:
            out[key] = value
    return out


def wise_ft(run_dir: str | Path, alpha: float, out_dir: str | Path) -> Path:
    """Write the WiSE-FT run folder ``out_dir`` of the fine-tuned ``run_dir`` at ``alpha``."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not 0.0 <= alpha <= 1.0:
        raise PkdError(f"--alpha {alpha}: not in [0, 1]")
    cfg = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    if cfg is None or cfg.model.arch != "vlm":
        raise PkdError(f"{run_dir}: not a pkd run of model.arch=vlm (WiSE-FT mixes it with its "
                       "foundation model)")
    best = ck.latest_checkpoint(run_dir / "best")
    if best is None:
        raise PkdError(f"{run_dir}: no best/ checkpoint (train it first)")
    tuned, state = ck.load_checkpoint(best)
    foundation, _ = load_foundation(cfg.model.foundation)
    mixed = interpolate(foundation.state_dict(), tuned, alpha)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out_dir / name)
    cfg.run.out_dir = str(out_dir)
    save_config(cfg, out_dir / "config.yaml")
    ck.save_checkpoint(out_dir / "best", mixed,
                       {"step": int(state.get("step", 0)), "config": config_to_dict(cfg),
                        "wise_ft": {"alpha": alpha, "fine_tuned": str(run_dir)}}, keep_last=1)
    return out_dir
