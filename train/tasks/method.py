"""What a training method declares and builds: one :class:`Method` subclass per ``method.name``.

The trainer, evaluation and extraction ask the run's method (``METHODS[cfg.method.name]``, the
one literal mapping in :mod:`pkd.train.tasks`) instead of comparing names:

| declares | default | who asks |
|---|---|---|
| ``run_config(cfg)`` | ``cfg`` | config of the model and data (teacher-adapt: the teacher's) |
| ``vocab_source(cfg)`` | ``""`` | an earlier run whose vocabularies this run copies |
| ``teacher_stores(cfg)`` | ``()`` | extra stores it trains on (``teacher_regions``, ``teacher``) |
| ``foundation_tokens(cfg)`` | ``False`` | training batches carry the foundation tokens (PKD) |
| ``validates`` | ``True`` | it trains a VQA model scored on the validation split (``best/``) |
| ``ddp_unused_parameters`` | ``False`` | parameters without gradient in some steps (DDP) |
| ``built_models(cfg)`` | ``[("model", cfg.model)]`` | config validation: the models it builds |
| ``problems(cfg)`` | ``[]`` | config validation: its own rules between fields |
| ``attach(model, cfg, foundation_dims)`` | nothing | parts of the VQA model's own saved state |
| ``vqa_model(cfg, model)`` | ``model`` | VQA model trained, evaluated (question-only: no image) |
| ``task(cfg, model, **parts)`` | — | the task (model + losses) from loaded parts |
| ``build_task(cfg, model, vocabs, stores)`` | ``task(cfg, model)`` | loads parts, then ``task`` |

Every method reads the ``regions`` store, and the foundation stores when they are configured;
validation and evaluation read only what the VQA model's forward reads.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from pkd.train.config import ModelConfig, TrainConfig
from pkd.train.data import Stores, Vocabs


class Method:
    """Defaults of a method that trains ``cfg.model`` on ``data.regions`` and needs nothing else."""

    name: ClassVar[str]
    validates: ClassVar[bool] = True
    ddp_unused_parameters: ClassVar[bool] = False

    def run_config(self, cfg: TrainConfig) -> TrainConfig:
        return cfg

    def foundation_tokens(self, cfg: TrainConfig) -> bool:
        return False

    def vocab_source(self, cfg: TrainConfig) -> str:
        return ""

    def teacher_stores(self, cfg: TrainConfig) -> tuple[str, ...]:
        return ()

    def built_models(self, cfg: TrainConfig) -> list[tuple[str, ModelConfig]]:
        return [("model", cfg.model)]

    def problems(self, cfg: TrainConfig) -> list[tuple[str, str]]:
        """(dotted key, problem) of the method's own rules between config fields."""
        return []

    def attach(self, model: nn.Module, cfg: TrainConfig, foundation_dims: dict | None) -> None:
        return None

    def vqa_model(self, cfg: TrainConfig, model: nn.Module) -> nn.Module:
        """The VQA model the run trains, saves and evaluates, made from the built ``model``."""
        return model

    def task(self, cfg: TrainConfig, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def build_task(self, cfg: TrainConfig, model: nn.Module, vocabs: Vocabs,
                   stores: Stores) -> nn.Module:
        return self.task(cfg, model)


class FrozenOutside(nn.Module):
    """A task that holds frozen modules (a teacher, the foundation head) outside its module tree.

    ``self.hold(name, module)`` sets the attribute without registering it: not a parameter (the
    optimizer and DDP never see it), not in ``state_dict`` (checkpoints stay the trained part's
    size), and ``train()`` never switches it out of eval mode (callers freeze it); ``.to()`` /
    ``.cuda()`` / ``.half()`` still reach it (``_apply`` is forwarded).
    """

    _held: tuple[str, ...] = ()

    def hold(self, name: str, module: nn.Module | None) -> None:
        object.__setattr__(self, name, module)
        object.__setattr__(self, "_held", (*self._held, name))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name in self._held:
            module = getattr(self, name)
            if module is not None:
                module._apply(fn, recurse)
        return self
