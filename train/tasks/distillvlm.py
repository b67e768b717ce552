"""DistillVLM (Fang et al., ICCV 2021): adapt a large VL transformer teacher, then distill it.

Two tasks:

- :class:`TeacherAdaptTask` (``method.name = "teacher-adapt"``): the teacher architecture
  (``method.distill.teacher_model``) trained with the VQA loss on the *aligned* teacher regions —
  the teacher backbone's features pooled on the student detector's boxes (``data.teacher_regions``).
  After this, token ``i`` of teacher and student is the same word or region.
- :class:`DistillVLMTask` (``method.name = "distillvlm"``)::

      L = L_vqa + α·L_att + β·L_nce + γ·L_kd

  ``L_att`` (:mod:`~pkd.train.losses.attention`) on the mapped layers' attention maps, ``L_nce``
  (:mod:`~pkd.train.losses.contrastive`) on the last-layer token states with a queue of teacher
  token vectors, ``L_kd`` (:mod:`~pkd.train.losses.logit_kd`) on the answer logits.

  ``method.distill.alignment = "index"`` is the paper's *unaligned* ablation: the teacher reads
  its own detector's regions, so its region token ``n`` is another box than the student's; the
  token losses then pair tokens by position (:func:`match_tokens`).

Teacher signals, under the store / batch names (:func:`teacher_signals`)::

    teacher_logits      (B, A)              answer logits
    teacher_attentions  (B, n, H, T, T)     attention maps of the n cached teacher layers
                        (B, H, T, T)        ... the same with n = 1 (as the store holds one layer)
    teacher_hidden      (B, T, d_t)         last-layer token states
    teacher_token_mask  (B, T) bool         valid tokens

They come from the batch (a precomputed ``teacher`` store, :mod:`pkd.train.teacher_cache`) or,
with an online teacher, from a forward pass of the frozen teacher (eval mode, no grad) over the
batch's teacher inputs ``teacher_region_features`` / ``teacher_region_geometry`` /
``teacher_region_mask`` (same question tokens). Both give the same losses on the same batch.

The online teacher is held outside the module tree *(our choice)*: it is not a parameter (the
optimizer and DDP never see it), not in ``state_dict`` (checkpoints stay student-sized; its weights
come from ``method.distill.teacher_checkpoint``) and ``train()`` never switches it out of eval
mode; ``.to(device)`` / ``.half()`` still move it (``_apply`` is forwarded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from pkd.errors import PkdError
from pkd.train.checkpoint import load_checkpoint, load_weights
from pkd.train.config import DistillConfig
from pkd.train.losses.attention import AttentionMSE, layer_pairs, teacher_layers_needed
from pkd.train.losses.contrastive import TokenNCE
from pkd.train.losses.logit_kd import LogitKD
from pkd.train.losses.queue import TokenQueue
from pkd.train.losses.vqa import VQALoss
from pkd.train.models import build_model
from pkd.train.tasks.baseline import BaselineTask
from pkd.train.tasks.method import FrozenOutside, Method
from pkd.train.teacher_cache import cached_layers

TEACHER_INPUTS = {  # batch key of the teacher's input -> the model input it replaces
    "teacher_region_features": "region_features",
    "teacher_region_geometry": "region_geometry",
    "teacher_region_mask": "region_mask",
}
TEACHER_SIGNALS = ("teacher_logits", "teacher_attentions", "teacher_hidden", "teacher_token_mask")


class TeacherAdaptTask(BaselineTask):
    """``L = L_vqa`` for the teacher model on the aligned teacher regions (module docstring).

    The loss is the baseline's; what makes it teacher adaptation is the data: the model is built
    from ``method.distill.teacher_model`` and its ``region_*`` inputs come from
    ``data.teacher_regions`` (teacher features on the student's boxes).
    """


def teacher_view(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch as the teacher sees it: ``region_*`` replaced by ``teacher_region_*``."""
    missing = [k for k in TEACHER_INPUTS if k not in batch]
    if missing:
        raise PkdError(f"data.teacher_regions: batch has no {', '.join(missing)} (the online "
                       "teacher needs the aligned teacher regions store)")
    view = dict(batch)
    for key, target in TEACHER_INPUTS.items():
        view[target] = batch[key]
    return view


@torch.no_grad()
def teacher_signals(teacher: nn.Module, inputs: dict[str, torch.Tensor],
                    layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """Run the frozen ``teacher`` (eval mode) on ``inputs`` (its own view: ``region_*`` are the
    teacher's regions); return the signals named in the module docstring for ``layers``."""
    teacher.eval()
    out = teacher(inputs, output_attentions=True, output_hidden_states=True)
    return {
        "teacher_logits": out["logits"],  # (B, A)
        "teacher_attentions": torch.stack([out["attentions"][k] for k in layers], 1),  # (B,n,H,T,T)
        "teacher_hidden": out["hidden_states"][-1],  # (B, T, d_t)
        "teacher_token_mask": out["token_mask"],  # (B, T)
    }


def check_aligned(student_mask: torch.Tensor, teacher_mask: torch.Tensor) -> None:
    """Raise :class:`PkdError` unless teacher and student token masks are identical."""
    if student_mask.shape != teacher_mask.shape:
        raise PkdError(
            f"data.teacher: teacher tokens {tuple(teacher_mask.shape)} do not line up with the "
            f"student's {tuple(student_mask.shape)} (batch, tokens): teacher and student must see "
            "the same questions (max_question_length) and the same boxes, without foundation "
            "tokens")
    differ = (student_mask != teacher_mask.bool()).any(dim=1)  # (B,)
    if differ.any():
        raise PkdError(
            f"data.teacher: teacher and student valid tokens differ for {int(differ.sum())} of "
            f"{len(differ)} questions: the teacher regions must be pooled on the student's boxes "
            "(same number of regions) and the questions tokenized alike")


def match_tokens(student: dict, teacher: dict, alignment: str) -> tuple[dict, dict, torch.Tensor]:
    """Student and teacher token signals on a common token axis, and its mask (B, T).

    ``"aligned"``: the masks must be identical (:func:`check_aligned`); nothing is cut.
    ``"index"`` (unaligned ablation): both layouts are ``[CLS] w_1..w_L [SEP] r_1..r_N``, the text
    part identical, so token ``i`` of both is kept for ``i < T = min(T_s, T_t)``::

        mask_i = student_mask_i ∧ teacher_mask_i                         (B, T)
        A_s, A_t -> A[..., :T, :T]          hidden_s, hidden_t -> h[:, :T]

    ``student``: ``attentions`` (list of (B, H, T_s, T_s)), ``hidden`` (B, T_s, d_s), ``mask``;
    ``teacher``: ``teacher_attentions`` (B, n, H, T_t, T_t), ``teacher_hidden``,
    ``teacher_token_mask``; other keys pass through.
    """
    s_mask, t_mask = student["mask"], teacher["teacher_token_mask"].bool()
    if alignment == "aligned":
        check_aligned(s_mask, t_mask)
        return student, teacher, s_mask
    if alignment != "index":
        raise PkdError(f"method.distill.alignment must be 'aligned' or 'index', not {alignment!r}")
    t = min(s_mask.shape[1], t_mask.shape[1])
    student = {**student, "attentions": [a[..., :t, :t] for a in student["attentions"]],
               "hidden": student["hidden"][:, :t], "mask": s_mask[:, :t]}
    teacher = {**teacher, "teacher_attentions": teacher["teacher_attentions"][..., :t, :t],
               "teacher_hidden": teacher["teacher_hidden"][:, :t],
               "teacher_token_mask": t_mask[:, :t]}
    return student, teacher, s_mask[:, :t] & t_mask[:, :t]


class DistillVLMTask(FrozenOutside):
    """Student + projection heads + token queue; optional frozen online teacher (docstring)."""

    def __init__(self, student: nn.Module, nce: TokenNCE, queue: TokenQueue, cfg: DistillConfig,
                 teacher: nn.Module | None = None, cached_layers: Sequence[int] | None = None):
        super().__init__()
        self.model, self.nce, self.queue = student, nce, queue
        self.vqa, self.att, self.kd = VQALoss(), AttentionMSE(), LogitKD(cfg.kd_temperature)
        self.alpha, self.beta, self.gamma = cfg.alpha, cfg.beta, cfg.gamma
        self.alignment = cfg.alignment
        depth_s, depth_t = student.num_layers, cfg.teacher_model.num_layers
        self.pairs = layer_pairs(depth_s, depth_t, cfg.attention_layers)
        needed = teacher_layers_needed(depth_s, depth_t, cfg.attention_layers)
        self.hold("teacher", teacher)  # not a submodule (module docstring)
        if teacher is not None:
            teacher.requires_grad_(False).eval()
            if teacher.num_layers != depth_t:
                raise PkdError(f"method.distill.teacher_model.num_layers={depth_t}, but the "
                               f"teacher has {teacher.num_layers} layers")
            cached_layers = needed
        self.cached_layers = list(needed if cached_layers is None else cached_layers)
        absent = sorted(set(needed) - set(self.cached_layers))
        if absent:
            raise PkdError(f"data.teacher: the teacher store holds attention layers "
                           f"{self.cached_layers}, method.distill.attention_layers="
                           f"{cfg.attention_layers!r} needs {needed}")

    def teacher_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Teacher signals of ``batch``: online forward, or the cached ``teacher_*`` keys."""
        if self.teacher is not None:
            return teacher_signals(self.teacher, teacher_view(batch), self.cached_layers)
        missing = [k for k in TEACHER_SIGNALS if k not in batch]
        if missing:
            raise PkdError(f"data.teacher: batch has no {', '.join(missing)} (set data.teacher to "
                           "a teacher store, or method.distill.online_teacher=true)")
        out = {k: batch[k] for k in TEACHER_SIGNALS}
        if out["teacher_attentions"].dim() == 4:  # one cached layer: (B, H, T, T)
            out["teacher_attentions"] = out["teacher_attentions"][:, None]  # (B, 1, H, T, T)
        return out

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(batch, output_attentions=True, output_hidden_states=True)
        student = {"attentions": [out["attentions"][s] for s, _ in self.pairs],
                   "hidden": out["hidden_states"][-1], "mask": out["token_mask"]}  # (B, T)
        student, teacher, mask = match_tokens(student, self.teacher_outputs(batch),
                                              self.alignment)
        t_att = teacher["teacher_attentions"]  # (B, n, H, T, T)
        if t_att.shape[1] != len(self.cached_layers):
            raise PkdError(f"data.teacher: {t_att.shape[1]} cached attention layers in the batch, "
                           f"expected {len(self.cached_layers)} ({self.cached_layers})")
        column = {layer: i for i, layer in enumerate(self.cached_layers)}
        att_loss = self.att(student["attentions"], [t_att[:, column[t]] for _, t in self.pairs],
                            mask)
        negatives = self.queue.negatives()  # (K, d_t): the queue before this batch's enqueue
        nce_loss = self.nce(student["hidden"], teacher["teacher_hidden"], mask, negatives)
        if self.training:  # the teacher's valid tokens only
            self.queue.enqueue(teacher["teacher_hidden"][teacher["teacher_token_mask"].bool()])
        kd_loss = self.kd(out["logits"], teacher["teacher_logits"])
        vqa_loss = self.vqa(out["logits"], batch["targets"])
        loss = vqa_loss + self.alpha * att_loss + self.beta * nce_loss + self.gamma * kd_loss
        return {"loss": loss, "vqa_loss": vqa_loss, "att_loss": att_loss, "nce_loss": nce_loss,
                "kd_loss": kd_loss, "logits": out["logits"]}


def load_teacher(cfg: DistillConfig, num_words: int, num_answers: int,
                 region_dim: int) -> nn.Module:
    """The adapted teacher (``cfg.teacher_model``) with the weights of ``cfg.teacher_checkpoint``
    (a teacher-adapt run's ``RUN/best`` or ``RUN/ckpt``), frozen and in eval mode.
    ``region_dim`` is the feature size of the aligned teacher regions store."""
    path = cfg.teacher_checkpoint
    if not path:
        raise PkdError("method.distill.teacher_checkpoint: not set (the adapted teacher, e.g. "
                       "RUN/best of a method.name=teacher-adapt run)")
    teacher = build_model(cfg.teacher_model, num_words, num_answers, region_dim)
    weights, _ = load_checkpoint(path)
    if weights and all(k.startswith("model.") for k in weights):  # a task checkpoint (RUN/ckpt)
        weights = {k.removeprefix("model."): v for k, v in weights.items()}
    load_weights(teacher, weights, f"{path}: weights do not fit method.distill.teacher_model "
                                   "and the run's vocabularies")
    return teacher.requires_grad_(False).eval()


class TeacherAdapt(Method):
    """``method.name = "teacher-adapt"``: trains ``method.distill.teacher_model`` on the aligned
    teacher regions ``data.teacher_regions`` with the VQA loss (module docstring)."""

    name = "teacher-adapt"

    def built_models(self, cfg):
        return [("method.distill.teacher_model", cfg.method.distill.teacher_model)]

    def run_config(self, cfg):
        if not cfg.data.teacher_regions:
            raise PkdError("method.name=teacher-adapt: set data.teacher_regions (the teacher's "
                           "features on the student's boxes: pkd extract regions --boxes-from)")
        data = replace(cfg.data, regions=cfg.data.teacher_regions, teacher_regions="")
        return replace(cfg, model=cfg.method.distill.teacher_model, data=data)

    def task(self, cfg, model: nn.Module) -> TeacherAdaptTask:
        return TeacherAdaptTask(model)


class DistillVLM(Method):
    """``method.name = "distillvlm"``: the student distilled from the adapted teacher, whose
    signals come from a teacher store (``data.teacher``, :mod:`pkd.train.teacher_cache`) or an
    online forward over ``data.teacher_regions``; vocabularies shared with the teacher run."""

    name = "distillvlm"

    def built_models(self, cfg):  # the teacher transformer is built too
        return [("model", cfg.model),
                ("method.distill.teacher_model", cfg.method.distill.teacher_model)]

    def vocab_source(self, cfg) -> str:
        return cfg.method.distill.teacher_checkpoint

    def teacher_stores(self, cfg) -> tuple[str, ...]:
        if cfg.method.distill.online_teacher:
            return ("teacher_regions",)
        if cfg.method.distill.alignment != "aligned":
            raise PkdError("method.distill.alignment=index (the unaligned ablation) runs the "
                           "teacher online: set method.distill.online_teacher=true")
        if not cfg.data.teacher:
            raise PkdError("method.name=distillvlm: set data.teacher (pkd extract teacher) or "
                           "method.distill.online_teacher=true with data.teacher_regions")
        return ("teacher",)

    def task(self, cfg, model: nn.Module, teacher: nn.Module | None = None,
             cached_layers: Sequence[int] | None = None) -> DistillVLMTask:
        d = cfg.method.distill
        if cfg.model.arch != "fusion" or d.teacher_model.arch != "fusion":
            raise PkdError("method.name=distillvlm: student (model.arch) and teacher "
                           "(method.distill.teacher_model.arch) must both be 'fusion'")
        if cfg.model.use_foundation_features or d.teacher_model.use_foundation_features:
            raise PkdError("method.name=distillvlm: use_foundation_features adds tokens the "
                           "other model lacks; turn it off for student and teacher")
        if d.online_teacher and teacher is None:
            raise PkdError("method.distill.online_teacher=true: no teacher model was loaded "
                           "(set method.distill.teacher_checkpoint)")
        if not d.online_teacher and teacher is not None:
            raise ValueError("a teacher module was given but method.distill.online_teacher is "
                             "false")
        width = d.teacher_model.hidden_size
        nce = TokenNCE(cfg.model.hidden_size, width, d.nce_dim, d.tau)
        return DistillVLMTask(model, nce, TokenQueue(d.queue_size, width), d, teacher=teacher,
                              cached_layers=cached_layers)

    def build_task(self, cfg, model, vocabs, stores) -> DistillVLMTask:
        if cfg.method.distill.online_teacher:
            dim = int(stores.teacher_regions.spec.dims["feature_dim"])
            teacher = load_teacher(cfg.method.distill, len(vocabs.words), len(vocabs.answers), dim)
            return self.task(cfg, model, teacher=teacher)
        return self.task(cfg, model, cached_layers=cached_layers(stores.teacher))
