"""Integrity of model folders, tokenizer: a folder without tokenizer files is refused at load
(transformers would fall back to an empty vocabulary); a tokenizer that maps the first text
batch to unknown tokens is refused; token ids beyond the model's vocabulary are refused."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from pkd.errors import PkdError
from pkd.pipeline.foundation import FoundationSpec, load_foundation

pytest.register_assert_rewrite("model_folders")
from model_folders import TOKENIZER_FILES, copy_model, one_line  # noqa: E402

torch.set_num_threads(1)

TEXTS = ["what color is the square?", "is there a red circle", "how many objects are there?"]


def test_folder_without_tokenizer_files_is_refused(model_dir, family, tmp_path):
    """BLIP would get an empty 5-token BertTokenizer (every question [UNK]), CLIP a 2-token one
    (caught before only by accident, blaming the eos id)."""
    folder = copy_model(model_dir, tmp_path / "m")
    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(PkdError) as err:
        load_foundation(FoundationSpec(str(folder)))
    message = one_line(err)
    assert message.startswith(f"{folder}: no tokenizer file (none of ")
    assert "tokenizer.json" in message and "empty" in message and "eos" not in message


def test_foreign_vocabulary_is_refused_on_the_first_batch(model_dir, family, tmp_path):
    """A tokenizer of the right kind, trained on other text: loads, but the first batch of
    questions would be mostly unknown tokens."""
    from pkd.hf.tiny_models import train_tokenizer

    folder = copy_model(model_dir, tmp_path / "m")
    kind = "bpe" if family == "clip" else "wordpiece"
    train_tokenizer(["αβγ δεζ ηθι κλμ νξο πρσ τυφ χψω"] * 4, folder, kind=kind, vocab_size=60)
    fm = load_foundation(FoundationSpec(str(folder)))
    assert fm.encode_images([Image.new("RGB", (64, 64))])["image_embeds"].shape == (1, 64)
    with pytest.raises(PkdError) as err:
        fm.encode_texts(TEXTS)
    message = one_line(err)
    assert message.startswith(f"{folder / 'tokenizer.json'}: the tokenizer maps ")
    assert re.search(r"maps \d+ of the \d+ pieces \(100%\) of the first 3 texts to the unknown "
                     r"token '(\[UNK\]|<\|unk\|>)' \(at most 5% allowed\)", message), message


def test_a_few_unknown_pieces_pass(model_dir):
    """One never-seen character among many known words is below the limit."""
    fm = load_foundation(FoundationSpec(str(model_dir)))
    texts = [*TEXTS, "how many objects are there? what color is the square? ζ"] * 2
    out = fm.encode_texts(texts)
    assert out["input_ids"].shape == (len(texts), 32)
    assert fm.tokenizer.unk_token_id in out["input_ids"][-1]  # the ζ, accepted


def test_token_ids_outside_the_model_vocabulary(tiny_clip_dir):
    fm = load_foundation(FoundationSpec(str(tiny_clip_dir)))
    fm.model.config.text_config.vocab_size = 10  # as if the tokenizer were a bigger model's
    with pytest.raises(PkdError, match=r"tokenizer\.json: token id \d+ is outside the model's "
                                       r"text vocabulary of 10 \(text_config\.vocab_size\)"):
        fm.encode_texts(TEXTS)
