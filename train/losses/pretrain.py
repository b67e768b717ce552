"""Image-text pre-training losses of the demo foundation model (:mod:`pkd.train.pretrain`).

A batch holds B images with one caption each; ``P`` (B, B) bool marks the positives: ``P_ij``
when caption j is one of image i's captions (identical captions of different images are
positives too; the diagonal is always true).

**ITC**: the symmetric InfoNCE of CLIP (Radford et al., ICML 2021, "Learning Transferable Visual
Models From Natural Language Supervision"), with soft targets where a row or column has several
positives. Unit image / text features ``u_i``, ``w_j`` and the scale ``1/τ``::

    s_ij  = u_i · w_j / τ                                               (B, B) image x text
    L_itc = ½ [ mean_i CE(s_i·, P_i· / |P_i·|) + mean_j CE(s_·j, P_·j / |P_·j|) ]
    CE(s, q) = -Σ_k q_k log softmax(s)_k

With ``P = I`` this is CLIP's ``(CE(S, arange(B)) + CE(Sᵀ, arange(B))) / 2``.
With N extra negative texts ``ŵ_k`` (attribute-swapped captions, NegCLIP:
:mod:`pkd.train.pretrain.negatives`) the image-to-text term reads B + N columns, the extra ones
with target 0; the text-to-image term is unchanged (a swapped caption has no image)::

    s̃_i = [s_i·, u_i · ŵ_1 / τ, ..., u_i · ŵ_N / τ]                     (B, B + N)
    L_itc = ½ [ mean_i CE(s̃_i, [P_i· / |P_i·|, 0_N]) + mean_j CE(s_·j, P_·j / |P_·j|) ] BLIP's ITC
(Li et al., ICML 2022, "BLIP: Bootstrapping Language-Image Pre-training for Unified
Vision-Language Understanding and Generation") is the same loss on its own projections.

**ITM with hard negatives** (BLIP, mining as in ALBEF, Li et al., NeurIPS 2021): for every image
one hard negative caption and for every caption one hard negative image, drawn with weights
``softmax(s_i·) + 1e-4`` over the non-positives of the row (:func:`sample_hard_negatives`);
the matching head scores the B positive and 2B negative pairs (:func:`hard_negatives`)::

    L_itm = -(1/3B) Σ_n log softmax(z_n)[y_n]      z_n (no match, match) logits, y_n = 1 / 0

Choices *(ours)*: BLIP's τ is fixed (BLIP learns it) and neither family uses BLIP's momentum
distillation; a row whose columns are all positives (every caption of the batch is one of the
image's) draws its negative uniformly from the other columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def itc_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, scale: torch.Tensor,
             positives: torch.Tensor, negative_feats: torch.Tensor | None = None) -> torch.Tensor:
    """``L_itc`` (scalar). ``image_feats``, ``text_feats`` (B, d) unit norm, ``scale`` the
    ``1/τ`` (scalar tensor), ``positives`` (B, B) bool with a true diagonal, ``negative_feats``
    (N, d) unit norm extra negative texts of the image-to-text term (None: none)."""
    logits = scale * image_feats @ text_feats.T  # (B, B) image x text
    target = positives.float()
    i2t_logits, i2t_target = logits, target
    if negative_feats is not None:
        i2t_logits = torch.cat([logits, scale * image_feats @ negative_feats.T], 1)  # (B, B + N)
        i2t_target = torch.cat([target, target.new_zeros(len(target), len(negative_feats))], 1)
    i2t = -(i2t_target / target.sum(1, keepdim=True) * i2t_logits.log_softmax(1)).sum(1)  # (B,)
    t2i = -(target / target.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0)  # (B,)
    return (i2t.mean() + t2i.mean()) / 2


def swap_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, negative_feats: torch.Tensor,
              scale: torch.Tensor) -> torch.Tensor:
    """``L_swap`` (scalar): each image against its own caption and that caption's swapped
    negative only, ``mean_i CE([u_i·w_i, u_i·ŵ_i] / τ, 0)`` — the two-way choice that only the
    swapped attribute decides. ``negative_feats`` (B, d): row i is caption i's negative."""
    pos = (image_feats * text_feats).sum(-1)  # (B,)
    neg = (image_feats * negative_feats).sum(-1)  # (B,)
    logits = scale * torch.stack([pos, neg], dim=1)  # (B, 2)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long,
                                               device=logits.device))


def sample_hard_negatives(similarity: torch.Tensor, positives: torch.Tensor,
                          generator: torch.Generator) -> torch.Tensor:
    """One column per row (B,), drawn ∝ ``softmax(similarity) + 1e-4`` over the non-positives
    (BLIP); a row that is all positives draws uniformly from the other columns."""
    weights = (similarity.softmax(1) + 1e-4).masked_fill(positives, 0.0)  # (B, B)
    empty = weights.sum(1) == 0
    if bool(empty.any()):
        others = 1.0 - torch.eye(len(weights))
        weights[empty] = others[empty]
    return torch.multinomial(weights, 1, generator=generator)[:, 0]


def hard_negatives(similarity: torch.Tensor, positives: torch.Tensor,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(hard negative text of each image (B,), hard negative image of each text (B,)).

    ``similarity`` (B, B) image x text ITC logits (detached), ``positives`` (B, B) bool; the
    texts are drawn first, then the images (one ``generator``). BLIP's ITM batch is then the B
    positive pairs ``(i, i)``, the B pairs ``(i, text[i])`` and the B pairs ``(image[j], j)``.
    """
    neg_text = sample_hard_negatives(similarity, positives, generator)  # (B,) per image
    neg_image = sample_hard_negatives(similarity.T, positives.T, generator)  # (B,) per text
    return neg_text, neg_image


def itm_loss(logits: torch.Tensor, matched: torch.Tensor) -> torch.Tensor:
    """``L_itm`` (scalar): cross-entropy of the (no match, match) ``logits`` (N, 2) against
    ``matched`` (N,) bool."""
    return F.cross_entropy(logits, matched.long())
