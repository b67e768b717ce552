"""The floors of the house hold: no library module imports one it must not (STYLE.md).

    app       pkd.cli, pkd.demo                 (may import anything)
    middle    pkd.pipeline | pkd.train          (never each other, never the app)
    bottom    pkd.stores, pkd.data, pkd.hf, pkd.errors, pkd.progress, pkd.prefetch, pkd.cores
              (never the middle, never the app)

Any other module (``pkd.probe``, the ``pkd`` package itself) never imports the app either.

Checked statically: every ``import`` / ``from ... import`` anywhere in a file (module level, inside
functions, under ``TYPE_CHECKING``), relative imports resolved, plus ``importlib.import_module`` /
``__import__`` calls with a literal name. Nothing is imported, so the test is fast and sees the
lazy imports that a run would only reach on some code path.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# import name -> folder, as pyproject's package-dir maps them (the app's folders before core's)
FOLDERS = {"pkd.cli": "app/cli", "pkd.demo": "app/demo", "pkd.stores": "stores",
           "pkd.pipeline": "pipeline", "pkd.train": "train", "pkd": "core"}

APP = ("pkd.cli", "pkd.demo")
ENTRY = ("pkd.__main__",)  # `python -m pkd`: runs the CLI
PIPELINE, TRAIN = ("pkd.pipeline",), ("pkd.train",)
BOTTOM = ("pkd.stores", "pkd.data", "pkd.hf", "pkd.errors", "pkd.progress", "pkd.prefetch",
          "pkd.cores", "pkd.stats", "pkd.roi")
# floor (module prefixes) -> module prefixes it must not import; on top of these, no module
# outside APP and ENTRY (the pkd package itself and any new one included) imports APP
RULES = {
    BOTTOM: PIPELINE + TRAIN,
    PIPELINE: TRAIN,
    TRAIN: PIPELINE,
}
DYNAMIC = {"import_module", "__import__"}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def module_name(path: Path) -> str:
    """``stores/reader.py`` -> ``pkd.stores.reader``; ``app/cli/__init__.py`` -> ``pkd.cli``."""
    for top, folder in FOLDERS.items():
        if path.is_relative_to(ROOT / folder):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([top, *parts])
    raise ValueError(f"{path} is in no package folder")


def imported_names(source: str, module: str, is_package: bool = False) -> dict[str, int]:
    """Every module name ``source`` (the text of ``module``) may import -> its first line.

    Lazy imports count. ``from a import b`` yields ``a`` and ``a.b`` (``b`` may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    names: dict[str, int] = {}
    for node in ast.walk(ast.parse(source)):
        found = []
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from ..x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in DYNAMIC and isinstance(node.args[0].value, str):
                found = [node.args[0].value]
        for name in found:
            names[name] = min(names.get(name, node.lineno), node.lineno)
    return names


def library_files() -> dict[str, list[Path]]:
    """Every source file of the package folders, keyed by module name."""
    files: dict[str, list[Path]] = {}
    for folder in sorted(set(FOLDERS.values())):
        for path in sorted((ROOT / folder).rglob("*.py")):
            files.setdefault(module_name(path), []).append(path)
    return files


def violations() -> list[str]:
    """One line per offending import statement: ``path:line (module) imports name``."""
    found = []
    for module, paths in library_files().items():
        banned = tuple(p for floor, bans in RULES.items() if _under(module, floor) for p in bans)
        if not _under(module, APP + ENTRY):
            banned += APP
        for path in paths:
            lines: dict[int, str] = {}
            names = imported_names(path.read_text(), module, path.name == "__init__.py")
            for name, line in sorted(names.items(), key=lambda item: len(item[0])):
                if _under(name, banned):
                    lines.setdefault(line, name)  # the shortest banned name of the statement
            found += [f"{path.relative_to(ROOT)}:{line} ({module}) imports {name}"
                      for line, name in sorted(lines.items())]
    return found


def test_no_library_module_imports_across_or_above_its_floor():
    found = violations()
    assert not found, "floor violations (STYLE.md, 'The shape of the house'):\n" + "\n".join(found)


@pytest.mark.parametrize("prefix", BOTTOM + PIPELINE + TRAIN + APP + ENTRY)
def test_every_named_module_has_files_to_check(prefix):
    assert any(_under(m, (prefix,)) for m in library_files()), f"no source files for {prefix}"


def test_module_names_follow_the_package_dirs():
    assert module_name(ROOT / "stores" / "reader.py") == "pkd.stores.reader"
    assert module_name(ROOT / "train" / "models" / "__init__.py") == "pkd.train.models"
    assert module_name(ROOT / "core" / "data" / "vqa.py") == "pkd.data.vqa"
    assert module_name(ROOT / "core" / "errors.py") == "pkd.errors"
    assert module_name(ROOT / "app" / "cli" / "train.py") == "pkd.cli.train"
    assert module_name(ROOT / "app" / "demo" / "probe.py") == "pkd.demo.probe"


def test_the_scanner_sees_lazy_relative_and_dynamic_imports():
    source = '''
import numpy as np
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from pkd.cli import app
def f():
    from pkd.train.loop import fit
    import pkd.demo
class C:
    def g(self):
        from ..train import config
        from . import sibling
        importlib.import_module("pkd.pipeline.extract")
        return __import__("pkd.cli.train")
'''
    names = imported_names(source, "pkd.stores.reader")
    for name in ("numpy", "pkd.cli.app", "pkd.train.loop.fit", "pkd.demo", "pkd.train.config",
                 "pkd.stores.sibling", "pkd.pipeline.extract", "pkd.cli.train"):
        assert name in names, name
    assert "pkd.stores.sibling" in imported_names("from . import sibling", "pkd.stores", True)


def test_a_bad_import_is_reported(tmp_path, monkeypatch):
    """The check fails on each kind of violation (a fake tree with one bad import per floor)."""
    bad = {
        "pipeline/stages.py": "def f():\n    from pkd.train.config import ModelConfig\n",
        "train/loop.py": "from pkd.pipeline import runner\n",
        "stores/reader.py": "from ..train import data\n",
        "core/data/vqa.py": "def f():\n    import pkd.pipeline.extract\n",
        "core/errors.py": "from pkd.cli import app\n",
        "train/models/fusion.py": "def g():\n    from pkd import demo\n",
        "core/progress.py": "import pkd.cli.report\n",
        "app/cli/train.py": "from pkd.train.loop import fit\n",  # the app may import anything
        "core/__main__.py": "from pkd.cli import main\n",
    }
    for rel, text in bad.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    found = violations()
    assert len(found) == 7, found
    assert not any("app/cli" in line or "__main__" in line for line in found)
