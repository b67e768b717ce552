"""Config files that extend one another and name variables (the demo's rows, ``configs/rows/``).

Beside the sections of :class:`pkd.train.config.TrainConfig`, a config file may hold three keys
that are read here and never reach the config:

- ``extends: PARENT.yaml`` — the parent file (relative to this one) is read first and this file
  merged over it: mappings key by key, anything else (lists included) replaced. Chains are
  allowed, loops refused.
- ``vars: {NAME: VALUE}`` — the values of ``${NAME}`` in any string of the file (a string that
  is exactly ``${NAME}`` takes the value's own type, so ``epochs: ${epochs}`` stays an int).
  ``${row}`` is the stem of the file given on the command line. A parent's ``vars`` are the
  defaults of its children; ``pkd train FILE vars.NAME=VALUE`` (or the demo) sets one.
- ``needs: [ROW, ...]`` — the rows whose runs this one reads (the demo trains them first).

No key runs code: this is ``yaml.safe_load`` plus string substitution.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pkd.errors import PkdError

META_KEYS = ("extends", "vars", "needs")  # keys of a config file that are not config
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class ConfigFile:
    """A config file with its parents merged in: the config sections and the three meta keys."""

    path: Path
    data: dict  # the config sections, ``${NAME}`` not yet substituted
    vars: dict[str, Any] = field(default_factory=dict)  # defaults of the variables
    needs: list[str] = field(default_factory=list)  # rows this one reads the runs of

    def resolved(self, variables: dict[str, Any] | None = None) -> dict:
        """The config sections with every ``${NAME}`` replaced (``variables`` over ``vars``;
        ``row``: the file's stem)."""
        values = {**self.vars, "row": self.path.stem, **(variables or {})}
        return substitute(self.data, values, str(self.path))


def read_yaml(path: Path) -> dict:
    """The mapping in the YAML file ``path`` (empty file: ``{}``); one-line errors."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise PkdError(f"{path}: cannot read config ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise PkdError(f"{path}: invalid YAML{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        text = repr(data)
        text = text if len(text) <= 40 else text[:37] + "..."
        raise PkdError(f"{path}: a config file is a mapping of sections, got "
                       f"{type(data).__name__} {text}")
    return data


def read_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> ConfigFile:
    """``path`` with its ``extends`` chain merged (the parent first, each child over it)."""
    path = Path(path)
    if path.resolve() in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path.resolve()))
        raise PkdError(f"{path}: 'extends' loops ({chain})")
    raw = read_yaml(path)
    parent = raw.pop("extends", None)
    own_vars, own_needs = raw.pop("vars", None) or {}, raw.pop("needs", None)
    if not isinstance(own_vars, dict):
        raise PkdError(f"{path}: 'vars' must be a mapping of NAME: VALUE")
    if own_needs is not None and not (isinstance(own_needs, list)
                                      and all(isinstance(n, str) for n in own_needs)):
        raise PkdError(f"{path}: 'needs' must be a list of row names")
    if parent is None:
        return ConfigFile(path, raw, dict(own_vars), list(own_needs or []))
    if not isinstance(parent, str):
        raise PkdError(f"{path}: 'extends' must be a file name, got {type(parent).__name__}")
    base = read_config_file(path.parent / parent, (*_seen, path.resolve()))
    needs = base.needs if own_needs is None else list(own_needs)
    return ConfigFile(path, deep_merge(base.data, raw), {**base.vars, **own_vars}, needs)


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``: mappings key by key, other values replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def substitute(data: Any, values: dict[str, Any], source: str) -> Any:
    """``data`` with ``${NAME}`` replaced by ``values[NAME]`` in every string, recursively."""
    if isinstance(data, dict):
        return {k: substitute(v, values, source) for k, v in data.items()}
    if isinstance(data, list):
        return [substitute(v, values, source) for v in data]
    if not isinstance(data, str) or "${" not in data:
        return data
    for name in _VAR.findall(data):
        if name not in values:
            raise PkdError(f"{source}: ${{{name}}} has no value (give vars.{name}=VALUE)")
    whole = _VAR.fullmatch(data)
    if whole:  # the value keeps its type
        return values[whole.group(1)]
    return _VAR.sub(lambda m: str(values[m.group(1)]), data)
