"""The caption corpus as tensors: decoded images, tokenized captions, positives, held-out split.

``DATA/captions.json`` (COCO captions layout) + ``DATA/images/`` of the synthetic benchmark (its
*unbiased* caption corpus). Images are decoded once into a uint8 tensor (N, 3, S, S) and
normalised in torch (:class:`PixelNormalizer`) with the model's own image processor constants
(``rescale_factor``, ``image_mean``, ``image_std``); all images must be square and of one size
S, which becomes the model's ``image_size``.

Positives: caption m is a positive of image n when its *text* is one of image n's captions, so
identical captions of different images count as positives (``TokenizedCaptions.positives``).

Tokenizer vocabulary: trained (by :func:`pkd.train.pretrain.model.build_model`) on the captions
**and** the question strings of every ``DATA/*_questions.json`` (:func:`load_questions`; the
model never trains on VQA data), so extraction encodes the questions with known words instead of
``<unk>`` pieces; :func:`canonical_token_ids` makes its ids independent of hash-map order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pkd.data.images import load_rgb
from pkd.errors import PkdError
from pkd.fsio import write_atomic
from pkd.progress import track


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


# --------------------------------------------------------------------------- reading


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


# --------------------------------------------------------------------------- tokenization


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
    from tokenizers import Tokenizer  # tokenizers: loaded only when a vocabulary is pruned

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
    write_atomic(path, json.dumps(spec, ensure_ascii=False))


# --------------------------------------------------------------------------- pixels


class PixelNormalizer:
    """The image processor's ``(x * rescale_factor - mean) / std`` on uint8 tensors, in torch."""

    def __init__(self, image_processor):
        self.scale = float(image_processor.rescale_factor)
        self.mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> (B, 3, S, S) float32 pixel_values."""
        return (pixels.float() * self.scale - self.mean) / self.std
