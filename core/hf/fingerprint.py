"""What a checkpoint folder computes with, as sha256 fingerprints, and a check of its weight files.

Stores record these in their provenance and a resumed / sharded run compares them, so features of
two different checkpoints never end up in one "complete" store:

- :func:`weights_sha256` — every byte of the weight files transformers loads (all
  ``*.safetensors`` when there are any, else the ``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt`` files
  without trainer state such as ``training_args.bin``), streamed in :data:`BLOCK` blocks.
- :func:`tokenizer_sha256` — the tokenizer files (vocabulary, merges, ``tokenizer.json``,
  ``tokenizer_config.json``, special tokens).
- :func:`image_processor_sha256` — the image processor files (``preprocessor_config.json``,
  ``processor_config.json``: size, crop, mean / std, resampling).

A fingerprint is sha256 over ``name, size, sha256(bytes)`` of each file, sorted by name: a copy of
the folder elsewhere has the same fingerprints, any changed byte changes them. Hashing is
sequential reading plus sha256 (``benchmarks/bench_fingerprint.py`` measures it); it runs once
per model load, nothing is cached.

:func:`check_weight_files` reads each safetensors header (and the end record of each torch zip
archive) and refuses a truncated or malformed file with one line naming it (the loaders' own errors
are tracebacks from the Rust reader, or ``[Errno 22] Invalid argument``).
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path

from pkd.errors import PkdError

BLOCK = 4 << 20  # bytes per read while hashing (1, 4, 8 MiB: same speed, bench_fingerprint.py)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state", "scaler")  # trainer state
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")  # vocabularies: one is needed
TOKENIZER_SETTINGS = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json",
                         "image_processor_config.json")


def file_sha256(path: str | Path, block: int = BLOCK) -> str:
    """sha256 hex digest of a whole file, read in ``block``-byte pieces into one buffer."""
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(block))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(buffer[:n])
    return digest.hexdigest()


def files_sha256(paths: Iterable[Path]) -> str:
    """sha256 over ``name, size, sha256`` of each file (sorted by name); "" for no files."""
    paths = sorted(paths, key=lambda p: p.name)
    if not paths:
        return ""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}\t{path.stat().st_size}\t{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def model_folder(source: str, local: bool) -> Path | None:
    """The folder holding a checkpoint's files: ``source`` itself, or a hub id's snapshot in the
    local cache; None when there is none (not cached / no hub library)."""
    folder = Path(source)
    if folder.is_dir():
        return folder
    try:
        from huggingface_hub import snapshot_download  # huggingface_hub: 223 ms, for hub ids only

        return Path(snapshot_download(source, local_files_only=True))
    except Exception:  # not cached, offline, no access: no folder rather than no run
        return None


def weight_files(folder: Path) -> list[Path]:
    """The weight files transformers loads from ``folder`` (safetensors preferred, as it does),
    with their shard index if any."""
    files = [p for p in folder.iterdir() if p.is_file()]
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    chosen = safetensors or [p for p in files if p.suffix in WEIGHT_SUFFIXES
                             and not p.name.startswith(NOT_WEIGHTS)]
    index = [p for p in files if p.name in WEIGHT_INDEXES]
    return sorted(chosen + index)


def weights_sha256(source: str, local: bool) -> str:
    """Fingerprint of every byte of a checkpoint's weight files (:func:`weight_files`); "" when
    the files cannot be found (a hub id that is not in the local cache)."""
    return folder_weights_sha256(model_folder(source, local))


def folder_weights_sha256(folder: Path | None) -> str:
    """:func:`weights_sha256` of a folder found by :func:`model_folder` ("" for None)."""
    return files_sha256(weight_files(folder)) if folder is not None else ""


def present(folder: Path | None, names: Iterable[str]) -> list[Path]:
    """The files of ``names`` that exist in ``folder``."""
    if folder is None:
        return []
    return [folder / n for n in dict.fromkeys(names) if (folder / n).is_file()]


def tokenizer_names(tokenizer) -> list[str]:
    """File names a tokenizer's vocabulary can come from: its class's own plus the usual ones."""
    own = getattr(tokenizer, "vocab_files_names", None) or {}
    return [*own.values(), *TOKENIZER_FILES]


def tokenizer_sha256(folder: Path | None, tokenizer) -> str:
    """Fingerprint of the tokenizer files in ``folder`` (vocabulary and settings)."""
    return files_sha256(present(folder, [*tokenizer_names(tokenizer), *TOKENIZER_SETTINGS]))


def image_processor_sha256(folder: Path | None) -> str:
    """Fingerprint of the image processor files in ``folder``."""
    return files_sha256(present(folder, IMAGE_PROCESSOR_FILES))


def image_processor_file(folder: Path | None, where: str) -> str:
    """The processor file a message should name (the first present), else ``where``."""
    found = present(folder, IMAGE_PROCESSOR_FILES)
    return str(found[0]) if found else where


def check_weight_files(folder: Path | None) -> None:
    """Refuse (PkdError, one line) a truncated or malformed weight file in ``folder``: a
    safetensors file whose header does not describe its size, a torch zip archive (``.bin`` /
    ``.pt`` / ``.pth`` of ``torch.save``) without its end record."""
    if folder is None:
        return
    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            check_safetensors(path)
        elif path.suffix in WEIGHT_SUFFIXES:
            check_torch_zip(path)


def check_torch_zip(path: Path) -> None:
    """``torch.save`` writes a zip archive (``PK`` first): one that lost its tail (the central
    directory) is truncated. Legacy pickles (no ``PK``) are left to the loader."""
    with path.open("rb") as f:
        head = f.read(4)
    if not head:
        raise PkdError(f"{path}: empty weights file")
    if head[:2] == b"PK" and not zipfile.is_zipfile(path):
        raise PkdError(f"{path}: truncated weights file ({path.stat().st_size} bytes, a torch zip "
                       "archive without its end record); download or copy it again")


def check_safetensors(path: Path) -> None:
    """A safetensors file is ``u64 n | n bytes of JSON header | tensor data``; the header's
    largest ``data_offsets`` end must be exactly the data size."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise PkdError(f"{path}: not a safetensors file ({size} bytes, truncated or empty)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise PkdError(f"{path}: truncated safetensors file ({size} bytes, its header alone "
                           f"needs {8 + n})")
        try:
            header = json.loads(f.read(n))
            ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise PkdError(f"{path}: corrupt safetensors file (unreadable header)") from None
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise PkdError(f"{path}: truncated safetensors file ({size} bytes, its header describes "
                       f"{need}); download or copy it again")
    if size > need:
        raise PkdError(f"{path}: corrupt safetensors file ({size} bytes, its header describes "
                       f"{need})")
