"""Sizes of the GPU benchmark (``gpu.py --size``): the model, the JPEG files, the training set."""

from __future__ import annotations

from dataclasses import dataclass, field

from common import VIT_B16, ClipSize

from pkd.demo.rows import row_settings

# the demo's fusion student and teacher and PKD's predictor sizes (configs/rows/)
_UPDN = row_settings("baseline", "model.")
DEMO_STUDENT = {k: v for k, v in row_settings("student", "model.").items()
                if _UPDN.get(k) != v}  # the student's own settings, not the ones UpDn shares
DEMO_TEACHER = row_settings("teacher", "method.distill.teacher_model.")
DEMO_PKD = {k: v for k, v in row_settings("pkd", "method.pkd.").items() if "${" not in str(v)}


@dataclass(frozen=True)
class Size:
    clip: ClipSize  # the foundation model built from its config
    images: int  # JPEG files for the extraction rows with fast readers
    train_images: int  # images of the training set (also the pkd-as-is rows and the CLI)
    jpeg: tuple[int, int]  # (width, height) of the JPEG files
    distinct: int  # distinct JPEG contents (the files cycle through them)
    batch: int  # images per forward pass
    regions: int  # regions per image
    region_dim: int  # region feature size
    questions_per_image: int  # VQA v2 train: 443,757 / 82,783 = 5.4
    answers: int  # answer classes (VQA v2 bottom-up: 3129)
    train_batch: int  # questions per training step
    steps: int  # timed training steps per pass
    repeat: int  # passes per row, fastest kept
    val_fraction: float  # carved validation share (pkd train needs a validation split)
    models: dict = field(default_factory=dict)  # overrides per role: updn, student, teacher, pkd


TINY_CLIP = ClipSize(image_size=32, patch_size=8, vision_hidden=32, vision_layers=2,
                     vision_heads=2, text_hidden=32, text_layers=2, text_heads=2, projection=32)
SIZES = {
    "tiny": Size(TINY_CLIP, images=32, train_images=16, jpeg=(64, 48), distinct=8, batch=8,
                 regions=36, region_dim=32, questions_per_image=3, answers=20, train_batch=16,
                 steps=3, repeat=1, val_fraction=0.1,
                 models={"updn": {"model.hidden_size": 64, "model.word_dim": 32},
                         "student": DEMO_STUDENT, "teacher": DEMO_TEACHER, "pkd": DEMO_PKD}),
    # pkd's default model sizes (UpDn 512 wide; fusion student 512 x 4 layers; teacher 768 x 12)
    "full": Size(VIT_B16, images=8192, train_images=2048, jpeg=(640, 480), distinct=256,
                 batch=256, regions=36, region_dim=2048, questions_per_image=5, answers=3129,
                 train_batch=512, steps=20, repeat=2, val_fraction=0.02,
                 models={"student": {"model.arch": "fusion"}}),
}
