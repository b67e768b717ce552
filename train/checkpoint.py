"""Safe, atomic training checkpoints: safetensors weights + JSON state, never pickle.

Layout of a checkpoint root (e.g. ``RUN/ckpt``)::

    latest.json               {"format": "pkd.checkpoint.pointer", "name": "step_000100"}
    step_000100/
      model.safetensors       model state_dict
      state.safetensors       every tensor found inside ``state`` (optimizer moments, RNG, ...)
      state.json              {"format": "pkd.checkpoint", "version": 2, "state": SKELETON,
                               "files": {NAME: {"sha256": HEX, "bytes": N}, ...},
                               "state_sha256": HEX}

``SKELETON`` is ``state`` as JSON with its tensors in ``state.safetensors``
(:mod:`pkd.train.checkpoint_state`), so ``optimizer.load_state_dict`` gets back exactly what
``state_dict()`` gave.

Atomicity: a checkpoint is written into ``.tmp-*`` inside the root, then renamed into place with
``os.replace``; ``latest.json`` is rewritten the same way afterwards. A crash at any moment leaves
``latest.json`` naming a complete checkpoint (except when the *same* step is saved twice and
the crash falls between the two renames that swap it). One writer per root (rank 0).

Integrity: ``state.json`` records the sha256 (and size) of each ``.safetensors`` file beside it
and of its own ``SKELETON`` (canonical JSON); loading recomputes them and refuses a checkpoint
whose bytes changed since it was written (a one-line ``PkdError`` naming the file), before any
tensor is used. Checkpoints written before checksums existed (``"version": 1``, no ``files``)
still load, unchecked: refusing them would strand every earlier run, and a resumed run writes
checked checkpoints from its next save on. A version-2 ``state.json`` without its record is
refused. Bare weights files (below) have no sidecar and are not checked.

Loading refuses (``PkdError``) a checkpoint whose saved config differs from the expected one in
the model-relevant keys (:data:`MODEL_RELEVANT`), and never unpickles: a ``.pt/.pth/.bin/.ckpt``
file is only read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pkd.errors import PkdError
from pkd.train.checkpoint_state import TENSOR_FILE, decode_state, encode_state, unshared

FORMAT, POINTER_FORMAT = "pkd.checkpoint", "pkd.checkpoint.pointer"
VERSION = 2  # 2: checksums of the files and the skeleton (1: none)
POINTER, MODEL_FILE, STATE_FILE = "latest.json", "model.safetensors", "state.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Config keys (dotted prefixes) that must match to resume / evaluate a checkpoint.
MODEL_RELEVANT = ("model", "method", "data.dataset", "data.answer_min_count",
                  "data.max_question_length")
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def save_checkpoint(root: str | Path, model_state: dict[str, torch.Tensor], state: dict,
                    keep_last: int = 0) -> Path:
    """Write ``root/step_NNNNNN`` (step = ``state["step"]``) atomically; return its path.

    ``state`` may hold ``step``, ``epoch``, ``optimizer`` (a ``state_dict()``), ``rng``
    (:func:`capture_rng_state`), ``metrics``, ``config`` (a dict) and anything else made of
    tensors, numpy arrays, dicts, lists, tuples and JSON scalars. ``keep_last`` > 0 prunes older
    ``step_*`` checkpoints.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    name = checkpoint_name(int(state.get("step", 0)))
    tmp = root / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tensors: dict[str, torch.Tensor] = {}
        skeleton = encode_state(state, tensors, "state")
        save_file(unshared(model_state), str(tmp / MODEL_FILE), metadata={"format": "pt"})
        save_file(unshared(tensors), str(tmp / TENSOR_FILE), metadata={"format": "pt"})
        files = {f: {"sha256": _sha256(tmp / f), "bytes": (tmp / f).stat().st_size}
                 for f in (MODEL_FILE, TENSOR_FILE)}
        _write_json(tmp / STATE_FILE, {"format": FORMAT, "version": VERSION, "state": skeleton,
                                       "files": files, "state_sha256": _skeleton_sha256(skeleton)})
        _fsync_files(tmp)
        _move_into_place(tmp, root / name)
        _write_json(root / POINTER, {"format": POINTER_FORMAT, "name": name})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if keep_last > 0:
        prune_checkpoints(root, keep_last)
    return root / name


def load_checkpoint(path: str | Path, expected_config: Any = None,
                    compare: Sequence[str] = MODEL_RELEVANT
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """(model_state, state) from a checkpoint root, a ``step_*`` dir, or a weights file.

    With ``expected_config`` (dict or dataclass), a checkpoint whose saved config differs in a
    key under ``compare`` is refused. A bare weights file (``.safetensors`` or weights-only
    ``.pt``...) carries no config: only the caller's ``load_state_dict(strict=True)`` checks it,
    and its state is ``{"source": PATH}``.
    """
    path = Path(path)
    if path.is_file() or path.suffix in (*PICKLE_SUFFIXES, ".safetensors"):
        return _load_weights_file(path), {"source": str(path)}
    ckpt = resolve_checkpoint(path)
    doc = _read_json(ckpt / STATE_FILE)
    if doc.get("format") != FORMAT or not isinstance(doc.get("state"), dict):
        raise PkdError(f"{ckpt / STATE_FILE}: not a pkd checkpoint state (format != '{FORMAT}')")
    verify_checkpoint(ckpt, doc)
    if expected_config is not None:
        check_config(ckpt / STATE_FILE, decode_state(doc["state"], None).get("config"),
                     expected_config, compare)
    state = decode_state(doc["state"], _load_safetensors(ckpt / TENSOR_FILE))
    return _load_safetensors(ckpt / MODEL_FILE), state


def verify_checkpoint(ckpt: str | Path, doc: dict | None = None) -> bool:
    """Check the sha256 of the files and skeleton of the ``step_*`` dir ``ckpt`` against its
    ``state.json`` (``doc``: that file, already read). True when checked, False for a
    version-1 checkpoint (no checksums); a mismatch is a one-line :class:`PkdError`."""
    ckpt = Path(ckpt)
    sidecar = ckpt / STATE_FILE
    doc = _read_json(sidecar) if doc is None else doc
    version = doc.get("version", 1)
    if not isinstance(version, int) or version > VERSION:
        raise PkdError(f"{sidecar}: checkpoint version {version!r} is newer than this pkd "
                       f"reads ({VERSION})")
    if version < 2:
        return False
    files = doc.get("files")
    if (not isinstance(files, dict) or set(files) != {MODEL_FILE, TENSOR_FILE}
            or not all(isinstance(r, dict) and isinstance(r.get("sha256"), str)
                       for r in files.values())):
        raise PkdError(f"{sidecar}: no valid checksum record ('files') for "
                       f"{MODEL_FILE} and {TENSOR_FILE}")
    if doc.get("state_sha256") != _skeleton_sha256(doc.get("state")):
        raise PkdError(f"{sidecar}: checksum mismatch in its state (the file was changed "
                       "after it was written)")
    for name, record in files.items():
        path = ckpt / name
        if not path.is_file():
            raise PkdError(f"{path}: missing checkpoint file")
        size, got = path.stat().st_size, _sha256(path)
        if size != record.get("bytes", size) or got != record["sha256"]:
            raise PkdError(f"{path}: checksum mismatch (sha256 {got[:12]}, {size} bytes; "
                           f"{STATE_FILE} records {record['sha256'][:12]}, "
                           f"{record.get('bytes')} bytes): the file is corrupt")
    return True


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(weights)``; weights that do not fit are a one-line
    :class:`PkdError` ``"<what> (<torch's first specific complaint>)"``."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0])[:200]
        raise PkdError(f"{what} ({detail})") from None


def resolve_checkpoint(path: str | Path) -> Path:
    """The ``step_*`` directory meant by ``path`` (a root with ``latest.json`` or a step dir)."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    if (path / POINTER).is_file():
        pointer = _read_json(path / POINTER)
        name = pointer.get("name")
        if pointer.get("format") != POINTER_FORMAT or not isinstance(name, str) or "/" in name:
            raise PkdError(f"{path / POINTER}: not a pkd checkpoint pointer")
        if not (path / name / STATE_FILE).is_file():
            raise PkdError(f"{path / POINTER}: points to missing checkpoint '{name}'")
        return path / name
    raise PkdError(f"{path}: not a pkd checkpoint (no {STATE_FILE} or {POINTER})")


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint ``root/latest.json`` names, or None when there is none yet."""
    root = Path(root)
    return resolve_checkpoint(root) if (root / POINTER).is_file() else None


def prune_checkpoints(root: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` ``step_*`` dirs (never the latest); return them."""
    root = Path(root)
    steps = sorted((int(m.group(1)), p) for p in root.iterdir()
                   if p.is_dir() and (m := _STEP_DIR.match(p.name)))
    latest = latest_checkpoint(root)
    removed = [p for _, p in steps[:-keep_last] if p != latest]
    for p in removed:
        shutil.rmtree(p)
    return removed


def check_config(file: Path, saved: Any, expected: Any, compare: Sequence[str]) -> None:
    """PkdError naming ``file`` and the keys under ``compare`` where the configs differ."""
    if saved is None:
        raise PkdError(f"{file}: checkpoint has no saved config to compare with")
    a, b = _flatten(_jsonable(saved)), _flatten(_jsonable(expected))
    # a field added to the config after the checkpoint was written, and asked for at its
    # default, changes nothing the checkpoint was made with
    defaults = (_flatten(_jsonable(type(expected)())) if dataclasses.is_dataclass(expected)
                else {})
    keys = sorted(k for k in a.keys() | b.keys()
                  if any(k == p or k.startswith(p + ".") for p in compare)
                  and a.get(k, "<missing>") != b.get(k, "<missing>")
                  and not (k not in a and k in defaults and b.get(k) == defaults[k]))
    if keys:
        shown = ", ".join(f"{k}={a.get(k, '<missing>')!r} (expected {b.get(k, '<missing>')!r})"
                          for k in keys[:5])
        more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
        raise PkdError(f"{file}: checkpoint was made with another config: {shown}{more}")


# ----------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict:
    """Python, numpy and torch (CPU, and CUDA when present) RNG states."""
    rng = {"python": random.getstate(), "numpy": np.random.get_state(),
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng_state(rng: dict) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only if this machine has CUDA)."""
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


# ----------------------------------------------------------------------------- files


def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a bare weights file; pickles only through ``torch.load(weights_only=True)``."""
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.suffix not in PICKLE_SUFFIXES:
        raise PkdError(f"{path}: unknown checkpoint file (expected a checkpoint directory, "
                       f".safetensors or a weights-only {'/'.join(PICKLE_SUFFIXES)})")
    if not path.is_file():
        raise PkdError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any failure means: not a plain weights file
        raise PkdError(f"{path}: refusing to unpickle (not a weights-only checkpoint)") from None
    for candidate in (obj, *(obj.get(k) for k in ("state_dict", "model")
                             if isinstance(obj, dict))):
        if isinstance(candidate, dict) and candidate and all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in candidate.items()):
            return candidate
    raise PkdError(f"{path}: no tensor state dict inside (keys 'state_dict' / 'model' / top level)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _skeleton_sha256(skeleton: Any) -> str:
    """sha256 of the canonical JSON of ``skeleton`` (sorted keys; floats round-trip exactly)."""
    text = json.dumps(skeleton, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PkdError(f"{path}: missing checkpoint file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise PkdError(f"{path}: not a valid safetensors file ({err})") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise PkdError(f"{path}: cannot read ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise PkdError(f"{path}: not valid JSON (line {err.lineno})") from None
    if not isinstance(data, dict):
        raise PkdError(f"{path}: expected a JSON object")
    return data


def _write_json(path: Path, data: dict) -> None:
    """Write JSON via a temp file + fsync + ``os.replace`` (readers see old or new, never half)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished dir ``tmp`` to ``target`` (an existing ``target`` is replaced)."""
    if target.exists():  # same step saved again: swap the old one out first
        old = target.with_name(f".tmp-old-{target.name}-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_files(folder: Path) -> None:
    """Flush every file of ``folder`` to disk before the rename makes it visible."""
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _remove_stale_tmp(root: Path) -> None:
    """Remove leftovers of an interrupted save (only one writer per root)."""
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def _jsonable(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    return json.loads(json.dumps(cfg))


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}
