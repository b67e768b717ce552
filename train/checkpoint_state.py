"""A checkpoint's ``state`` as JSON plus tensors, and back (``state.json``'s ``SKELETON``).

``SKELETON`` is ``state`` as JSON with each tensor replaced by ``{"__tensor__": NAME}`` (its name
in ``state.safetensors``), tuples by ``{"__tuple__": [...]}``, numpy arrays by
``{"__ndarray__": [...], "dtype": ...}`` and dicts with non-string keys (an optimizer's
``state`` is keyed by int) by ``{"__items__": [[key, value], ...]}``, so
``optimizer.load_state_dict`` gets back exactly what ``state_dict()`` gave. The files, their
checksums and atomic writes are :mod:`pkd.train.checkpoint`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pkd.errors import PkdError

TENSOR_FILE = "state.safetensors"  # the file the tensors of a state are saved in


def encode_state(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """JSON skeleton of ``obj``; its tensors go into ``tensors`` under dotted path names."""
    if isinstance(obj, torch.Tensor):
        name = path if path not in tensors else f"{path}#{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_state(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"__items__": [[encode_state(k, tensors, path),
                               encode_state(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [encode_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint {path}: cannot store a {type(obj).__name__}")


def decode_state(obj: Any, tensors: dict[str, torch.Tensor] | None) -> Any:
    """Inverse of :func:`encode_state`; with ``tensors=None`` tensor slots decode to None."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        if tensors is None:
            return None
        if obj["__tensor__"] not in tensors:
            raise PkdError(f"{TENSOR_FILE}: missing tensor '{obj['__tensor__']}'")
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    if "__tuple__" in obj:
        return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {decode_state(k, tensors): decode_state(v, tensors) for k, v in obj["__items__"]}
    return {k: decode_state(v, tensors) for k, v in obj.items()}


def unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU contiguous tensors, cloning any that share storage (safetensors refuses those)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return out
