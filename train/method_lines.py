"""One line per training method, for ``pkd train --help`` (no torch import: the CLI stays fast).

The keys are exactly :data:`pkd.train.tasks.METHODS`' (``tests/test_method_lines.py`` checks it);
the demo's rows (``configs/rows/*.yaml``) are these methods with settings.
"""

from __future__ import annotations

METHOD_LINES: dict[str, str] = {
    "baseline": "the VQA model alone (UpDn or the fusion transformer), L = L_vqa",
    "question-only": "UpDn's question path alone (a blind reference)",
    "rubi": "RUBi: UpDn trained through a question-only mask (Cadene et al. 2019)",
    "lmh": "LMH: UpDn in a learned mixin with the training answer prior (Clark et al. 2019)",
    "teacher-adapt": "DistillVLM step 1: the teacher trained on the student's regions",
    "distillvlm": "DistillVLM step 2: the student + attention MSE, token NCE, logit KD",
    "pkd-predictors": "PKD stage 1: feature predictors through the frozen ITM head (L_itm + L_div)",
    "pkd": "PKD stage 2: memory fusion of predicted features + model-level distillation",
    "kd-id": "PKD's setting: fine-tuning F0 + its outputs distilled on the VQA pairs",
    "lwf-oracle": "PKD's setting: fine-tuning F0 + its outputs distilled on the real captions",
    "pkd-vlm-predictors": "PKD's setting, stage 1: predictors through F0's own ITM head",
    "pkd-vlm": "PKD's setting, stage 2: D = F0 fine-tuned with PKD's memory and L_mkd",
}


def methods_help() -> str:
    """The methods as help text: one ``name: what`` line each."""
    width = max(map(len, METHOD_LINES))
    return "\n\n".join(f"{name.ljust(width)}  {line}" for name, line in METHOD_LINES.items())
