"""What an extraction run covers: images, questions and captions of a data set, keyed by id.

Rows of every store are fixed at creation from these sorted id lists, so a re-run, a resumed run,
a shard on another node and a dask worker all agree on which row holds which id:
- images: sorted union of the image ids of the requested splits (plus caption images);
- questions: sorted by ``(image_id, question_id)`` so a chunk of questions touches few images;
  one question id is one row, so an id found in two split files must be the same question (text
  and image) in both, as GQA-OOD's subsets of testdev are; otherwise the later file would
  silently replace the earlier one's question and the split files are refused;
- captions: sorted by caption id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pkd.data.images import ImageIndex
from pkd.data.vqa import Question, dataset_files, load_questions
from pkd.errors import PkdError


@dataclass(frozen=True)
class SourceConfig:
    root: Path  # data set folder (synthetic benchmark output, or the folder of the JSON files)
    dataset: str = "synth"  # "synth" | "vqa2" | "vqacp2"
    splits: tuple[str, ...] = ("train", "val", "test", "test_iid")  # question splits to cover
    images: Path | None = None  # image folder (default: ROOT/images)
    captions: bool = False  # also cover the caption corpus (ROOT/captions.json)


@dataclass
class Source:
    image_ids: list[int]  # sorted
    question_ids: list[int]  # sorted by (image_id, question_id)
    questions: dict[int, str]  # question_id -> text
    caption_ids: list[int] = field(default_factory=list)
    captions: dict[int, str] = field(default_factory=dict)
    image_index: ImageIndex | None = None

    def image_path(self, image_id: int) -> Path | None:
        """Path of an image, or None when the folder has no file for that id."""
        return self.image_index.get(image_id) if self.image_index is not None else None


def _load_captions(path: Path) -> tuple[dict[int, str], dict[int, int]]:
    """COCO captions JSON -> ({caption_id: text}, {caption_id: image_id})."""
    try:
        data = json.loads(path.read_text())
        anns = data["annotations"]
        texts = {int(a["id"]): str(a["caption"]) for a in anns}
        images = {int(a["id"]): int(a["image_id"]) for a in anns}
    except FileNotFoundError:
        raise PkdError(f"{path}: caption file not found") from None
    except (ValueError, KeyError, TypeError) as err:
        raise PkdError(f"{path}: not a COCO captions file ({err!s})") from None
    return texts, images


def _read_splits(root: Path, dataset: str,
                 splits: tuple[str, ...]) -> tuple[dict[int, str], dict[int, int]]:
    """``({question_id: text}, {question_id: image_id})`` of the split files read together; an
    id in two files must be the same question in both (:func:`_check_same_questions`)."""
    questions: dict[int, str] = {}
    image_of: dict[int, int] = {}
    file_of: dict[int, Path] = {}
    for split in splits:
        qpath, _ = dataset_files(root, dataset, split)
        loaded = load_questions(qpath)
        _check_same_questions(qpath, loaded, questions, image_of, file_of)
        for q in loaded:
            questions[q.question_id], image_of[q.question_id] = q.question, q.image_id
            file_of.setdefault(q.question_id, qpath)
    return questions, image_of


def _check_same_questions(path: Path, loaded: list[Question], questions: dict[int, str],
                          image_of: dict[int, int], file_of: dict[int, Path]) -> None:
    """Refuse the questions of ``path`` whose ids an earlier split file holds with another text
    or image: one line naming both files, the first such id and how many there are."""
    clash = [q.question_id for q in loaded if q.question_id in questions
             and (questions[q.question_id], image_of[q.question_id]) != (q.question, q.image_id)]
    if clash:
        raise PkdError(f"{path}: {len(clash)} question ids are also in {file_of[clash[0]]} with "
                       f"another question or image (e.g. question_id {clash[0]}); a question id "
                       "must name one question across the splits read together")


def load_source(cfg: SourceConfig, with_images: bool = True) -> Source:
    """Collect the ids and texts an extraction covers; scan the image folder once."""
    root = Path(cfg.root)
    questions, image_of = _read_splits(root, cfg.dataset, cfg.splits)
    caption_texts: dict[int, str] = {}
    caption_images: dict[int, int] = {}
    if cfg.captions:
        caption_texts, caption_images = _load_captions(root / "captions.json")
    image_ids = sorted(set(image_of.values()) | set(caption_images.values()))
    index = None
    if with_images:
        folder = Path(cfg.images) if cfg.images else root / "images"
        index = ImageIndex.scan(folder)
    return Source(
        image_ids=image_ids,
        question_ids=sorted(questions, key=lambda q: (image_of[q], q)),
        questions=questions,
        caption_ids=sorted(caption_texts),
        captions=caption_texts,
        image_index=index,
    )
