"""Training tasks: a method wraps the trainable modules and its losses and returns a loss dict.

Every task's ``forward(batch)`` returns ``{"loss": total, "<name>_loss": each term, "logits":
VQA logits}`` so logging and tests see every term. :func:`build_task` is the one dispatch on
``method.name``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from pkd.errors import PkdError
from pkd.train.config import TrainConfig
from pkd.train.losses.contrastive import TokenNCE
from pkd.train.losses.queue import TokenQueue
from pkd.train.tasks.baseline import BaselineTask
from pkd.train.tasks.distillvlm import DistillVLMTask, TeacherAdaptTask
from pkd.train.tasks.pkd import PKDPredictorTask, PKDSetup, PKDTask, build_pkd_task

__all__ = ["BaselineTask", "DistillVLMTask", "PKDPredictorTask", "PKDSetup", "PKDTask",
           "TeacherAdaptTask", "build_task"]


def build_task(cfg: TrainConfig, model: nn.Module, teacher: nn.Module | None = None,
               cached_layers: Sequence[int] | None = None,
               pkd: PKDSetup | None = None) -> nn.Module:
    """The task for ``cfg.method.name`` around ``model``.

    ``teacher-adapt``: ``model`` must be built from ``method.distill.teacher_model``.
    ``distillvlm``: ``teacher`` is the frozen adapted teacher when ``online_teacher`` is set
    (:func:`pkd.train.tasks.distillvlm.load_teacher`); otherwise ``cached_layers`` are the
    attention layers the teacher store holds (:func:`pkd.train.teacher_cache.cached_layers`).
    ``pkd-predictors`` / ``pkd``: ``pkd`` holds the frozen foundation head and the sizes the
    predictors need (:class:`~pkd.train.tasks.pkd.PKDSetup`); stage 1 ignores ``model``.
    """
    name = cfg.method.name
    if name == "baseline":
        return BaselineTask(model)
    if name == "teacher-adapt":
        return TeacherAdaptTask(model)
    if name == "distillvlm":
        return _distillvlm(cfg, model, teacher, cached_layers)
    if name in ("pkd-predictors", "pkd"):
        if pkd is None:
            raise ValueError(f"method.name={name}: build_task needs a PKDSetup")
        return build_pkd_task(cfg, model, pkd)
    raise PkdError(f"method.name={name!r}: not implemented yet "
                   "(available: baseline, teacher-adapt, distillvlm, pkd-predictors, pkd)")


def _distillvlm(cfg: TrainConfig, model: nn.Module, teacher: nn.Module | None,
                cached_layers: Sequence[int] | None) -> DistillVLMTask:
    d = cfg.method.distill
    if cfg.model.arch != "fusion" or d.teacher_model.arch != "fusion":
        raise PkdError("method.name=distillvlm: student (model.arch) and teacher "
                       "(method.distill.teacher_model.arch) must both be 'fusion'")
    if cfg.model.use_foundation_features or d.teacher_model.use_foundation_features:
        raise PkdError("method.name=distillvlm: use_foundation_features adds tokens the other "
                       "model lacks; turn it off for student and teacher")
    if d.online_teacher and teacher is None:
        raise PkdError("method.distill.online_teacher=true: no teacher model was loaded "
                       "(set method.distill.teacher_checkpoint)")
    if not d.online_teacher and teacher is not None:
        raise ValueError("a teacher module was given but method.distill.online_teacher is false")
    width = d.teacher_model.hidden_size
    nce = TokenNCE(cfg.model.hidden_size, width, d.nce_dim, d.tau)
    return DistillVLMTask(model, nce, TokenQueue(d.queue_size, width), d, teacher=teacher,
                          cached_layers=cached_layers)
