"""Pre-train the foundation model F0, a tiny LXMERT, on region features + captions:
``pretrain_lxmert(cfg) -> metrics``.

F0 is a ``transformers`` ``LxmertForPreTraining`` (:func:`pkd.hf.tiny_models.build_tiny_lxmert`)
that reads an image as region features + boxes from a ``regions`` store and keeps two heads the
VQA stages answer through: masked-LM ``prediction_logits`` (cloze prompts) and image-text
matching ``cross_relationship_score`` (index 1 = "matches"). It is trained on the synthetic
benchmark's *unbiased* caption corpus only, never on a VQA item (the questions and answers only
widen the tokenizer's vocabulary). Data, masking and pairs: :mod:`~pkd.train.pretrain.lxmert_data`.

Loss of a batch of B (image, text) pairs with ITM labels ``m_b`` (1 = the caption of the image)
and MLM labels ``y_bt`` (the original token on the masked tokens of matched pairs, else -100)::

    L_mlm = Σ_{b,t: y_bt ≠ -100} CE(prediction_logits_bt, y_bt) / #{(b,t): y_bt ≠ -100}
    L_itm = 1/B Σ_b CE(cross_relationship_score_b, m_b)
    L     = L_mlm + itm_weight · L_itm

(LXMERT, Tan & Bansal, EMNLP 2019, §3.1.1 masked cross-modality LM and §3.1.3 cross-modality
matching; the object-prediction and QA tasks are off; the attribute-swapped hard negatives are
ours, after NegCLIP, so that matching must bind colour and shape to one object.)
``L_mlm`` is 0 when a batch has no labelled token.

AdamW (no decay on biases and gains), linear warmup + cosine decay; one generator seeded with
``cfg.seed`` drives the caption order, the pairs and the masking, ``torch.manual_seed(seed)`` the
initialisation and dropout: one seed gives identical weights (same thread count; ``threads=1``
for bitwise reproducibility).

Held-out evaluation (:func:`caption_metrics`, percent, on images :func:`heldout_split` keeps out
of training; a later stage calls it on a fine-tuned model with :func:`load_heldout_captions`):
``itm_accuracy`` (every held-out caption and its swapped copy judged alone, match when
``softmax(score)[1] > 0.5``), ``itm_pairwise`` (the caption scores above its swapped copy),
``heldout_pairs`` (the pairwise score of the captions naming a held-out (colour, shape) pair of
``synth_meta.json``; None when there are none, ``heldout_pairs_n`` says how many) and
``mlm_<group>_accuracy`` (each colour / shape / size / count word of a caption masked in turn,
top-1 over its group's words, with the true image).

Output ``OUT/`` (staging folder moved into place, :mod:`~pkd.train.pretrain.save`): the
``save_pretrained`` files of model and tokenizer (``LxmertForPreTraining.from_pretrained(OUT)``,
``AutoTokenizer.from_pretrained(OUT)``); ``config.json`` records the recipe under
``pkd_lxmert_pretrain``; ``pretrain_metrics.json`` = ``{family: "lxmert", config, data, epochs:
[{epoch, loss, mlm_loss, itm_loss}], heldout: caption_metrics(...), seconds}``.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from pkd.cores import torch_threads, usable_cores
from pkd.errors import PkdError
from pkd.progress import track
from pkd.train.pretrain.config import config_dict
from pkd.train.pretrain.corpus import canonical_token_ids, split_heldout
from pkd.train.pretrain.loop import adamw
from pkd.train.pretrain.lxmert_data import (
    ATTRIBUTE_GROUPS,
    HeldoutCaptions,
    Masking,
    RegionCaptions,
    encode_texts,
    group_token_ids,
    heldout_captions,
    heldout_combos,
    heldout_split,
    itm_pairs,
    load_heldout_captions,
    load_region_captions,
    mask_tokens,
    tokenizer_texts,
)
from pkd.train.pretrain.save import check_out_dir, save_model
from pkd.train.schedule import make_scheduler

RECIPE = ("LXMERT pre-training (Tan & Bansal 2019) on the caption corpus: masked cross-modality "
          "LM (BERT masking, attribute words masked more often, labels on matched pairs only) + "
          "image-text matching with attribute-swapped hard negatives; no object prediction, no QA")


@dataclass
class LxmertSize:
    hidden: int = 128  # width of every layer
    l_layers: int = 2  # language (text) layers
    x_layers: int = 2  # cross-modality layers
    r_layers: int = 1  # region (object relationship) layers
    heads: int = 4  # attention heads
    intermediate: int = 0  # feed-forward width (0 = 4 * hidden)
    vocab_size: int = 400  # tokenizer vocabulary (the synthetic corpus needs ~100)
    max_positions: int = 64  # text positions of the model (>= the longest tokenized caption)


@dataclass
class LxmertPretrainConfig:
    # folder with captions.json (+ *_questions.json, *_annotations.json, synth_meta.json)
    data_dir: Path
    regions: Path  # regions store holding every caption image (pkd extract regions --captions)
    out_dir: Path  # model folder to write (save_pretrained layout)
    size: LxmertSize = field(default_factory=LxmertSize)  # architecture of the tiny LXMERT
    epochs: int = 20  # passes over the training captions
    batch_size: int = 64  # (image, text) pairs per step
    lr: float = 5e-4  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW weight decay (matrices only)
    warmup_fraction: float = 0.05  # share of the steps with linear warmup, cosine decay after
    mlm_probability: float = 0.15  # chance to mask an ordinary word token (BERT)
    # chance to mask a colour / shape / size / count word (ours)
    attribute_mask_probability: float = 0.5
    itm_weight: float = 1.0  # weight of L_itm
    itm_negative_share: float = 0.5  # chance that a caption is replaced by a negative (label 0)
    # share of negatives that are the caption attribute-swapped (else another image's caption)
    hard_negative_share: float = 0.5
    eval_fraction: float = 0.1  # share of caption images held out (never trained on)
    seed: int = 0  # seeds init, dropout, held-out split, caption order, pairs and masking
    threads: int = 0  # torch CPU threads (0 = every usable core; 1 for bitwise reproducibility)

    def validate(self) -> None:
        """Raise PkdError naming the first unusable field."""
        s = self.size
        checks = [
            (self.epochs >= 1 and self.batch_size >= 2, "need epochs >= 1 and batch_size >= 2"),
            (0 < self.eval_fraction < 1, "eval_fraction must be in (0, 1)"),
            (self.lr > 0 and self.weight_decay >= 0, "need lr > 0 and weight_decay >= 0"),
            (0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)"),
            (0 <= self.mlm_probability <= 1 and 0 <= self.attribute_mask_probability <= 1,
             "mlm_probability and attribute_mask_probability must be in [0, 1]"),
            (0 <= self.itm_negative_share < 1, "itm_negative_share must be in [0, 1)"),
            (0 <= self.hard_negative_share <= 1, "hard_negative_share must be in [0, 1]"),
            (self.itm_weight >= 0 and self.threads >= 0, "need itm_weight >= 0 and threads >= 0"),
            (min(s.hidden, s.heads, s.l_layers, s.x_layers, s.r_layers) >= 1
             and s.hidden % s.heads == 0, "need layers >= 1 and hidden a multiple of heads"),
            (s.intermediate >= 0 and s.max_positions >= 8,
             "need intermediate >= 0, max_positions >= 8"),
        ]
        for ok, problem in checks:
            if not ok:
                raise PkdError(f"LxmertPretrainConfig: {problem}")


# --------------------------------------------------------------------------- losses


def lxmert_losses(prediction_logits: torch.Tensor, cross_relationship_score: torch.Tensor,
                  mlm_labels: torch.Tensor, matched: torch.Tensor,
                  itm_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """``{loss, mlm_loss, itm_loss}`` of the module doc: ``prediction_logits`` (B, L, V),
    ``cross_relationship_score`` (B, 2), ``mlm_labels`` (B, L) long with -100 = no label,
    ``matched`` (B,) bool."""
    labelled = mlm_labels != -100  # (B, L)
    if labelled.any():
        mlm = F.cross_entropy(prediction_logits[labelled], mlm_labels[labelled])
    else:
        mlm = prediction_logits.sum() * 0.0  # keeps the graph
    itm = F.cross_entropy(cross_relationship_score, matched.long())
    return {"loss": mlm + itm_weight * itm, "mlm_loss": mlm, "itm_loss": itm}


# --------------------------------------------------------------------------- training


def build_lxmert(cfg: LxmertPretrainConfig, texts: list[str], visual_feat_dim: int, folder: Path):
    """(model in train mode, tokenizer) of a fresh tiny LXMERT saved into ``folder`` (seeded),
    its tokenizer's ids made canonical (:func:`canonical_token_ids`)."""
    from transformers import (  # transformers: loaded only when a model is built
        AutoTokenizer,
        LxmertForPreTraining,
    )

    from pkd.hf.tiny_models import build_tiny_lxmert  # transformers: only when a model is built

    s = cfg.size
    build_tiny_lxmert(folder, texts, hidden=s.hidden, l_layers=s.l_layers, x_layers=s.x_layers,
                      r_layers=s.r_layers, heads=s.heads, intermediate=s.intermediate or None,
                      visual_feat_dim=visual_feat_dim, vocab_size=s.vocab_size,
                      max_positions=s.max_positions, seed=cfg.seed)
    canonical_token_ids(folder, texts)
    model = LxmertForPreTraining.from_pretrained(folder, local_files_only=True)
    return model.train(), AutoTokenizer.from_pretrained(folder, local_files_only=True)


def masking_of(cfg: LxmertPretrainConfig, tokenizer) -> Masking:
    """The masking settings of ``cfg`` for ``tokenizer`` (random words: every non-special id)."""
    return Masking(cfg.mlm_probability, cfg.attribute_mask_probability, tokenizer.mask_token_id,
                   len(tokenizer.all_special_ids), len(tokenizer))


def fit_lxmert(model, tokenizer, cfg: LxmertPretrainConfig, images: RegionCaptions) -> list[dict]:
    """Train in place on every caption of ``images`` (the training images); returns per-epoch
    mean losses ``[{epoch, loss, mlm_loss, itm_loss}]``."""
    generator = torch.Generator().manual_seed(cfg.seed)
    texts = [c for caps in images.captions for c in caps]
    image_of = torch.tensor([i for i, caps in enumerate(images.captions) for _ in caps])
    own = [set(caps) for caps in images.captions]
    attribute_ids = torch.cat(list(group_token_ids(tokenizer).values()))
    masking = masking_of(cfg, tokenizer)
    steps = -(-len(texts) // cfg.batch_size)
    optimizer = adamw([model], cfg)
    total = cfg.epochs * steps
    scheduler = make_scheduler(optimizer, round(cfg.warmup_fraction * total), total, "cosine")
    history = []
    model.train()
    for epoch in track(range(cfg.epochs), description="LXMERT pre-training", every_s=15.0):
        sums: dict[str, float] = {}
        order = torch.randperm(len(texts), generator=generator)
        for start in range(0, len(texts), cfg.batch_size):
            picked = order[start:start + cfg.batch_size]
            idx = image_of[picked]  # (B,) image of each caption
            pair_texts, matched, spans = itm_pairs(
                [texts[k] for k in picked.tolist()], [own[i] for i in idx.tolist()], texts,
                cfg.itm_negative_share, cfg.hard_negative_share, generator)
            enc = encode_texts(tokenizer, pair_texts, spans, attribute_ids, cfg.size.max_positions)
            enc["input_ids"], labels = mask_tokens(enc["input_ids"], enc["maskable"],
                                                   enc["attribute"], matched, masking, generator)
            out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                        **images.visual(idx))
            parts = lxmert_losses(out.prediction_logits, out.cross_relationship_score, labels,
                                  matched, cfg.itm_weight)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            scheduler.step()
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        history.append({"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}})
    return history


# --------------------------------------------------------------------------- evaluation


def _outputs(model, enc: dict, image_idx: torch.Tensor, images: RegionCaptions,
             batch_size: int):
    """(rows, model output) of the (text, image) pairs ``enc`` (tokenized, (M, L)) x
    ``image_idx`` (M,), ``batch_size`` pairs at a time."""
    for i in range(0, len(image_idx), batch_size):
        rows = slice(i, i + batch_size)
        yield rows, model(input_ids=enc["input_ids"][rows],
                          attention_mask=enc["attention_mask"][rows],
                          **images.visual(image_idx[rows]))


def _itm_margins(model, tokenizer, texts: list[str], data: HeldoutCaptions,
                 batch_size: int) -> torch.Tensor:
    """``s_1 - s_0`` of ``cross_relationship_score`` (M,): > 0 iff ``softmax(s)[1] > 0.5``;
    text m is paired with image ``data.image_of[m]``."""
    enc = tokenizer(texts, padding="longest", return_tensors="pt")
    return torch.cat([out.cross_relationship_score[:, 1] - out.cross_relationship_score[:, 0]
                      for _, out in _outputs(model, enc, data.image_of, data.images, batch_size)])


def _mlm_accuracy(model, tokenizer, data: HeldoutCaptions, ids: torch.Tensor,
                  batch_size: int) -> dict:
    """Top-1 accuracy (%) over the group's token ``ids`` when each of their occurrences in the
    held-out captions is masked in turn (with the caption's own image)."""
    enc = tokenizer(data.texts, padding="longest", return_tensors="pt")
    caption, position = torch.isin(enc["input_ids"], ids).nonzero(as_tuple=True)  # (G,), (G,)
    if len(caption) == 0:
        return {"accuracy": None, "n": 0, "chance": 100.0 / len(ids)}
    variants = {k: v[caption].clone() for k, v in enc.items()}  # one per occurrence
    rows = torch.arange(len(caption))
    truth = variants["input_ids"][rows, position]
    variants["input_ids"][rows, position] = tokenizer.mask_token_id
    logits = torch.cat([out.prediction_logits[rows[r] - r.start, position[r]][:, ids]
                        for r, out in _outputs(model, variants, data.image_of[caption],
                                               data.images, batch_size)])  # (G, K)
    hit = ids[logits.argmax(1)] == truth
    return {"accuracy": 100.0 * hit.float().mean().item(), "n": len(caption),
            "chance": 100.0 / len(ids)}


def itm_metrics(true: torch.Tensor, false: torch.Tensor, named: torch.Tensor) -> dict:
    """``{itm_accuracy, itm_pairwise, heldout_pairs, heldout_pairs_n}`` (percent) from the ITM
    margins ``s_1 - s_0`` of the true captions ``true`` (M,) and of their swapped copies
    ``false`` (M,); ``named`` (M,) bool marks the captions naming a held-out pair:
    ``itm_accuracy = 100 · (#{true > 0} + #{false <= 0}) / 2M``,
    ``itm_pairwise = 100 · mean(true > false)``, ``heldout_pairs`` = the same over ``named``
    (None when no caption is named)."""
    pair = true > false  # (M,) the caption outscores its swapped copy
    return {"itm_accuracy":
            100.0 * ((true > 0).sum() + (false <= 0).sum()).item() / (2 * len(true)),
            "itm_pairwise": 100.0 * pair.float().mean().item(),
            "heldout_pairs": 100.0 * pair[named].float().mean().item() if named.any() else None,
            "heldout_pairs_n": int(named.sum())}


def caption_metrics(model, tokenizer, data: HeldoutCaptions, batch_size: int = 256) -> dict:
    """Held-out ITM and MLM scores of an ``LxmertForPreTraining`` (module doc), in percent:
    ``{captions, images, itm_accuracy, itm_pairwise, heldout_pairs, heldout_pairs_n,
    heldout_combos, mlm_<group>_accuracy, mlm_<group>_n, mlm_<group>_chance}``."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        true = _itm_margins(model, tokenizer, data.texts, data, batch_size)
        false = _itm_margins(model, tokenizer, data.negatives, data, batch_size)
        out = {"captions": len(data.texts), "images": len(data.images.image_ids),
               **itm_metrics(true, false, data.heldout_pair), "heldout_combos": data.heldout_combos}
        for group, ids in group_token_ids(tokenizer).items():
            result = _mlm_accuracy(model, tokenizer, data, ids, batch_size)
            out.update({f"mlm_{group}_{k}": v for k, v in result.items()})
    model.train(was_training)
    return out


# --------------------------------------------------------------------------- the stage


def pretrain_lxmert(cfg: LxmertPretrainConfig) -> dict:
    """Read, build, train, evaluate and save F0 (module doc); returns the metrics also written to
    ``OUT/pretrain_metrics.json``."""
    cfg.validate()
    out_dir = Path(cfg.out_dir)
    check_out_dir(out_dir)
    corpus = load_region_captions(cfg.data_dir, cfg.regions)
    train_idx, eval_idx = split_heldout(len(corpus.image_ids), cfg.eval_fraction, cfg.seed)
    with torch_threads(cfg.threads or usable_cores()):
        work = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
        shutil.rmtree(work, ignore_errors=True)
        try:
            start = time.monotonic()
            texts = tokenizer_texts(cfg.data_dir, corpus.captions)
            model, tokenizer = build_lxmert(cfg, texts, corpus.visual_feats.shape[-1],
                                            work / "init")
            torch.manual_seed(cfg.seed)  # dropout
            history = fit_lxmert(model, tokenizer, cfg, corpus.subset(train_idx))
            heldout = heldout_captions(corpus.subset(eval_idx), cfg.seed,
                                       heldout_combos(cfg.data_dir))
            metrics = {"family": "lxmert", "config": config_dict(cfg),
                       "data": {"caption_images": len(corpus.image_ids),
                                "captions": sum(map(len, corpus.captions)),
                                "train_images": len(train_idx), "heldout_images": len(eval_idx),
                                "tokenizer_texts": len(texts), "vocab_size": len(tokenizer),
                                "feature_dim": int(corpus.visual_feats.shape[-1])},
                       "epochs": history, "heldout": caption_metrics(model, tokenizer, heldout)}
            metrics["seconds"] = round(time.monotonic() - start, 1)
            model.config.pkd_lxmert_pretrain = {
                "recipe": RECIPE, "config": config_dict(cfg), "regions": str(cfg.regions),
                "heldout_split": {"seed": cfg.seed, "eval_fraction": cfg.eval_fraction}}
            save_model(model, work / "init", work / "model", out_dir, metrics)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return metrics


__all__ = ["ATTRIBUTE_GROUPS", "RECIPE", "LxmertPretrainConfig", "LxmertSize", "build_lxmert",
           "caption_metrics", "fit_lxmert", "heldout_split", "itm_metrics", "load_heldout_captions",
           "lxmert_losses", "masking_of", "pretrain_lxmert"]
