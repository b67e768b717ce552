"""Pre-train the demo foundation model on a caption corpus: ``pretrain(cfg) -> metrics``.

No pre-trained vision-language weights can be downloaded offline, yet PKD needs a foundation
model that knows more than the biased VQA training split. This stage stands in for large-scale
pre-training: a tiny CLIP (``CLIPModel``) or BLIP (``BlipForImageTextRetrieval``) built by
:mod:`pkd.hf.tiny_models` is trained on the synthetic benchmark's *unbiased* caption corpus
(``DATA/captions.json`` + ``DATA/images/``) and saved with ``save_pretrained``, so every later
stage loads it exactly like a hub model (``load_foundation(FoundationSpec(out_dir))``).

Tokenizer: trained on the captions **and** the question strings of every
``DATA/*_questions.json`` (vocabulary only: the model never trains on VQA data), so extraction
encodes the questions with known words instead of ``<unk>`` pieces.

Losses, for a batch of B images with one sampled caption each (``P[i, j]`` = 1 when caption j is
one of image i's captions in the corpus — identical captions of different images are positives):

- ITC (both families): image/text features ``u_i, w_j`` unit norm, ``s_ij = u_i·w_j / τ``;
  ``L_itc = ½ [CE(s_i·, P_i·/|P_i·|) + CE(s_·j, P_·j/|P_·j|)]``, the symmetric InfoNCE of CLIP
  with soft targets. CLIP: ``1/τ = exp(logit_scale)`` (learnable, clamped at 100 as in CLIP),
  features = ``visual_projection`` / ``text_projection`` of the pooled tokens. BLIP: fixed τ,
  features = ``vision_proj`` / ``text_proj`` of the CLS tokens (BLIP's ITC).
- ITM (BLIP): for every image one hard negative caption and for every caption one hard negative
  image, sampled ∝ ``softmax(s)`` over the non-positives (BLIP's mining); the text encoder
  cross-attends to the image, ``itm_head`` gives (no match, match) logits;
  ``L_itm = CE`` over the B positive and 2B negative pairs. ``L = L_itc + itm_weight · L_itm``.

Determinism: one seed gives identical weights (same thread count): the seed drives the
initialisation, the held-out split, the epoch order, the caption choice and the hard-negative
draws, and the tokenizer ids are made canonical (:func:`canonical_token_ids`).

Images are decoded once into a uint8 tensor (N, 3, S, S) and normalised in torch with the
model's own image processor constants (``rescale_factor``, ``image_mean``, ``image_std``);
all images must be square and of one size S, which becomes the model's ``image_size``.

Output ``OUT/`` (written to a temporary sibling folder, then renamed into place): the
``save_pretrained`` files of model, tokenizer and image processor, and ``pretrain_metrics.json``:
``{family, config, seconds, epochs: [{epoch, loss, itc_loss[, itm_loss]}], retrieval: {i2t_r1,
i2t_r5, t2i_r1, t2i_r5, chance_r1, chance_r5, images}, probes: {color|shape|size: {accuracy,
chance, n}}, data: {...}}``. Retrieval: each held-out image's first caption against all held-out
images (ITC similarity). Probes: the first caption of a held-out image with its k-th colour
(shape, size) word replaced by every alternative; hit when the true caption gets the highest
matching score (CLIP: scaled cosine, BLIP: ITM logit), chance = 1 / number of alternatives.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pkd.data.images import load_rgb
from pkd.data.synth_scene import COLORS, SHAPES, SIZES
from pkd.errors import PkdError
from pkd.progress import track
from pkd.train.schedule import make_scheduler

FAMILIES = ("clip", "blip")
METRICS_FILE = "pretrain_metrics.json"
# Probe name -> the words that replace each other in a caption (the synthetic attributes).
PROBE_WORDS = {"color": tuple(COLORS), "shape": SHAPES, "size": tuple(SIZES)}


@dataclass
class ModelSize:
    hidden: int = 128  # width of both towers
    layers: int = 3  # transformer layers of each tower
    heads: int = 4  # attention heads
    patch_size: int = 8  # ViT patch side in pixels (64 px images -> 64 patches)
    proj_dim: int = 64  # joint embedding width (CLIP projection_dim, BLIP image_text_hidden_size)
    vocab_size: int = 400  # tokenizer vocabulary (the synthetic corpus needs ~100)
    max_positions: int = 64  # text positions of the model (>= the longest tokenized text)


@dataclass
class PretrainConfig:
    data_dir: Path  # folder with captions.json, images/ and (optional) *_questions.json
    out_dir: Path  # model folder to write (save_pretrained layout)
    family: str = "clip"  # "clip" (CLIPModel) | "blip" (BlipForImageTextRetrieval)
    size: ModelSize = field(default_factory=ModelSize)  # architecture of the tiny model
    epochs: int = 30  # passes over the training images (one random caption each)
    batch_size: int = 128  # images per step (in-batch negatives)
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.05  # AdamW weight decay
    warmup_fraction: float = 0.05  # share of the steps with linear warmup, cosine decay after
    itc_temperature: float = 0.07  # BLIP's fixed ITC temperature τ (CLIP learns its own)
    itm_weight: float = 1.0  # weight of the BLIP ITM loss
    eval_fraction: float = 0.1  # share of caption images held out for evaluation
    seed: int = 0  # seeds init, held-out split, data order and hard-negative sampling
    threads: int = 0  # torch CPU threads (0 = every usable core: the data sit in RAM, no reader thread; 1 for bitwise reproducibility)

    def validate(self) -> None:
        """Raise PkdError naming the first unusable field."""
        checks = [
            (self.family in FAMILIES, f"family must be 'clip' or 'blip', not {self.family!r}"),
            (self.epochs >= 1 and self.batch_size >= 2, "need epochs >= 1 and batch_size >= 2"),
            (0 < self.eval_fraction < 1, "eval_fraction must be in (0, 1)"),
            (self.lr > 0 and self.weight_decay >= 0, "need lr > 0 and weight_decay >= 0"),
            (0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)"),
            (self.threads >= 0 and self.itc_temperature > 0, "need threads >= 0, τ > 0"),
            (self.size.hidden % self.size.heads == 0, "hidden must be a multiple of heads"),
        ]
        for ok, problem in checks:
            if not ok:
                raise PkdError(f"PretrainConfig: {problem}")


@dataclass
class CaptionCorpus:
    image_ids: list[int]  # corpus image ids, in captions.json order
    pixels: torch.Tensor  # (N, 3, S, S) uint8 decoded images
    captions: list[list[str]]  # captions of each image, in file order
    questions: list[str]  # question strings of DATA/*_questions.json (tokenizer vocabulary only)


@dataclass
class TokenizedCaptions:
    input_ids: torch.Tensor  # (M, L) long, padded with the pad id to the longest caption
    attention_mask: torch.Tensor  # (M, L) long, 1 on real tokens
    image_of: torch.Tensor  # (M,) long, corpus index of each caption's image
    positives: torch.Tensor  # (N, M) bool, caption m is (textually) one of image n's captions


# --------------------------------------------------------------------------- data


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PkdError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PkdError(f"{path}: not valid JSON ({err})") from None


def _caption_table(path: Path) -> tuple[list[dict], dict[int, list[str]]]:
    """([{id, file_name}], image_id -> captions) of a COCO captions file; images without
    captions are dropped."""
    coco = _read_json(path)
    if not isinstance(coco.get("images"), list) or not isinstance(coco.get("annotations"), list):
        raise PkdError(f"{path}: not a COCO captions file (needs 'images' and 'annotations')")
    captions: dict[int, list[str]] = {}
    try:
        for ann in coco["annotations"]:
            captions.setdefault(int(ann["image_id"]), []).append(str(ann["caption"]))
        images = [{"id": int(im["id"]), "file_name": str(im["file_name"])}
                  for im in coco["images"] if int(im["id"]) in captions]
    except (KeyError, TypeError, ValueError) as err:
        raise PkdError(f"{path}: malformed image or caption record ({err!r})") from None
    return images, captions


def load_questions(data_dir: Path) -> list[str]:
    """Question strings of every ``*_questions.json`` in ``data_dir`` (sorted file order)."""
    texts = []
    for path in sorted(Path(data_dir).glob("*_questions.json")):
        try:
            texts += [str(q["question"]) for q in _read_json(path)["questions"]]
        except (KeyError, TypeError) as err:
            raise PkdError(f"{path}: not a VQA questions file ({err!r})") from None
    return texts


def load_corpus(data_dir: str | Path) -> CaptionCorpus:
    """Decode every caption image once; all must be square and of one size."""
    data_dir = Path(data_dir)
    images, captions = _caption_table(data_dir / "captions.json")
    if len(images) < 4:
        raise PkdError(f"{data_dir / 'captions.json'}: needs at least 4 captioned images")
    arrays = []
    for im in track(images, description="decoding caption images"):
        array = np.asarray(load_rgb(data_dir / "images" / im["file_name"]))  # (S, S, 3)
        if array.shape[0] != array.shape[1] or (arrays and array.shape != arrays[0].shape):
            raise PkdError(f"{data_dir / 'images' / im['file_name']}: size {array.shape[:2]} "
                           f"differs; pre-training needs square images of one size")
        arrays.append(array)
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)
    ids = [int(im["id"]) for im in images]
    return CaptionCorpus(ids, pixels, [captions[i] for i in ids], load_questions(data_dir))


def split_heldout(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) corpus indices, each sorted; at least 2 images on each side."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_eval = min(n - 2, max(2, round(n * fraction)))
    return order[n_eval:].sort().values, order[:n_eval].sort().values


def tokenize_captions(corpus: CaptionCorpus, tokenizer, max_positions: int) -> TokenizedCaptions:
    """All captions at once, padded to the longest; refuses a caption over ``max_positions``."""
    texts = [c for caps in corpus.captions for c in caps]
    image_of = torch.tensor([i for i, caps in enumerate(corpus.captions) for _ in caps])
    enc = tokenizer(texts, padding="longest", return_tensors="pt")
    if enc["input_ids"].shape[1] > max_positions:
        raise PkdError(f"captions.json: a caption has {enc['input_ids'].shape[1]} tokens, more "
                       f"than max_positions {max_positions}")
    text_index = {t: k for k, t in enumerate(dict.fromkeys(texts))}  # text -> distinct text id
    image_texts = torch.zeros(len(corpus.captions), len(text_index), dtype=torch.bool)
    for m, text in enumerate(texts):
        image_texts[image_of[m], text_index[text]] = True
    positives = image_texts[:, [text_index[t] for t in texts]]  # (N, M)
    return TokenizedCaptions(enc["input_ids"], enc["attention_mask"], image_of, positives)


class PixelNormalizer:
    """The image processor's ``(x * rescale_factor - mean) / std`` on uint8 tensors, in torch."""

    def __init__(self, image_processor):
        self.scale = float(image_processor.rescale_factor)
        self.mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> (B, 3, S, S) float32 pixel_values."""
        return (pixels.float() * self.scale - self.mean) / self.std


# --------------------------------------------------------------------------- model


def canonical_token_ids(folder: Path, texts: list[str]) -> None:
    """Renumber ``folder/tokenizer.json`` so that one corpus always gives the same ids.

    Workaround for huggingface/tokenizers#1794: the BPE / WordPiece trainers number the
    end-of-word (``t</w>``) and ``##`` sub-word tokens in hash-map order, so two trainings on the
    same texts give permuted ids (and WordPiece, through tie-breaks, a few different *unused*
    intermediate pieces), and a seeded model would bind its embedding rows to other tokens.
    Specials keep their ids ``0..k-1``; the other tokens follow sorted by string. WordPiece keeps
    only single characters (with and without ``##``) and the pieces ``texts`` tokenize into, so
    its vocabulary no longer depends on tie-breaks; BPE keeps all (its merges need them).
    The model's ``vocab_size`` may then exceed the vocabulary: spare embedding rows go unused.
    """
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    specials = {t["content"]: t["id"] for t in spec["added_tokens"]}
    if sorted(specials.values()) != list(range(len(specials))):
        return  # not laid out by train_tokenizer: leave it alone
    vocab = spec["model"]["vocab"]  # token -> id
    if spec["model"]["type"] == "WordPiece":
        used = {t for e in Tokenizer.from_str(json.dumps(spec)).encode_batch(texts)
                for t in e.tokens}
        vocab = {t: i for t, i in vocab.items() if t in used or len(t.removeprefix("##")) == 1}
    rest = sorted(set(vocab) - set(specials))
    spec["model"]["vocab"] = {**specials, **{t: len(specials) + i for i, t in enumerate(rest)}}
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")


def build_model(cfg: PretrainConfig, texts: list[str], image_size: int, folder: Path):
    """(model in train mode, tokenizer, image processor) of a fresh tiny model, seeded.

    The :mod:`pkd.hf.tiny_models` builder trains the tokenizer on ``texts`` and saves a random
    model into ``folder``; it is loaded back with eager attention, as ``load_foundation`` does.
    """
    from transformers import AutoImageProcessor, AutoTokenizer, BlipForImageTextRetrieval, CLIPModel

    from pkd.hf.tiny_models import build_tiny_blip_itm, build_tiny_clip

    s = cfg.size
    if image_size % s.patch_size:
        raise PkdError(f"PretrainConfig: image size {image_size} is not a multiple of "
                       f"patch_size {s.patch_size}")
    builder, cls = ((build_tiny_clip, CLIPModel) if cfg.family == "clip"
                    else (build_tiny_blip_itm, BlipForImageTextRetrieval))
    builder(folder, texts, image_size=image_size, patch_size=s.patch_size, hidden=s.hidden,
            layers=s.layers, heads=s.heads, proj_dim=s.proj_dim, max_positions=s.max_positions,
            vocab_size=s.vocab_size, seed=cfg.seed)
    canonical_token_ids(Path(folder), texts)
    model = cls.from_pretrained(folder, local_files_only=True, attn_implementation="eager")
    if cfg.family == "blip":
        _reinit_blip_vision_embeddings(model, cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    return model.train(), tokenizer, processor


def _reinit_blip_vision_embeddings(model, seed: int) -> None:
    """Draw BLIP's vision position and class embeddings from N(0, 0.02²), seeded.

    ``BlipVisionConfig.initializer_range`` defaults to 1e-10 (hub BLIP is only ever loaded, not
    trained from scratch): every patch then starts without position and the CLS token at zero,
    and training from scratch stalls at the uniform ITC loss for many epochs.
    """
    embeddings = model.vision_model.embeddings
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in (embeddings.position_embedding, embeddings.class_embedding):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


def encode_images(model, family: str, pixel_values: torch.Tensor):
    """(unit image features (B, d_e), vision tokens (B, P, d_v)): CLIP's pooled projection,
    BLIP's ``vision_proj`` of the CLS token."""
    if family == "clip":
        out = model.get_image_features(pixel_values=pixel_values)
        return F.normalize(out.pooler_output, dim=-1), out.last_hidden_state
    vision = model.vision_model(pixel_values=pixel_values).last_hidden_state  # (B, P, d_v)
    return F.normalize(model.vision_proj(vision[:, 0]), dim=-1), vision


def encode_texts(model, family: str, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor) -> torch.Tensor:
    """Unit text features (B, d_e): CLIP's EOS-pooled projection, BLIP's ``text_proj`` of the
    CLS token of the unimodal text encoder."""
    if family == "clip":
        out = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(out.pooler_output, dim=-1)
    text = model.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
    return F.normalize(model.text_proj(text.last_hidden_state[:, 0]), dim=-1)


def itm_logits(model, vision_tokens: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: torch.Tensor) -> torch.Tensor:
    """BLIP's (no match, match) logits (B, 2): the text encoder cross-attends to the image."""
    image_mask = torch.ones(vision_tokens.shape[:2], dtype=torch.long)  # (B, P)
    q = model.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                           encoder_hidden_states=vision_tokens,
                           encoder_attention_mask=image_mask).last_hidden_state  # (B, L, d_t)
    return model.itm_head(q[:, 0])


def itc_scale(model, family: str, cfg: PretrainConfig) -> torch.Tensor:
    """1/τ: CLIP's learnable ``exp(logit_scale)`` (at most 100), BLIP's fixed ``1/τ``."""
    if family == "clip":
        return model.logit_scale.exp().clamp(max=100.0)
    return torch.tensor(1.0 / cfg.itc_temperature)


@torch.no_grad()
def pair_scores(model, family: str, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
    """Matching logit (B,) of aligned (image, text) pairs, the one ``match_scores`` computes from
    cached features: CLIP ``exp(logit_scale) · cos``, BLIP ``itm[:, 1] - itm[:, 0]``."""
    image, vision = encode_images(model, family, pixel_values)
    return _pair_logits(model, family, image, vision, input_ids, attention_mask)


def _pair_logits(model, family: str, image: torch.Tensor, vision: torch.Tensor,
                 input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """:func:`pair_scores` from already encoded images (B, d_e) and vision tokens (B, P, d_v)."""
    if family == "clip":
        text = encode_texts(model, family, input_ids, attention_mask)
        return model.logit_scale.exp() * (image * text).sum(-1)
    logits = itm_logits(model, vision, input_ids, attention_mask)  # (B, 2)
    return logits[:, 1] - logits[:, 0]


# --------------------------------------------------------------------------- losses


def itc_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, scale: torch.Tensor,
             positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets (formula: module doc). ``image_feats``, ``text_feats``
    (B, d) unit norm, ``positives`` (B, B) bool with a true diagonal."""
    logits = scale * image_feats @ text_feats.T  # (B, B) image x text
    target = positives.float()
    i2t = -(target / target.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1)  # (B,)
    t2i = -(target / target.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0)  # (B,)
    return (i2t.mean() + t2i.mean()) / 2


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


def blip_itm_loss(model, vision: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
                  similarity: torch.Tensor, positives: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """CE of ``itm_head`` on B positive pairs, B (image, hard text) and B (hard image, text)."""
    neg_text = sample_hard_negatives(similarity, positives, generator)  # (B,) per image
    neg_image = sample_hard_negatives(similarity.T, positives.T, generator)  # (B,) per text
    vision_all = torch.cat([vision, vision, vision[neg_image]])  # (3B, P, d_v)
    ids_all = torch.cat([input_ids, input_ids[neg_text], input_ids])  # (3B, L)
    mask_all = torch.cat([mask, mask[neg_text], mask])  # (3B, L)
    labels = torch.zeros(len(ids_all), dtype=torch.long)
    labels[: len(input_ids)] = 1
    return F.cross_entropy(itm_logits(model, vision_all, ids_all, mask_all), labels)


def step_losses(model, cfg: PretrainConfig, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                mask: torch.Tensor, positives: torch.Tensor,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``loss`` plus its named parts (``itc_loss``, and ``itm_loss`` for BLIP) of one batch."""
    image, vision = encode_images(model, cfg.family, pixel_values)
    text = encode_texts(model, cfg.family, input_ids, mask)
    scale = itc_scale(model, cfg.family, cfg)
    parts = {"itc_loss": itc_loss(image, text, scale, positives)}
    if cfg.family == "blip":
        similarity = (scale * image @ text.T).detach()  # (B, B)
        parts["itm_loss"] = blip_itm_loss(model, vision, input_ids, mask, similarity, positives,
                                          generator)
    parts["loss"] = parts["itc_loss"] + cfg.itm_weight * parts.get("itm_loss", 0.0)
    return parts


# --------------------------------------------------------------------------- training


def _optimizer(model, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on gains, biases and the logit scale (tensors under 2-D)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def epoch_batches(train_idx: torch.Tensor, tokens: TokenizedCaptions, batch_size: int,
                  generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(image indices (B,), caption indices (B,)) of one epoch: the training images in a seeded
    order, one seeded random caption each; a last batch under 2 images is dropped."""
    order = train_idx[torch.randperm(len(train_idx), generator=generator)]
    counts = torch.bincount(tokens.image_of, minlength=int(tokens.positives.shape[0]))  # (N,)
    starts = counts.cumsum(0) - counts  # first caption of each image (captions are grouped)
    pick = (torch.rand(len(order), generator=generator) * counts[order]).long()
    captions = starts[order] + pick
    return [(order[i:i + batch_size], captions[i:i + batch_size])
            for i in range(0, len(order), batch_size) if len(order) - i >= 2]


def fit_epochs(model, cfg: PretrainConfig, pixels: torch.Tensor, tokens: TokenizedCaptions,
               train_idx: torch.Tensor, normalize: PixelNormalizer) -> list[dict]:
    """Train in place; returns per-epoch mean losses ``[{epoch, loss, itc_loss, ...}]``."""
    generator = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = len(epoch_batches(train_idx, tokens, cfg.batch_size,
                                        torch.Generator().manual_seed(cfg.seed)))
    total = cfg.epochs * steps_per_epoch
    optimizer = _optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, round(cfg.warmup_fraction * total), total, "cosine")
    history = []
    model.train()
    for epoch in track(range(cfg.epochs), description="pre-training", every_s=15.0):
        sums: dict[str, float] = {}
        batches = epoch_batches(train_idx, tokens, cfg.batch_size, generator)
        for images, captions in batches:
            length = int(tokens.attention_mask[captions].sum(1).max())  # trim shared padding
            parts = step_losses(model, cfg, normalize(pixels[images]),
                                tokens.input_ids[captions, :length],
                                tokens.attention_mask[captions, :length],
                                tokens.positives[images][:, captions], generator)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            scheduler.step()
            if cfg.family == "clip":  # CLIP clips its temperature at 1/100
                model.logit_scale.data.clamp_(max=math.log(100.0))
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        history.append({"epoch": epoch + 1, **{k: v / len(batches) for k, v in sums.items()}})
    return history


# --------------------------------------------------------------------------- evaluation


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
    matching logit (:func:`pair_scores`); image ``i`` is ``image_feats[i]`` (n, d_e) and
    ``vision[i]`` (n, P, d_v) and has caption ``captions[i]``."""
    groups = [(i, texts, true) for i, c in enumerate(captions)
              for texts, true in probe_variants(c, words)]
    if not groups:
        return {"accuracy": None, "chance": 100.0 / len(words), "n": 0}
    image_of = torch.tensor([i for i, texts, _ in groups for _ in texts])  # (G * K,)
    enc = tokenizer([t for _, texts, _ in groups for t in texts], padding="longest",
                    return_tensors="pt")
    scores = torch.cat([
        _pair_logits(model, family, image_feats[image_of[i:i + batch]],
                     vision[image_of[i:i + batch]], enc["input_ids"][i:i + batch],
                     enc["attention_mask"][i:i + batch])
        for i in range(0, len(image_of), batch)]).view(len(groups), len(words))  # (G, K)
    true = torch.tensor([t for _, _, t in groups])
    true_score = scores.gather(1, true[:, None])[:, 0]  # (G,)
    others = scores.scatter(1, true[:, None], float("-inf")).max(1).values  # (G,)
    accuracy = 100.0 * (true_score > others).float().mean().item()
    return {"accuracy": accuracy, "chance": 100.0 / len(words), "n": len(groups)}


# --------------------------------------------------------------------------- saving


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace anything but nothing, an empty folder or an earlier pretrain output."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PkdError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / METRICS_FILE).exists():
        raise PkdError(f"{out_dir}: folder is not empty and holds no earlier pretrain output")


def save_model(model, init_dir: Path, staging: Path, out_dir: Path, metrics: dict) -> None:
    """Write model + the builder's tokenizer / processor files + metrics into ``staging``, then
    move it to ``out_dir`` with renames (an earlier output is replaced only once all is written).
    The weights go into a fresh folder: ``init_dir``'s may still be memory-mapped."""
    shutil.copytree(init_dir, staging, ignore=shutil.ignore_patterns("*.safetensors",
                                                                      "config.json"))
    model.eval().save_pretrained(staging)
    (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    _check_out_dir(out_dir)
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    staging.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- entry point


def _evaluate(model, cfg: PretrainConfig, corpus: CaptionCorpus, tokens: TokenizedCaptions,
              tokenizer, eval_idx: torch.Tensor, normalize: PixelNormalizer) -> dict:
    """``{retrieval: {...}, probes: {color, shape, size}}`` on the held-out images."""
    model.eval()
    image_feats, vision = encode_image_batches(model, cfg.family, corpus.pixels[eval_idx],
                                               normalize)
    retrieval = evaluate_retrieval(model, cfg.family, image_feats, tokens, eval_idx)
    first_captions = [corpus.captions[i][0] for i in eval_idx.tolist()]
    probes = {name: evaluate_probe(model, cfg.family, image_feats, vision, first_captions,
                                   tokenizer, words)
              for name, words in PROBE_WORDS.items()}
    return {"retrieval": retrieval, "probes": probes}


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under a batch scheduler)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def pretrain(cfg: PretrainConfig) -> dict:
    """Build, train, evaluate and save the foundation model (see the module doc); returns the
    metrics also written to ``OUT/pretrain_metrics.json``."""
    cfg.validate()
    out_dir = Path(cfg.out_dir)
    _check_out_dir(out_dir)
    threads = torch.get_num_threads()
    # measured on 2 cores: 2 threads pre-train 1.6x faster than 1 (nothing else runs beside)
    torch.set_num_threads(cfg.threads or usable_cores())
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
        train_idx, eval_idx = split_heldout(len(corpus.image_ids), cfg.eval_fraction, cfg.seed)
        normalize = PixelNormalizer(processor)
        history = fit_epochs(model, cfg, corpus.pixels, tokens, train_idx, normalize)
        metrics = {
            "family": cfg.family, "config": _jsonable(asdict(cfg)),
            "data": {"caption_images": len(corpus.image_ids), "captions": len(tokens.image_of),
                     "train_images": len(train_idx), "heldout_images": len(eval_idx),
                     "tokenizer_texts": len(texts), "vocab_size": len(tokenizer)},
            "epochs": history,
            **_evaluate(model, cfg, corpus, tokens, tokenizer, eval_idx, normalize),
        }
        metrics["seconds"] = round(time.monotonic() - start, 1)
        save_model(model, work / "init", work / "model", out_dir, metrics)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(work, ignore_errors=True)
    return metrics


def _jsonable(obj):
    """Paths as strings, recursively (for the metrics JSON)."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    return str(obj) if isinstance(obj, Path) else obj
