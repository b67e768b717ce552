"""Pre-train the demo foundation model on a caption corpus: ``pretrain(cfg) -> metrics``.

No pre-trained vision-language weights can be downloaded offline, yet PKD needs a foundation
model that knows more than the biased VQA training split. This stage stands in for large-scale
pre-training: a tiny CLIP (``CLIPModel``) or BLIP (``BlipForImageTextRetrieval``) built by
:mod:`pkd.hf.tiny_models` is trained on the synthetic benchmark's *unbiased* caption corpus
(``DATA/captions.json`` + ``DATA/images/``) and saved with ``save_pretrained``, so every later
stage loads it exactly like a hub model (``load_foundation(FoundationSpec(out_dir))``).

One module per concept:

- :mod:`~pkd.train.pretrain.config`: :class:`PretrainConfig`, :class:`ModelSize`.
- :mod:`~pkd.train.pretrain.corpus`: decoded images, tokenized captions and their positives
  (identical captions of different images are positives), the held-out split, the tokenizer's
  canonical ids, pixel normalisation.
- :mod:`~pkd.train.pretrain.model`: the tiny model, its image / text encoders and pair scores.
- :mod:`~pkd.train.pretrain.loop`: :func:`fit_epochs`, ``L = L_itc + itm_weight · L_itm``
  (ITM for BLIP only) with the losses of :mod:`pkd.train.losses.pretrain` (CLIP's symmetric
  InfoNCE, BLIP's ITM with hard negatives).
- :mod:`~pkd.train.pretrain.negatives`: attribute-swapped negative captions (NegCLIP-style) that
  join the ITC so that shape, not just colour, must be bound to the image.
- :mod:`~pkd.train.pretrain.tag_pretrain`: optional stage A before the ITC, the image tower
  trained as a tagger of its captions' objects, then locked for the ITC (LiT-style), so that the
  tiny ViT perceives shape.
- :mod:`~pkd.train.pretrain.evaluate`: held-out retrieval and attribute probes.
- :mod:`~pkd.train.pretrain.save`: the output folder, moved into place atomically.

Determinism: one seed gives identical weights (same thread count; ``threads=1`` for bitwise
reproducibility): the seed drives the initialisation, the held-out split, the epoch order, the
caption choice and the hard-negative draws, and the tokenizer ids are made canonical
(:func:`canonical_token_ids`).

Output ``OUT/`` (written to a temporary sibling folder, then renamed into place): the
``save_pretrained`` files of model, tokenizer and image processor, and ``pretrain_metrics.json``:
``{family, config, seconds, epochs: [{epoch, loss, itc_loss[, itm_loss]}], tag_pretraining:
[{epoch, tag_loss}] (stage A; empty when off), retrieval: {i2t_r1,
i2t_r5, t2i_r1, t2i_r5, chance_r1, chance_r5, images}, probes: {color|shape|size: {accuracy,
chance, n}}, data: {...}}`` (retrieval and probes: :mod:`~pkd.train.pretrain.evaluate`).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from pkd.cores import torch_threads, usable_cores
from pkd.train.pretrain.config import FAMILIES, ModelSize, PretrainConfig, config_dict
from pkd.train.pretrain.corpus import (
    CaptionCorpus,
    PixelNormalizer,
    TokenizedCaptions,
    canonical_token_ids,
    load_corpus,
    load_questions,
    split_heldout,
    tokenize_captions,
)
from pkd.train.pretrain.evaluate import (
    PROBE_WORDS,
    encode_image_batches,
    evaluate_heldout,
    evaluate_probe,
    evaluate_retrieval,
    probe_variants,
    retrieval_recall,
)
from pkd.train.pretrain.loop import blip_itm_loss, epoch_batches, fit_epochs, step_losses
from pkd.train.pretrain.model import (
    build_model,
    encode_images,
    encode_texts,
    itc_scale,
    itm_logits,
    pair_logits,
    pair_scores,
)
from pkd.train.pretrain.negatives import negative_captions
from pkd.train.pretrain.save import METRICS_FILE, check_out_dir, save_model
from pkd.train.pretrain.tag_pretrain import fit_tag_epochs, lock_vision, object_tags
from pkd.train.pretrain.tags import caption_tags

__all__ = [
    "FAMILIES", "METRICS_FILE", "PROBE_WORDS", "CaptionCorpus", "ModelSize", "PixelNormalizer",
    "PretrainConfig", "TokenizedCaptions", "blip_itm_loss", "build_model", "canonical_token_ids",
    "check_out_dir", "config_dict", "encode_image_batches", "encode_images", "encode_texts",
    "epoch_batches", "evaluate_heldout", "evaluate_probe", "evaluate_retrieval", "fit_epochs",
    "itc_scale", "itm_logits", "load_corpus", "load_questions", "pair_logits", "pair_scores",
    "pretrain", "probe_variants", "retrieval_recall", "save_model", "split_heldout",
    "step_losses", "tokenize_captions",
]


def pretrain(cfg: PretrainConfig) -> dict:
    """Build, train, evaluate and save the foundation model (see the module doc); returns the
    metrics also written to ``OUT/pretrain_metrics.json``."""
    cfg.validate()
    out_dir = Path(cfg.out_dir)
    check_out_dir(out_dir)
    # measured on 2 cores: 2 threads pre-train 1.6x faster than 1 (nothing else runs beside)
    with torch_threads(cfg.threads or usable_cores()):
        work = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
        shutil.rmtree(work, ignore_errors=True)
        try:
            start = time.monotonic()
            torch.manual_seed(cfg.seed)
            corpus = load_corpus(cfg.data_dir)
            texts = [c for caps in corpus.captions for c in caps] + corpus.questions
            model, tokenizer, processor = build_model(cfg, texts, corpus.pixels.shape[-1],
                                                      work / "init")
            tokens = tokenize_captions(corpus, tokenizer, cfg.size.max_positions)
            train_idx, eval_idx = split_heldout(len(corpus.image_ids), cfg.eval_fraction,
                                                cfg.seed)
            normalize = PixelNormalizer(processor)
            negatives = None
            if cfg.swap_negatives:
                negatives = negative_captions([c for caps in corpus.captions for c in caps],
                                              tokenizer, cfg.swap_negatives, cfg.seed,
                                              cfg.size.max_positions)
            tags = caption_tags(corpus.captions) if cfg.tag_weight > 0 else None
            tagging = []
            if cfg.tag_epochs:
                tagging = fit_tag_epochs(model, cfg, corpus.pixels, object_tags(corpus.captions),
                                         train_idx, normalize)
            if cfg.lock_vision:
                lock_vision(model)
            history = fit_epochs(model, cfg, corpus.pixels, tokens, train_idx, normalize,
                                 negatives, tags)
            metrics = {
                "family": cfg.family, "config": config_dict(cfg),
                "data": {"caption_images": len(corpus.image_ids),
                         "captions": len(tokens.image_of), "train_images": len(train_idx),
                         "heldout_images": len(eval_idx), "tokenizer_texts": len(texts),
                         "vocab_size": len(tokenizer)},
                "epochs": history, "tag_pretraining": tagging,
                **evaluate_heldout(model, cfg.family, corpus, tokens, tokenizer, eval_idx,
                                   normalize),
            }
            metrics["seconds"] = round(time.monotonic() - start, 1)
            save_model(model, work / "init", work / "model", out_dir, metrics)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return metrics
