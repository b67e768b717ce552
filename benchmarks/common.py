"""Shared helpers of the benchmarks: synthetic data, a ViT-B/16-sized CLIP, timing, tables.

Nothing here downloads anything: the data set is ``pkd.data.synth`` output (one question split,
images rendered at the requested size) and the model is a random ``CLIPModel`` built from a
config the size of CLIP ViT-B/16 (vision: 12 layers, width 768, 12 heads, MLP 3072, patch 16,
224 px -> 197 tokens; text: 12 layers, width 512, 8 heads; projection 512), saved with
``save_pretrained`` next to a BPE tokenizer and a ``CLIPImageProcessorPil``. Random weights cost
exactly the FLOPs of trained ones.

Scripts import this module as ``common`` (run them as ``python benchmarks/bench_*.py``).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Each benchmark prints one table; the library's plain status lines would only interleave with it.
os.environ.setdefault("PKD_QUIET", "1")


@dataclass(frozen=True)
class ClipSize:
    image_size: int = 224  # input side in pixels
    patch_size: int = 16  # ViT patch side
    vision_hidden: int = 768  # vision tower width
    vision_layers: int = 12  # vision transformer layers
    vision_heads: int = 12  # vision attention heads
    text_hidden: int = 512  # text tower width
    text_layers: int = 12  # text transformer layers
    text_heads: int = 8  # text attention heads
    projection: int = 512  # joint embedding size
    max_positions: int = 77  # text positions


VIT_B16 = ClipSize()
SMALL = ClipSize(vision_hidden=256, vision_layers=4, vision_heads=4, text_hidden=256,
                 text_layers=2, text_heads=4, projection=256)  # for scale-out runs


def build_clip(out: Path, size: ClipSize = VIT_B16, seed: int = 0) -> Path:
    """A random ``CLIPModel`` of ``size`` with tokenizer + PIL image processor, saved at ``out``
    (skipped when ``out`` already holds one, so ``--cache`` folders are reused)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor
    from transformers.utils import logging as hf_logging

    from pkd.hf.tiny_models import DEFAULT_TEXTS, train_tokenizer

    if (out / "config.json").is_file() and (out / "preprocessor_config.json").is_file():
        return out
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar between the tables
    tokenizer = train_tokenizer(DEFAULT_TEXTS, out, kind="bpe", vocab_size=300)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    text = {"hidden_size": size.text_hidden, "intermediate_size": 4 * size.text_hidden,
            "num_hidden_layers": size.text_layers, "num_attention_heads": size.text_heads,
            "vocab_size": len(tokenizer), "max_position_embeddings": size.max_positions, **ids}
    vision = {"hidden_size": size.vision_hidden, "intermediate_size": 4 * size.vision_hidden,
              "num_hidden_layers": size.vision_layers, "num_attention_heads": size.vision_heads,
              "image_size": size.image_size, "patch_size": size.patch_size}
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=size.projection)
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(out)
    side = size.image_size
    processor = CLIPImageProcessorPil(size={"shortest_edge": side},
                                      crop_size={"height": side, "width": side})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def make_synth(out: Path, images: int, image_size: int = 224, seed: int = 0) -> Path:
    """Synthetic VQA data with ``images`` train images (PNG, ``image_size`` px) and no other
    split or caption image (skipped when ``out`` already holds the same); extract with
    ``--splits train``."""
    import json

    from pkd.data.synth import SynthConfig, generate

    cfg = SynthConfig(seed=seed, image_size=image_size, train_images=images, val_images=0,
                      test_images=0, test_iid_images=0, caption_images=0, pilot_scenes=200)
    meta = out / "synth_meta.json"
    if meta.is_file() and json.loads(meta.read_text())["config"] == _asdict(cfg):
        return out
    generate(cfg, out)
    return out


def _asdict(cfg) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of ``fn()``."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def machine() -> str:
    """One line: cores, CPU model, load average now (the machine may be shared)."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {os.cpu_count()} cores ({model}), load average {load}, "
            f"python {sys.version.split()[0]}")


def print_table(rows: list[dict], first: str) -> None:
    """Rows of ``{first: label, column: value}``; numbers with 3 significant digits, text as is."""
    cols = [c for c in rows[0] if c != first]
    cells = [[str(r[first])] + [_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(x) for x in col) for col in zip([first, *cols], *cells, strict=True)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                    for i, (h, w) in enumerate(zip([first, *cols], widths, strict=True))))
    for row in cells:
        print("  ".join(x.ljust(w) if i == 0 else x.rjust(w)
                        for i, (x, w) in enumerate(zip(row, widths, strict=True))))


def _fmt(x) -> str:
    if isinstance(x, float) and x != x:
        return "-"  # NaN: not measured
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)
