"""What an extraction covers (:func:`pkd.pipeline.sources.load_source`): the questions of several
split files, read together into one question store keyed by question_id."""

from __future__ import annotations

import json

import pytest

from pkd.errors import PkdError
from pkd.pipeline.sources import SourceConfig, load_source


def _questions(root, split: str, ids, text: str = "what is it {}?", image=lambda q: q // 3):
    path = root / f"synth_{split}_questions.json"
    path.write_text(json.dumps({"questions": [{"question_id": q, "image_id": image(q),
                                               "question": text.format(q)} for q in ids]}))
    return path


def test_question_ids_shared_by_two_split_files_are_refused(tmp_path):
    """A user re-numbered val from 63 instead of 101: 100 train + 63 val questions, 38 ids in both.
    Read together they would become 125 questions, val's text standing for train's on 38 ids."""
    train = _questions(tmp_path, "train", range(1, 101))
    val = _questions(tmp_path, "val", range(63, 126), text="how many {}?")
    with pytest.raises(PkdError) as err:
        load_source(SourceConfig(tmp_path, "synth", ("train", "val")), with_images=False)
    assert str(err.value) == (f"{val}: 38 question ids are also in {train} with another question "
                              "or image (e.g. question_id 63); a question id must name one "
                              "question across the splits read together")
    source = load_source(SourceConfig(tmp_path, "synth", ("val",)), with_images=False)
    assert len(source.question_ids) == 63


def test_the_same_question_in_two_files_is_one_question(tmp_path):
    """GQA-OOD's ood_testdev_* files are subsets of testdev: the same record under the same id."""
    _questions(tmp_path, "testdev", range(1, 11))
    _questions(tmp_path, "tail", range(4, 8))
    source = load_source(SourceConfig(tmp_path, "synth", ("testdev", "tail")), with_images=False)
    assert sorted(source.question_ids) == list(range(1, 11))
    assert source.questions[5] == "what is it 5?"


def test_same_text_other_image_is_refused(tmp_path):
    train = _questions(tmp_path, "train", range(1, 11))
    val = _questions(tmp_path, "val", range(9, 12), image=lambda q: q + 1000)
    with pytest.raises(PkdError, match=rf"^{val}: 2 question ids are also in {train} "
                                       r".*\(e.g. question_id 9\)"):
        load_source(SourceConfig(tmp_path, "synth", ("train", "val")), with_images=False)


@pytest.mark.parametrize("content", ['{"questions": []}', "[]", "", "  \n"])
def test_an_empty_questions_file_is_refused(tmp_path, content):
    _questions(tmp_path, "train", range(1, 11))
    val = tmp_path / "synth_val_questions.json"
    val.write_text(content)
    want = "no questions (an empty list)" if content.strip() else "empty file (expected JSON)"
    with pytest.raises(PkdError) as err:
        load_source(SourceConfig(tmp_path, "synth", ("train", "val")), with_images=False)
    assert str(err.value) == f"{val}: {want}"
