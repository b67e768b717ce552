"""Training methods: each is a :class:`~pkd.train.tasks.method.Method` (what it reads, builds and
writes) and a task that wraps the trainable modules and its losses and returns a loss dict.

Every task's ``forward(batch)`` returns ``{"loss": total, "<name>_loss": each term, "logits":
VQA logits}`` so logging and tests see every term. :data:`METHODS` is the one place that maps
``method.name`` to a method; adding one = a file here with its task and ``Method`` subclass, its
config dataclass (a field of ``MethodConfig``), one line below, and its tests.
"""

from __future__ import annotations

from torch import nn

from pkd.errors import PkdError
from pkd.train.config import TrainConfig
from pkd.train.tasks.baseline import Baseline, BaselineTask
from pkd.train.tasks.distillvlm import DistillVLM, DistillVLMTask, TeacherAdapt, TeacherAdaptTask
from pkd.train.tasks.foundation_kd import FoundationKDTask, InDomainKD, LwfOracle
from pkd.train.tasks.lmh import LMH, LMHTask
from pkd.train.tasks.method import Method
from pkd.train.tasks.pkd import PKD, PKDTask
from pkd.train.tasks.pkd_predictors import PKDPredictors, PKDPredictorTask, PKDSetup
from pkd.train.tasks.pkd_vlm import PKDVLM, PKDVLMPredictors
from pkd.train.tasks.question_only import QuestionOnly, QuestionOnlyTask
from pkd.train.tasks.rubi import RUBi, RUBiTask

__all__ = ["METHODS", "BaselineTask", "DistillVLMTask", "FoundationKDTask", "LMHTask", "Method",
           "PKDPredictorTask", "PKDSetup", "PKDTask", "QuestionOnlyTask", "RUBiTask",
           "TeacherAdaptTask", "build_task", "method_of"]

METHODS: dict[str, Method] = {
    "baseline": Baseline(),
    "teacher-adapt": TeacherAdapt(),
    "distillvlm": DistillVLM(),
    "pkd-predictors": PKDPredictors(),
    "pkd": PKD(),
    "question-only": QuestionOnly(),
    "rubi": RUBi(),
    "lmh": LMH(),
    "kd-id": InDomainKD(),
    "lwf-oracle": LwfOracle(),
    "pkd-vlm-predictors": PKDVLMPredictors(),
    "pkd-vlm": PKDVLM(),
}


def method_of(cfg: TrainConfig) -> Method:
    """The method of ``cfg.method.name`` (one line naming the known ones otherwise)."""
    method = METHODS.get(cfg.method.name)
    if method is None:
        raise PkdError(f"method.name={cfg.method.name!r}: not implemented yet "
                       f"(available: {', '.join(METHODS)})")
    return method


def build_task(cfg: TrainConfig, model: nn.Module, **parts) -> nn.Module:
    """The task of ``cfg``'s method around ``model`` from already loaded ``parts``: ``teacher``
    (frozen online teacher) / ``cached_layers`` (teacher store layers) for ``distillvlm``,
    ``pkd`` (:class:`PKDSetup`: frozen foundation head and sizes) for the PKD stages."""
    return method_of(cfg).task(cfg, model, **parts)
