"""From a YAML file and dotted ``key=value`` overrides to a checked :class:`TrainConfig`, and back.

``pkd train CONFIG.yaml model.hidden_size=256 optim.lr=1e-4`` becomes
``load_config("CONFIG.yaml", ["model.hidden_size=256", "optim.lr=1e-4"])``:

1. the YAML file is read with ``yaml.safe_load`` (no YAML tags that run code) and merged over the
   dataclass defaults (:mod:`pkd.train.config`);
2. each override ``a.b.c=VALUE`` is merged on top, ``VALUE`` parsed with ``yaml.safe_load`` too
   (so ``true``, ``3``, ``[0.9, 0.98]``, ``null`` mean what they mean in YAML);
3. every value is checked against the field's annotation. An unknown key raises
   :class:`PkdError` naming the file (or the override) and the key, with close-match suggestions;
   a value of the wrong type names the field and the expected type;
4. the finished config is checked as a whole (:func:`validate_config`, also run by the trainer
   on a config built in code): each field's allowed values, declared with the field
   (``lr: float = allowed(1e-3, gt=0)``, an :class:`~pkd.train.config.Allowed` in its metadata),
   then the rules between fields (heads dividing the width, foundation stores for foundation
   features, ...) and the method's own (:meth:`~pkd.train.tasks.method.Method.problems`, asked
   through :data:`pkd.train.tasks.METHODS`). A value outside is one line naming the source, the
   key, the value and the range, e.g. ``override 'optim.lr=-1': optim.lr: -1.0 is not > 0``,
   before the run folder is touched.

The code is generic over dataclasses. Coercions (nothing else is coerced): an ``int`` is accepted
for a ``float`` field, and so is a numeric string such as ``1e-4`` (PyYAML reads ``1e-4`` without
a dot as a string); a YAML list is accepted for a ``tuple`` field.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from pkd.errors import PkdError
from pkd.train.config import TrainConfig
from pkd.train.config_files import read_config_file
from pkd.train.tasks import METHODS

# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (if any; its ``extends`` chain merged and its
    ``${NAME}`` variables set, ``vars.NAME=VALUE`` overrides first: :mod:`pkd.train.config_files`),
    then each dotted ``key=value``; the result is checked as a whole by :func:`validate_config`
    (a later override may mend an earlier value). Errors name the file or override that set the
    offending key."""
    cfg, origin = TrainConfig(), {}
    variables = {}  # vars.NAME=VALUE overrides set a file's ${NAME} (pkd.train.config_files)
    for text in overrides:
        if text.startswith("vars."):
            variables.update(_override_to_dict(text)["vars"])
    overrides = [text for text in overrides if not text.startswith("vars.")]
    if path is not None:
        data = read_config_file(Path(path)).resolved(variables)
        cfg = merge_dict(cfg, data, source=str(path))
        origin.update(dict.fromkeys(_dotted_keys(data), str(path)))
    elif variables:
        raise PkdError("vars.NAME=VALUE overrides need a config file that uses ${NAME}")
    for text in overrides:
        data = _override_to_dict(text)
        cfg = merge_dict(cfg, data, source=f"override '{text}'")
        origin.update(dict.fromkeys(_dotted_keys(data), f"override '{text}'"))
    validate_config(cfg, origin, default_source=str(path) if path is not None else "config")
    return cfg


def config_from_dict(data: dict, source: str = "<config>") -> TrainConfig:
    """A validated :class:`TrainConfig` from a (possibly partial) nested dict."""
    cfg = merge_dict(TrainConfig(), data, source=source)
    validate_config(cfg, default_source=source)
    return cfg


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config dataclass (tuples become lists, ready for JSON / YAML)."""
    return _plain(dataclasses.asdict(cfg))


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config atomically as JSON (``.json``) or YAML (``.yaml`` / ``.yml``)."""
    path = Path(path)
    data = config_to_dict(cfg)
    if path.suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    elif path.suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(data, sort_keys=False)
    else:
        raise PkdError(f"{path}: config files end in .json, .yaml or .yml")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def merge_dict(base: Any, data: Any, source: str, where: str = "") -> Any:
    """A copy of dataclass ``base`` with the values of nested dict ``data`` checked and set."""
    if not isinstance(data, dict):
        raise PkdError(f"{source}: {where or 'config'}: expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(type(base))
    names = [f.name for f in dataclasses.fields(base)]
    changes = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise PkdError(f"{source}: unknown key '{dotted}'{_suggest(str(key), names, where)}")
        changes[key] = _coerce(value, hints[key], getattr(base, key), source, dotted)
    return dataclasses.replace(base, **changes)


def _dotted_keys(data: Any, prefix: str = "") -> list[str]:
    """Every section and leaf key of a nested dict, dotted (``a``, ``a.b``, ...)."""
    keys = []
    if isinstance(data, dict):
        for k, v in data.items():
            dotted = f"{prefix}{k}"
            keys += [dotted, *_dotted_keys(v, dotted + ".")]
    return keys


_OVERRIDE = re.compile(r"^([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*)=(.*)$", re.DOTALL)


def _override_to_dict(text: str) -> dict:
    """``a.b.c=VALUE`` -> ``{"a": {"b": {"c": yaml.safe_load(VALUE)}}}``."""
    match = _OVERRIDE.match(text.strip())
    if match is None:
        raise PkdError(f"override '{text}': expected dotted key=value, e.g. optim.lr=1e-4")
    try:
        value = yaml.safe_load(match.group(2)) if match.group(2).strip() else ""
    except yaml.YAMLError:
        raise PkdError(f"override '{text}': value is not valid YAML") from None
    for part in reversed(match.group(1).split(".")):
        value = {part: value}
    return value


# ----------------------------------------------------------------------------- value checks


def validate_config(cfg: TrainConfig, origin: dict[str, str] | None = None,
                    default_source: str = "config") -> TrainConfig:
    """``cfg`` when every value is allowed; else a one-line :class:`PkdError`
    ``"<source>: <key>: <value> is not <allowed>"`` (e.g. ``optim.lr: -1.0 is not > 0``) for
    the first offending key.

    Each field's :class:`Allowed` (its metadata) is checked, walking every nested section, then
    the rules between fields (:func:`_cross_field_problems`). ``origin`` maps dotted keys to the
    file or override that set them (the message's source; ``default_source`` otherwise).
    """
    problems = _field_problems(cfg) or _cross_field_problems(cfg)
    if problems:
        key, text = problems[0]
        raise PkdError(f"{_origin_of(key, origin or {}, default_source)}: {key}: {text}")
    return cfg


def _field_problems(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, problem) of each value outside its field's :class:`Allowed`."""
    out = []
    for f in dataclasses.fields(obj):
        key, value = f"{prefix}{f.name}", getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _field_problems(value, key + ".")
            continue
        rule = f.metadata.get("allowed")
        if rule is None:
            continue
        items = list(enumerate(value)) if isinstance(value, (tuple, list)) else [(None, value)]
        for i, v in items:
            text = rule.problem(v)
            if text is not None:
                out.append((key if i is None else f"{key}[{i}]", f"{v!r} {text}"))
    return out


def _cross_field_problems(cfg: TrainConfig) -> list[tuple[str, str]]:
    """Rules between fields (each field is already within its own range); the method's own
    rules come from its :class:`~pkd.train.tasks.method.Method` (``problems``)."""
    r, d, m = cfg.run, cfg.data, cfg.method
    method = METHODS.get(m.name)
    if method is None:
        return [("method.name", f"{m.name!r} is not one of {', '.join(METHODS)}")]
    out = []
    zero_shot = cfg.model.arch == "vlm" and cfg.model.init == "pretrained"
    if r.max_steps == 0 and r.epochs == 0 and not zero_shot:
        out.append(("run.epochs", "0 is not >= 1 (with run.max_steps=0 the run counts epochs; "
                                  "0 = the zero-shot row needs a pre-trained model.arch=vlm)"))
    for key, mc in method.built_models(cfg):
        if mc.arch == "fusion" and mc.hidden_size % mc.num_heads:
            out.append((f"{key}.num_heads", f"{mc.num_heads} does not divide "
                                            f"{key}.hidden_size={mc.hidden_size}"))
        if mc.arch == "fusion" and mc.max_positions < d.max_question_length + 2:
            out.append((f"{key}.max_positions",
                        f"{mc.max_positions} is not >= data.max_question_length + 2 = "
                        f"{d.max_question_length + 2} ([CLS], the question, [SEP])"))
        if mc.arch == "vlm" and not mc.foundation:
            out.append((f"{key}.foundation", "is empty: arch vlm needs the pre-trained model "
                        "(an LxmertForPreTraining hub id or folder)"))
        if mc.arch == "vlm" and mc.use_foundation_features:
            out.append((f"{key}.use_foundation_features", "true does not apply to arch vlm "
                        "(the model is the foundation model)"))
        if mc.foundation_inputs == "predicted" and not mc.use_foundation_features:
            out.append((f"{key}.foundation_inputs", "'predicted' needs "
                        f"{key}.use_foundation_features=true (they are D's foundation inputs)"))
        if mc.use_foundation_features and mc.foundation_inputs == "predicted" and not d.predicted:
            out.append((f"{key}.foundation_inputs", "'predicted' needs data.predicted (a store "
                        "of pkd extract predicted, frozen predictors)"))
        for store in ("foundation_image", "foundation_text"):
            if mc.use_foundation_features and mc.foundation_inputs == "real" \
                    and not getattr(d, store):
                out.append((f"{key}.use_foundation_features",
                             f"true needs data.{store} (a store of pkd extract foundation)"))
    return out + method.problems(cfg)


def _origin_of(key: str, origin: dict[str, str], default: str) -> str:
    """The source that set ``key`` or the nearest section above it."""
    parts = key.split("[", 1)[0].split(".")
    for n in range(len(parts), 0, -1):
        source = origin.get(".".join(parts[:n]))
        if source is not None:
            return source
    return default


# ----------------------------------------------------------------------------- type checks


def _coerce(value: Any, tp: Any, current: Any, source: str, where: str) -> Any:
    """``value`` checked against annotation ``tp`` (merged into ``current`` for dataclasses)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        base = current if dataclasses.is_dataclass(current) else tp()
        return merge_dict(base, value, source, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, current, source, where)
            except PkdError:
                continue
        raise _type_error(value, tp, source, where)
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise _type_error(value, tp, source, where)
    if origin in (tuple, list):
        return _coerce_sequence(value, tp, source, where)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _type_error(value, tp, source, where)
        return {k: _coerce(v, args[1], None, source, f"{where}.{k}") for k, v in value.items()}
    return _coerce_scalar(value, tp, source, where)


def _coerce_sequence(value: Any, tp: Any, source: str, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise _type_error(value, tp, source, where)
    if origin is list or (len(args) == 2 and args[1] is Ellipsis):
        items = [_coerce(v, args[0], None, source, f"{where}[{i}]") for i, v in enumerate(value)]
    elif len(value) == len(args):
        items = [_coerce(v, a, None, source, f"{where}[{i}]") for i, (v, a) in
                 enumerate(zip(value, args, strict=True))]
    else:
        raise _type_error(value, tp, source, where)
    return list(items) if origin is list else tuple(items)


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _coerce_scalar(value: Any, tp: Any, source: str, where: str) -> Any:
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (bool, str):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"config field {where}: unsupported annotation {tp!r}")
    raise _type_error(value, tp, source, where)


def _type_error(value: Any, tp: Any, source: str, where: str) -> PkdError:
    return PkdError(f"{source}: {where}: expected {_type_name(tp)}, got {_kind(value)}")


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
    if origin in (tuple, list):
        return f"a list of {_type_name(args[0])}"
    if origin is dict:
        return f"a mapping of str to {_type_name(args[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping (section)"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _kind(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _suggest(key: str, names: list[str], where: str) -> str:
    """`` (did you mean 'x'?)`` from the same section, else from any section."""
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    if close:
        prefix = f"{where}." if where else ""
        return " (did you mean " + " or ".join(f"'{prefix}{c}'" for c in close) + "?)"
    leaves = _all_keys(TrainConfig())
    close = [d for d in leaves if difflib.get_close_matches(key, [d.rsplit(".", 1)[-1]],
                                                               cutoff=0.8)][:3]
    return " (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)" if close else ""


def _all_keys(obj: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):
        dotted = f"{prefix}{f.name}"
        keys.append(dotted)
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(_all_keys(value, dotted + "."))
    return keys


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
