"""Held-out evaluation of the pre-trained model: caption retrieval and attribute probes.

Retrieval: each held-out image's first caption against all held-out images (ITC similarity),
``{i2t_r1, i2t_r5, t2i_r1, t2i_r5, chance_r1, chance_r5, images}``. Probes: the first caption
of a held-out image with its k-th colour (shape, size) word replaced by every alternative; a hit
when the true caption gets the highest matching score (:func:`pkd.train.pretrain.model.
pair_scores`: CLIP scaled cosine, BLIP ITM logit), ``{accuracy, chance, n}`` with chance =
1 / number of alternatives.
"""

from __future__ import annotations

import re

import torch

from pkd.data.synth_questions import RELATIONS
from pkd.data.synth_scene import COLORS, SHAPES, SIZES
from pkd.train.pretrain.corpus import CaptionCorpus, PixelNormalizer, TokenizedCaptions
from pkd.train.pretrain.model import encode_images, encode_texts, pair_logits

# Probe name -> the words that replace each other in a caption: the synthetic attributes (also
# the groups of the swapped hard negatives, pkd.train.pretrain.negatives) ...
PROBE_WORDS = {"color": tuple(COLORS), "shape": SHAPES, "size": tuple(SIZES)}
# ... and, probed only, the object count word ("one object" reads "two object" when replaced)
# and the spatial relation (only in captions that state one, SynthConfig.caption_relations)
ZERO_SHOT_PROBES = {**PROBE_WORDS, "count": ("one", "two", "three", "four"),
                    "relation": RELATIONS}


def retrieval_recall(similarity: torch.Tensor, positives: torch.Tensor | None = None,
                     ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Image->text and text->image recall@k in percent from ``similarity`` (images x texts).

    ``positives`` (bool, same shape; default: the diagonal) marks the correct texts of each
    image; a query scores a hit at k when a correct item is among its k highest scores:
    ``i2t_rk = 100 · mean_i [∃ j ∈ topk(sim[i, :]) : pos[i, j]]``, ``t2i_rk`` the same on the
    columns.
    """
    if positives is None:
        positives = torch.eye(*similarity.shape, dtype=torch.bool)
    out = {}
    for name, sim, pos in (("i2t", similarity, positives), ("t2i", similarity.T, positives.T)):
        for k in ks:
            top = sim.topk(min(k, sim.shape[1]), dim=1).indices  # (Q, k)
            out[f"{name}_r{k}"] = 100.0 * pos.gather(1, top).any(1).float().mean().item()
    return out


@torch.no_grad()
def encode_image_batches(model, family: str, pixels: torch.Tensor, normalize: PixelNormalizer,
                         batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`encode_images` of uint8 ``pixels`` (N, 3, S, S) in batches: (N, d_e), (N, P, d_v)."""
    parts = [encode_images(model, family, normalize(pixels[i:i + batch]))
             for i in range(0, len(pixels), batch)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@torch.no_grad()
def evaluate_retrieval(model, family: str, image_feats: torch.Tensor, tokens: TokenizedCaptions,
                       eval_idx: torch.Tensor) -> dict:
    """R@1 / R@5 of each held-out image's first caption against all held-out images (ITC
    cosine); ``image_feats`` (n, d_e) are the held-out images' features. Chance ignores
    duplicate captions."""
    first = torch.searchsorted(tokens.image_of, eval_idx)  # first caption of each image
    text = encode_texts(model, family, tokens.input_ids[first], tokens.attention_mask[first])
    recall = retrieval_recall(image_feats @ text.T, tokens.positives[eval_idx][:, first])
    n = len(eval_idx)
    return {**recall, "chance_r1": 100.0 / n, "chance_r5": 100.0 * min(5, n) / n, "images": n}


def probe_variants(caption: str, words: tuple[str, ...]) -> list[tuple[list[str], int]]:
    """For each whole-word occurrence of one of ``words`` in ``caption``: the captions with that
    occurrence replaced by every word, and the index of the true one."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b")
    return [([caption[:m.start()] + w + caption[m.end():] for w in words], words.index(m.group()))
            for m in pattern.finditer(caption)]


@torch.no_grad()
def evaluate_probe(model, family: str, image_feats: torch.Tensor, vision: torch.Tensor,
                   captions: list[str], tokenizer, words: tuple[str, ...],
                   batch: int = 512) -> dict:
    """Share (%) of attribute occurrences whose true caption outscores all its variants, by the
    matching logit (:func:`pair_logits`); image ``i`` is ``image_feats[i]`` (n, d_e) and
    ``vision[i]`` (n, P, d_v) and has caption ``captions[i]``."""
    groups = [(i, texts, true) for i, c in enumerate(captions)
              for texts, true in probe_variants(c, words)]
    if not groups:
        return {"accuracy": None, "chance": 100.0 / len(words), "n": 0}
    image_of = torch.tensor([i for i, texts, _ in groups for _ in texts])  # (G * K,)
    enc = tokenizer([t for _, texts, _ in groups for t in texts], padding="longest",
                    return_tensors="pt")
    scores = torch.cat([
        pair_logits(model, family, image_feats[image_of[i:i + batch]],
                    vision[image_of[i:i + batch]], enc["input_ids"][i:i + batch],
                    enc["attention_mask"][i:i + batch])
        for i in range(0, len(image_of), batch)]).view(len(groups), len(words))  # (G, K)
    true = torch.tensor([t for _, _, t in groups])
    true_score = scores.gather(1, true[:, None])[:, 0]  # (G,)
    others = scores.scatter(1, true[:, None], float("-inf")).max(1).values  # (G,)
    accuracy = 100.0 * (true_score > others).float().mean().item()
    return {"accuracy": accuracy, "chance": 100.0 / len(words), "n": len(groups)}


def evaluate_heldout(model, family: str, corpus: CaptionCorpus, tokens: TokenizedCaptions,
                     tokenizer, eval_idx: torch.Tensor, normalize: PixelNormalizer) -> dict:
    """``{retrieval: {...}, probes: {color, shape, size}}`` on the held-out images."""
    model.eval()
    image_feats, vision = encode_image_batches(model, family, corpus.pixels[eval_idx], normalize)
    retrieval = evaluate_retrieval(model, family, image_feats, tokens, eval_idx)
    first_captions = [corpus.captions[i][0] for i in eval_idx.tolist()]
    probes = {name: evaluate_probe(model, family, image_feats, vision, first_captions,
                                   tokenizer, words)
              for name, words in ZERO_SHOT_PROBES.items()}
    return {"retrieval": retrieval, "probes": probes}
