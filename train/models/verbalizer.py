"""Answers read off a pre-trained model's own heads: masked-word logits and image-text matching.

D answers through the heads it inherited from the foundation model (METHODS.md, PKD's setting),
so that what fine-tuning forgets is what answers. Each answer ``a`` of the vocabulary has a
*role*: a word, read by the masked-LM head at the prompt's ``[MASK]``, or yes / no, read by the
ITM head on a statement prompt (:mod:`pkd.data.cloze`). With ``m_b`` the masked-LM logits at
question ``b``'s mask position (the first token when its prompt has no mask), ``pieces(a)`` the
tokenizer's word pieces of ``answer_word(a)`` and ``s_b = ITM_1 - ITM_0`` the matching log-odds:

    word a:  z_ba = mean_{p in pieces(a)} m_b[p]      if prompt b has a mask, else -C
    yes:     z_ba = +s_b                              if prompt b is a statement, else -C
    no:      z_ba = -s_b                              if prompt b is a statement, else -C

A prompt's kind fixes its answer space (``C`` = :data:`OUTSIDE`, sigmoid(-C) ~ 2e-9: answers
outside it get neither gradient nor votes), the same at training and at test time. The mean over
pieces is our reading for answers of several word pieces (exact for one-piece answers, the only
ones of the synthetic benchmark); with the generic prompt of real data every answer is a word,
"yes" and "no" included.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pkd.data.cloze import answer_word
from pkd.errors import PkdError

OUTSIDE = 20.0  # C: logit magnitude of answers outside the prompt's answer space
WORD, YES, NO = 0, 1, 2  # answer roles


class Verbalizer(nn.Module):
    """Answer vocabulary -> word pieces and roles; :meth:`forward` gives the (B, A) logits."""

    def __init__(self, answers: list[str], tokenizer, match_yes_no: bool):
        super().__init__()
        pieces = []
        for a in answers:
            ids = tokenizer(answer_word(a), add_special_tokens=False)["input_ids"]
            if not ids or tokenizer.unk_token_id in ids:
                raise PkdError(f"answer {a!r}: not in the foundation model's vocabulary "
                               f"(word pieces {ids}); build the tokenizer with the answers")
            pieces.append(ids)
        width = max(len(p) for p in pieces)
        table = torch.full((len(answers), width), -1, dtype=torch.long)
        for i, p in enumerate(pieces):
            table[i, : len(p)] = torch.tensor(p)
        roles = torch.tensor([YES if match_yes_no and a == "yes" else
                              NO if match_yes_no and a == "no" else WORD for a in answers])
        self.register_buffer("pieces", table, persistent=False)  # (A, P), -1 = none
        self.register_buffer("roles", roles, persistent=False)  # (A,)

    def word_logits(self, mlm: Tensor) -> Tensor:
        """(B, V) masked-LM logits -> (B, A): the mean over each answer's pieces."""
        valid = self.pieces >= 0  # (A, P)
        got = mlm[:, self.pieces.clamp(min=0)]  # (B, A, P)
        return (got * valid).sum(-1) / valid.sum(-1)

    def forward(self, mlm: Tensor, match_logodds: Tensor, has_mask: Tensor) -> Tensor:
        """``mlm`` (B, V) at the mask, ``match_logodds`` (B,), ``has_mask`` (B,) bool -> (B, A)."""
        words = self.word_logits(mlm)
        s = match_logodds[:, None].expand_as(words)
        judged = torch.where(self.roles == YES, s, -s)
        outside = torch.full_like(words, -OUTSIDE)
        is_word = (self.roles == WORD)[None, :]
        mask_kind = has_mask[:, None]
        return torch.where(is_word, torch.where(mask_kind, words, outside),
                           torch.where(mask_kind, outside, judged))
