"""PKD's own setting in the demo: ``F0`` pre-trained on captions, ``D`` = ``F0`` fine-tuned.

``F0`` is a tiny LXMERT (``LxmertForPreTraining``) pre-trained with masked-LM + image-text
matching on the benchmark's caption corpus over the student's region features
(:func:`pkd.train.pretrain.lxmert.pretrain_lxmert`); it never sees a VQA question. Every row
below is ``model.arch=vlm`` on that ``F0`` (``METHODS.md``, PKD's setting):

| row | what |
|---|---|
| ``zero-shot`` | ``F0`` as pre-trained, answering through its masked-LM / matching heads |
| ``scratch`` | the same architecture from random weights, fine-tuned (no pre-training) |
| ``finetune`` | ``F0`` fine-tuned through its heads: the reference of every row here |
| ``new-head`` | ``F0`` fine-tuned with a new classifier on the pooled output (the usual recipe) |
| ``lp`` / ``lp-ft`` | the new head trained alone on the frozen ``F0``, then everything from there |
| ``wise-ft`` | ``(1 - α) θ_F0 + α θ_finetune``, α = 0.5 (nothing trained) |
| ``kd-id`` | fine-tuning + ``F0``'s outputs distilled on the VQA pairs (the biased baseline) |
| ``lwf-oracle`` | fine-tuning + ``F0``'s outputs distilled on the real caption corpus (the ideal) |
| ``pkd-vlm`` | PKD (:mod:`pkd.train.tasks.pkd_vlm`): memory of predicted pairs + ``L_mkd`` |
| ``pkd-vlm-mlm`` | PKD with ``L_mkd`` on the masked-LM head too (ours: D answers through it) |
| ``pkd-vlm-mlm-real`` | the same, the masked-LM term on the predicted text with the real regions |
| ``pkd-vlm-memory`` / ``-model-kd`` | PKD without its memory / without ``L_mkd`` |
| ``pkd-vlm-noitm`` / ``-nodiv`` | ``pkd-vlm-mlm-real``, predictors without ``L_itm`` / ``L_div`` |

Each row also reports forgetting: ``D``'s caption matching and masked-word accuracy on the
captions ``F0``'s pre-training held out (:func:`forgetting`), against ``F0``'s own.
"""

from __future__ import annotations

import json
from pathlib import Path

VLM_ROWS = ("zero-shot", "scratch", "finetune", "new-head", "lp", "lp-ft", "wise-ft", "kd-id",
            "lwf-oracle", "pkd-vlm", "pkd-vlm-mlm", "pkd-vlm-mlm-real", "pkd-vlm-memory",
            "pkd-vlm-model-kd", "pkd-vlm-noitm", "pkd-vlm-nodiv")
# PKD's stage-1 runs in this setting (rows build on them, they are not rows of the table):
# the predictors, and the predictors trained without L_itm / without L_div (configs/rows/)
PREDICTOR_RUNS = ("pkd-vlm-predictors", "pkd-vlm-noitm-predictors", "pkd-vlm-nodiv-predictors")
WISE_ALPHA = 0.5  # the wise-ft row's α
CAPTION_REGIONS = "caption_regions.zarr"  # the caption images' regions (student backbone)
FOUNDATION_DIR = "foundation-lxmert"  # F0's folder in the draw's folder


def foundation_dir(out: Path) -> Path:
    return Path(out) / FOUNDATION_DIR


def prepare_vlm(data: Path, out: Path, stores: Path, max_boxes: int, epochs: int, seed: int,
                threads: int = 0) -> Path:
    """The caption images' regions (the student's backbone and boxes) and ``F0``, once
    (``threads``: torch threads of its pre-training, 0 = every usable core; one per job when
    jobs share the machine — two threads on two busy cores made an epoch 20x slower)."""
    from pkd.pipeline.extract import (  # zarr: loaded only when the VLM rows are prepared
        RegionRecipe,
        extract_regions,
    )
    from pkd.pipeline.runner import RunOptions  # zarr: loaded only when the VLM rows are prepared
    from pkd.pipeline.sources import SourceConfig  # PIL: loaded only when the VLM rows are prepared
    from pkd.train.pretrain.lxmert import (  # torch: loaded only when the VLM rows are prepared
        LxmertPretrainConfig,
        pretrain_lxmert,
    )

    source = SourceConfig(root=data, splits=(), captions=True)
    extract_regions(RegionRecipe(source, detector=f"given:{data / 'boxes.json'}",
                                 backbone=str(out / "backbone-student"),
                                 max_boxes=max_boxes), stores / CAPTION_REGIONS,
                    RunOptions(items_per_shard=256))
    f0 = foundation_dir(out)
    if not (f0 / "pretrain_metrics.json").is_file():
        pretrain_lxmert(LxmertPretrainConfig(data_dir=data, regions=stores / CAPTION_REGIONS,
                                             out_dir=f0, epochs=epochs, seed=seed,
                                             threads=threads))
    return f0


def make_wise_ft(finetuned: Path, target: Path) -> Path:
    """The wise-ft row's run folder (α = :data:`WISE_ALPHA`), made once from ``finetuned``."""
    from pkd.train.wise_ft import wise_ft  # torch: loaded only when WiSE-FT runs

    if not (target / "best" / "latest.json").is_file():
        wise_ft(finetuned, WISE_ALPHA, target)
    return target


def forgetting(run: Path, data: Path, stores: Path) -> dict:
    """``D``'s caption metrics (:func:`pkd.train.pretrain.lxmert.caption_metrics`) on the captions
    ``F0``'s pre-training held out, cached in ``RUN/forgetting.json``."""
    path = run / "forgetting.json"
    if path.is_file():
        return json.loads(path.read_text())
    from pkd.train import checkpoint as ck  # torch: loaded only when forgetting is measured
    from pkd.train.config_load import load_config  # torch: loaded only when forgetting is measured
    from pkd.train.models.vlm import load_foundation  # torch: only when forgetting is measured
    from pkd.train.pretrain.lxmert import caption_metrics  # torch: only when forgetting is measured
    from pkd.train.pretrain.lxmert_data import load_heldout_captions  # torch: for forgetting only

    f0 = Path(load_config(run / "config.yaml").model.foundation)
    pre = json.loads((f0 / "pretrain_metrics.json").read_text())["config"]
    held = load_heldout_captions(data, stores / CAPTION_REGIONS, int(pre["seed"]),
                                 float(pre["eval_fraction"]))
    model, tokenizer = load_foundation(str(f0))
    weights, _ = ck.load_checkpoint(ck.latest_checkpoint(run / "best"))
    model.load_state_dict({k.removeprefix("backbone."): v for k, v in weights.items()
                           if k.startswith("backbone.")})
    metrics = caption_metrics(model.eval(), tokenizer, held)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(metrics))
    tmp.replace(path)
    return metrics


FORGETTING_KEYS = ("itm_accuracy", "itm_pairwise", "mlm_color_accuracy", "mlm_shape_accuracy",
                   "mlm_count_accuracy")  # columns of the forgetting table


def forgetting_table(results: dict) -> tuple[str, list[str], list[list[str]], list[str]]:
    """(title, header, rows, notes): per row of :data:`VLM_ROWS`, the mean over its runs of D's
    held-out caption metrics (zero-shot = ``F0`` itself)."""
    runs: dict[str, list[dict]] = {}
    seen: set[tuple] = set()
    for r in results.get("rows", []):
        key = (r["method"], r.get("seed"), r.get("data_seed"))
        if r["method"] in VLM_ROWS and "forgetting" in r and key not in seen:
            seen.add(key)
            runs.setdefault(r["method"], []).append(r["forgetting"])
    rows = []
    for method in (m for m in VLM_ROWS if m in runs):
        cells = []
        for k in FORGETTING_KEYS:
            values = [f[k] for f in runs[method] if f.get(k) is not None]
            cells.append(f"{sum(values) / len(values):.1f}" if values else "-")
        rows.append([method, str(len(runs[method])), *cells])
    notes = ["held-out captions of F0's pre-training: matching accuracy of the true caption and "
             "its one-word-swapped copy, pairwise (true above swapped), masked colour / shape / "
             "count word top-1; zero-shot = F0 itself, lower after fine-tuning = forgotten"]
    return ("Forgetting (PKD's setting)", ["method", "runs", *FORGETTING_KEYS], rows, notes)
