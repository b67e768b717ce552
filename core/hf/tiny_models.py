"""Tiny Hugging Face models built from configs, saved like hub checkpoints (no download).

Tests and the synthetic demo need real transformers models without network access: each builder
seeds torch, builds a model from a small config, and saves weights + config + preprocessing
(tokenizer and/or PIL image processor) with ``save_pretrained`` into ``out_dir``, so the folder
loads exactly like a hub id with ``from_pretrained(out_dir, local_files_only=True)``.

- :func:`train_tokenizer` — WordPiece (BERT/BLIP) or CLIP-style BPE (``</w>``) trained on texts.
- :func:`build_tiny_clip` — ``CLIPModel`` + BPE tokenizer + ``CLIPImageProcessorPil``.
- :func:`build_tiny_blip_itm` — ``BlipForImageTextRetrieval`` + WordPiece +
  ``BlipImageProcessorPil``.
- :func:`build_tiny_detr`, :func:`build_tiny_yolos` — object detectors + their PIL processors.
- :func:`build_tiny_resnet` — ``ResNetModel`` feature-map backbone +
  ``ConvNextImageProcessorPil``.
- :func:`build_tiny_bert` — ``BertModel`` encoder (``model.encoder: hf:DIR`` of the fusion model).
- :func:`build_tiny_lxmert` — ``LxmertForPreTraining`` (region features + boxes in; masked-LM and
  image-text matching heads) + WordPiece with ``[MASK]``.

Weights are random: the models are for plumbing and equivalence tests, not for accuracy.
Attention is eager (``attn_implementation="eager"``) so attention maps can be returned; the
choice is not saved with the weights, so loaders pass it again. LXMERT has no other attention
(its attention is written out in its modeling file), so it needs no such argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    BertConfig,
    BertModel,
    BlipConfig,
    BlipForImageTextRetrieval,
    BlipImageProcessorPil,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    ConvNextImageProcessorPil,
    DetrConfig,
    DetrForObjectDetection,
    DetrImageProcessorPil,
    LxmertConfig,
    LxmertForPreTraining,
    PreTrainedTokenizerFast,
    ResNetConfig,
    ResNetModel,
    YolosConfig,
    YolosForObjectDetection,
    YolosImageProcessorPil,
)

BERT_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                 "sep_token": "[SEP]", "mask_token": "[MASK]"}
CLIP_SPECIALS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                 "pad_token": "<|pad|>", "unk_token": "<|unk|>"}
# A small default corpus so a builder can be called without texts (demo words + VQA phrasing).
# It covers every word and character of the synthetic benchmark's questions and captions, so
# the tiny tokenizers pass load_foundation's unknown-token check on that data.
DEFAULT_TEXTS = (
    "what color is the square ? is there a red circle in the image ? how many shapes are there ?",
    "a photo of a blue triangle next to a green square . yes no one two three four five",
    "where is the yellow star ? left right top bottom center small large the a of is are",
    "what shape is the purple object ? how many orange objects : a diamond , and a circle .",
)


def _bert_tokenizer(vocab_size: int) -> tuple[Tokenizer, trainers.Trainer]:
    """Lower-cased WordPiece with BERT's pre-tokenizer; template ``[CLS] $A [SEP]``."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = list(BERT_SPECIALS.values())  # ids 0..4: [PAD] [UNK] [CLS] [SEP] [MASK]
    return tok, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                 show_progress=False)


def _clip_tokenizer(vocab_size: int) -> tuple[Tokenizer, trainers.Trainer]:
    """Lower-cased BPE with CLIP's ``</w>`` end-of-word suffix; template
    ``<|startoftext|> $A <|endoftext|>``. Characters never seen in training map to ``<|unk|>``."""
    tok = Tokenizer(models.BPE(unk_token="<|unk|>", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    specials = list(CLIP_SPECIALS.values())  # ids 0..3: bos eos pad unk
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  show_progress=False, end_of_word_suffix="</w>")
    return tok, trainer


def train_tokenizer(texts: Iterable[str], out_dir: str | Path,
                    kind: Literal["wordpiece", "bpe"] = "wordpiece",
                    vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Train a tokenizer offline on ``texts`` and save it to ``out_dir`` (AutoTokenizer-loadable).

    ``wordpiece``: BERT-style specials ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (BLIP text encoder);
    ``bpe``: CLIP-style ``<|startoftext|> <|endoftext|>`` plus a separate ``<|pad|>``.
    Both add their start/end tokens around every text, after truncation (so the end token
    survives ``truncation=True``).
    """
    if kind not in ("wordpiece", "bpe"):
        raise ValueError(f"tokenizer kind must be 'wordpiece' or 'bpe', not {kind!r}")
    bert = kind == "wordpiece"
    tok, trainer = _bert_tokenizer(vocab_size) if bert else _clip_tokenizer(vocab_size)
    tok.train_from_iterator(list(texts), trainer=trainer)
    specials = BERT_SPECIALS if bert else CLIP_SPECIALS
    first, last = ("[CLS]", "[SEP]") if bert else ("<|startoftext|>", "<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{first} $A {last}", pair=f"{first} $A {last} $B:1 {last}:1",
        special_tokens=[(first, tok.token_to_id(first)), (last, tok.token_to_id(last))],
    )
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    wrapped.save_pretrained(out_dir)
    return wrapped


def _towers(vocab: int, max_positions: int, image_size: int, patch_size: int, hidden: int,
            layers: int, heads: int) -> tuple[dict, dict]:
    """(text_config, vision_config) kwargs of a two-tower model, both ``hidden`` wide."""
    common = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
              "num_attention_heads": heads}
    return ({**common, "vocab_size": vocab, "max_position_embeddings": max_positions},
            {**common, "image_size": image_size, "patch_size": patch_size})


def build_tiny_clip(out_dir: str | Path, tokenizer_texts: Iterable[str] = DEFAULT_TEXTS, *,
                    image_size: int = 64, patch_size: int = 8, hidden: int = 64, layers: int = 2,
                    heads: int = 4, proj_dim: int = 64, max_positions: int = 32,
                    vocab_size: int = 300, seed: int = 0) -> Path:
    """A random ``CLIPModel`` (ViT + causal text transformer) saved with tokenizer + processor.

    ``text_config`` gets the tokenizer's bos/eos/pad ids: CLIP pools the text at the first
    ``eos_token_id`` position, and with a wrong id it silently pools position 0.
    """
    out = Path(out_dir)
    tokenizer = train_tokenizer(tokenizer_texts, out, kind="bpe", vocab_size=vocab_size)
    text, vision = _towers(len(tokenizer), max_positions, image_size, patch_size, hidden, layers,
                           heads)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    config = CLIPConfig(text_config={**text, **ids}, vision_config=vision,
                        projection_dim=proj_dim, attn_implementation="eager")
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(out)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def build_tiny_blip_itm(out_dir: str | Path, tokenizer_texts: Iterable[str] = DEFAULT_TEXTS, *,
                        image_size: int = 64, patch_size: int = 8, hidden: int = 64,
                        layers: int = 2, heads: int = 4, proj_dim: int = 64,
                        max_positions: int = 32, vocab_size: int = 300, seed: int = 0) -> Path:
    """A random ``BlipForImageTextRetrieval`` (ViT, BERT text encoder with cross-attention to
    the vision tokens, ITM head, ITC projections) saved with a WordPiece tokenizer + processor."""
    out = Path(out_dir)
    tokenizer = train_tokenizer(tokenizer_texts, out, kind="wordpiece", vocab_size=vocab_size)
    text, vision = _towers(len(tokenizer), max_positions, image_size, patch_size, hidden, layers,
                           heads)
    ids = {"bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id,
           "sep_token_id": tokenizer.sep_token_id, "pad_token_id": tokenizer.pad_token_id}
    config = BlipConfig(text_config={**text, **ids}, vision_config=vision,
                        image_text_hidden_size=proj_dim, attn_implementation="eager")
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(config).eval()
    model.save_pretrained(out)
    BlipImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


def _tiny_resnet_config(hidden: int, **extra) -> ResNetConfig:
    """Two basic stages of ``hidden`` / ``2*hidden`` channels (strides 4 and 8 after the stem)."""
    return ResNetConfig(embedding_size=hidden, hidden_sizes=[hidden, 2 * hidden], depths=[1, 1],
                        layer_type="basic", **extra)


def build_tiny_detr(out_dir: str | Path, *, image_size: int = 64, hidden: int = 32,
                    num_queries: int = 10, num_labels: int = 5, seed: int = 0) -> Path:
    """A random ``DetrForObjectDetection`` on transformers' own tiny ResNet (no timm)."""
    out = Path(out_dir)
    config = DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False,
        backbone_config=_tiny_resnet_config(16, out_features=["stage2"]),
        d_model=hidden, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=2 * hidden, decoder_ffn_dim=2 * hidden,
        num_queries=num_queries, num_labels=num_labels,
    )
    torch.manual_seed(seed)
    DetrForObjectDetection(config).eval().save_pretrained(out)
    DetrImageProcessorPil(size={"shortest_edge": image_size, "longest_edge": 2 * image_size}
                          ).save_pretrained(out)
    return out


def build_tiny_yolos(out_dir: str | Path, *, image_size: int = 64, patch_size: int = 16,
                     hidden: int = 32, num_detection_tokens: int = 10, num_labels: int = 5,
                     seed: int = 0) -> Path:
    """A random ``YolosForObjectDetection`` (ViT with detection tokens)."""
    out = Path(out_dir)
    config = YolosConfig(
        hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden, image_size=[image_size, image_size], patch_size=patch_size,
        num_detection_tokens=num_detection_tokens, num_labels=num_labels,
    )
    torch.manual_seed(seed)
    YolosForObjectDetection(config).eval().save_pretrained(out)
    YolosImageProcessorPil(size={"shortest_edge": image_size, "longest_edge": 2 * image_size}
                           ).save_pretrained(out)
    return out


def build_tiny_resnet(out_dir: str | Path, *, image_size: int = 64, hidden: int = 16,
                      seed: int = 0) -> Path:
    """A random ``ResNetModel`` backbone: ``last_hidden_state`` is a (B, 2*hidden, H/8, W/8) map."""
    out = Path(out_dir)
    torch.manual_seed(seed)
    ResNetModel(_tiny_resnet_config(hidden)).eval().save_pretrained(out)
    ConvNextImageProcessorPil(size={"shortest_edge": image_size}).save_pretrained(out)
    return out


def build_tiny_bert(out_dir: str | Path, *, hidden: int = 32, layers: int = 2, heads: int = 4,
                    intermediate: int = 64, max_positions: int = 64, seed: int = 0) -> Path:
    """A random ``BertModel`` (no tokenizer: the fusion model feeds it ``inputs_embeds``)."""
    out = Path(out_dir)
    config = BertConfig(vocab_size=32, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate,
                        max_position_embeddings=max_positions)
    torch.manual_seed(seed)
    BertModel(config).eval().save_pretrained(out)
    return out


def build_tiny_lxmert(out_dir: str | Path, tokenizer_texts: Iterable[str] = DEFAULT_TEXTS, *,
                      hidden: int = 128, l_layers: int = 2, x_layers: int = 2, r_layers: int = 1,
                      heads: int = 4, intermediate: int | None = None, visual_feat_dim: int = 64,
                      vocab_size: int = 400, max_positions: int = 64, seed: int = 0) -> Path:
    """A random ``LxmertForPreTraining`` saved with a WordPiece tokenizer (BERT specials, [MASK]).

    Inputs: ``input_ids`` + ``visual_feats`` (B, N, ``visual_feat_dim``) + ``visual_pos`` (B, N, 4,
    normalised boxes). Heads: masked-LM ``prediction_logits`` (B, L, V) and image-text matching
    ``cross_relationship_score`` (B, 2), index 1 = "matches" (LXMERT's ``matched_label``); the
    object-prediction and QA heads are off (``task_obj_predict`` / ``task_qa`` False).
    ``l_layers`` / ``x_layers`` / ``r_layers``: language, cross-modality and region layers;
    ``intermediate``: feed-forward width (default ``4 * hidden``, as in BERT).
    """
    out = Path(out_dir)
    tokenizer = train_tokenizer(tokenizer_texts, out, kind="wordpiece", vocab_size=vocab_size)
    config = LxmertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_attention_heads=heads,
        intermediate_size=intermediate or 4 * hidden, l_layers=l_layers, x_layers=x_layers,
        r_layers=r_layers, visual_feat_dim=visual_feat_dim, visual_pos_dim=4,
        max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id,
        task_matched=True, task_mask_lm=True, task_obj_predict=False, task_qa=False,
        visual_obj_loss=False, visual_attr_loss=False, visual_feat_loss=False,
    )
    torch.manual_seed(seed)
    LxmertForPreTraining(config).eval().save_pretrained(out)
    return out
