"""``pkd.*`` resolves the way static tools resolve it: folders on the search path, no import hook.

pyright, IDEs and import-graph tools find a module by looking for ``<dir>/pkd/train/loop.py`` in
the directories of the search path (``sys.path``, which site.py extends with the path lines of
``.pth`` files); they never run an import hook. pyproject maps folders to import names
(``package-dir``: ``core/`` is ``pkd``, ``train/`` is ``pkd.train``, ...), which a default
editable install serves with a hook, so those tools lose sight of the package. The README's
install is setuptools' strict editable mode, which puts a tree of links on the path instead.
This test resolves every module of the package that way, without importing anything, and checks
that the file found is the repository's own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from test_floors import FOLDERS, ROOT, module_name

HINT = ("install with setuptools' strict editable mode, as the README does: pip install -c "
        "constraints.txt -e \".[dev]\" --config-settings editable_mode=strict (or make setup)")


def package_modules() -> dict[str, Path]:
    """Every module of the package -> its source file in the repository."""
    found = {}
    for folder in dict.fromkeys(FOLDERS.values()):
        for path in (ROOT / folder).rglob("*.py"):
            found[module_name(path)] = path
    return found


def static_file(module: str, roots: list[str]) -> Path | None:
    """The file a path-based resolver finds for ``module``: the first search-path folder holding
    the top package, then the module's path inside it (a module or a package's ``__init__``)."""
    parts = module.split(".")
    for root in roots:
        top = Path(root) / parts[0]
        if not (top / "__init__.py").is_file():
            continue
        base = top.joinpath(*parts[1:])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None  # the top package shadows later folders, as it does for an import
    return None


def test_every_module_resolves_statically_to_its_source() -> None:
    roots = [p for p in sys.path if p and Path(p).is_dir()]
    modules = package_modules()
    assert "pkd.train.loop" in modules and "pkd.cli" in modules
    unresolved, elsewhere = [], []
    for name, source in sorted(modules.items()):
        found = static_file(name, roots)
        if found is None:
            unresolved.append(name)
        elif os.path.realpath(found) != os.path.realpath(source):
            elsewhere.append(f"{name}: {found} is not {source}")
    assert not unresolved, (f"{len(unresolved)} modules not found on the search path without an "
                            f"import hook (first: {unresolved[:3]}); {HINT}")
    assert not elsewhere, f"modules resolve to other files than the repository's: {elsewhere[:3]}"


def test_the_resolver_finds_a_link_tree_and_refuses_a_hook(tmp_path: Path) -> None:
    # a strict editable install: a folder of links named like the import names
    tree = tmp_path / "tree"
    (tree / "pkd" / "train").mkdir(parents=True)
    (tree / "pkd" / "__init__.py").symlink_to(ROOT / "core" / "__init__.py")
    (tree / "pkd" / "train" / "__init__.py").symlink_to(ROOT / "train" / "__init__.py")
    (tree / "pkd" / "train" / "loop.py").symlink_to(ROOT / "train" / "loop.py")
    found = static_file("pkd.train.loop", [str(tmp_path / "empty"), str(tree)])
    assert found is not None and found.resolve() == (ROOT / "train" / "loop.py").resolve()
    assert static_file("pkd.train", [str(tree)]) == tree / "pkd" / "train" / "__init__.py"
    assert static_file("pkd.train.data", [str(tree)]) is None  # not in the tree
    # the repository root itself holds no `pkd` folder: without the tree nothing resolves
    assert static_file("pkd.train.loop", [str(ROOT)]) is None
