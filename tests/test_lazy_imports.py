"""Imports inside functions only for optional or heavy backends, each with its reason on the line.

An import inside a function (at any depth) is allowed when it adds a HEAVY name (below) that the
module does not already load at import time, and its first line carries a trailing comment that
names one of the names it defers (``# torch: loaded only when a run trains``). Anything else
belongs at module level. What a module loads at import time is its module-level import closure:
its own module-level imports (``if TYPE_CHECKING:`` blocks excluded), its parent packages'
``__init__`` (importing ``pkd.a.b`` runs ``pkd.a`` first), and, transitively, the same for every
``pkd`` module those name. A ``pkd`` module is heavy when that closure reaches a HEAVY name.

Checked statically with the helpers of ``tests/test_floors.py``: nothing is imported. Moving an
import to module level cannot create an import cycle, since ``tests/test_import_cycles.py``
already counts the imports inside functions. ``ALLOWED`` lists the few light imports that stay
inside their function anyway, each with its reason.
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

import test_floors as floors

# Third-party modules an import inside a function may defer (a name covers its submodules), each
# with its reason: the import cost measured on the dev machine (one core; best of 3, of 7 near
# the bar; `python -c "import time; t = time.perf_counter(); <import>; print(time.perf_counter()
# - t)"`), or an optional / platform backend. The bar is 5 ms (1.5 % of `pkd --help`, 340 ms):
# the light ones below it are 1 ms or less. The standard library is never heavy (fcntl is there
# as a platform backend).
HEAVY = {
    "torch": "1485 ms",
    "transformers": "770 ms (`from transformers import AutoModel`: 2.2 s)",
    "detectron2": "optional backend, not on PyPI, not installed here",
    "torchvision": "optional backend (roi_align), not installed here",
    "safetensors.torch": "loads torch (1.3 s); `safetensors` alone is 1 ms and light",
    "distributed": "397 ms",
    "dask": "131 ms (`dask.distributed`: 398 ms)",
    "zarr": "234 ms",
    "huggingface_hub": "223 ms for `snapshot_download` (the package loads its names lazily)",
    "matplotlib": "197 ms",
    "numcodecs": "124 ms",
    "h5py": "91 ms",
    "scipy": "88 ms (`scipy.stats`: 700 ms); a dev-only dependency",
    "numpy": "63 ms",
    "typer": "38 ms; the command line's framework (every pkd.cli module loads it anyway)",
    "rich": "26-41 ms for rich.console / rich.table / rich.progress (the package alone: 4 ms)",
    "PIL": "12 ms for PIL.Image, 17 ms with ImageDraw and ImageFont",
    "yaml": "13 ms",
    "tokenizers": "10 ms",
    "fcntl": "POSIX only: loaded where used, so the modules that use it import everywhere",
}
# Light, measured the same way: safetensors (SafetensorError) 0.9 ms.

# A light import that must stay inside its function: (importing module, imported name) -> why.
# The static graph has no cycle (tests/test_import_cycles.py counts lazy imports too), so a cycle
# is never the reason; late binding, where a test patches the name in its module, can be.
ALLOWED = {
    ("pkd.cli.demo", "pkd.demo.run_demo"): "late binding: tests/test_demo_cli.py and "
    "tests/test_demo_jobs.py patch pkd.demo.run_demo and run `pkd demo` through pkd.cli.main",
}


@dataclass(frozen=True)
class LazyImport:
    path: Path
    line: int
    module: str  # the importing module
    text: str  # the statement's first line, stripped
    names: tuple[str, ...]  # what it imports: ``from a import b`` -> ``a.b``
    adds: tuple[str, ...]  # HEAVY names it loads that the module does not load at import time
    comment: str  # the trailing comment of its first line, without '#', or ''

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(floors.ROOT)}:{self.line}"


def _heavy_key(name: str) -> str | None:
    """The HEAVY entry covering the third-party module ``name``, if any."""
    for key in HEAVY:
        if name == key or name.startswith(key + "."):
            return key
    return None


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _statement_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The module names one import statement may load (as ``floors.imported_names`` finds them)."""
    return list(floors.imported_names(ast.unparse(node), module, is_package))


def _own_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> tuple[str, ...]:
    """``import a.b`` -> ``a.b``; ``from a import b, c`` -> ``a.b``, ``a.c`` (relative resolved)."""
    if isinstance(node, ast.Import):
        return tuple(alias.name for alias in node.names)
    base = min(_statement_names(node, module, is_package), key=len)
    return tuple(f"{base}.{alias.name}" for alias in node.names)


def _split(tree: ast.Module) -> tuple[list[ast.AST], list[ast.AST]]:
    """(module-level imports, imports inside functions): nodes run at import time, minus
    ``if TYPE_CHECKING:`` bodies, versus nodes inside a function or lambda at any depth."""
    top, inner = [], []
    work: list[tuple[ast.AST, bool]] = [(tree, False)]
    while work:
        node, in_function = work.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            (inner if in_function else top).append(node)
            continue
        if not in_function and _is_type_checking(node):
            work += [(child, False) for child in node.orelse]
            continue
        scope = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
        nested = in_function or isinstance(node, scope)
        work += [(child, nested) for child in ast.iter_child_nodes(node)]
    return top, inner


def _comments(source: str) -> dict[int, str]:
    """Line -> its comment's text (without '#')."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.string.lstrip("#").strip()
    return found


class Package:
    """The package's modules, their module-level imports and what each loads at import time."""

    def __init__(self) -> None:
        self.files = floors.library_files()
        self.trees = {path: ast.parse(path.read_text()) for paths in self.files.values()
                      for path in paths}
        self.direct: dict[str, set[str]] = {}  # module -> pkd modules + HEAVY keys it names
        for module, paths in self.files.items():
            named = self.direct.setdefault(module, set())
            for path in paths:
                top, _ = _split(self.trees[path])
                for node in top:
                    named |= self.targets(node, module, path)
        self._loads: dict[str, frozenset[str]] = {}

    def targets(self, node: ast.Import | ast.ImportFrom, module: str, path: Path) -> set[str]:
        """The pkd modules (with their parent packages) and HEAVY keys ``node`` loads."""
        found = set()
        for name in _statement_names(node, module, path.name == "__init__.py"):
            if name == "pkd" or name.startswith("pkd."):
                while name and name not in self.files:  # pkd.x.f -> pkd.x
                    name = name.rpartition(".")[0]
                while name:
                    found.add(name)
                    name = name.rpartition(".")[0]
            elif (key := _heavy_key(name)) is not None:
                found.add(key)
        return found

    def loads(self, module: str) -> frozenset[str]:
        """HEAVY keys loaded by importing ``module`` (its parents and module-level closure)."""
        if module not in self._loads:
            seen, work, heavy = {module}, [module], set()
            parent = module.rpartition(".")[0]
            while parent:
                if parent not in seen:
                    seen.add(parent)
                    work.append(parent)
                parent = parent.rpartition(".")[0]
            while work:
                for name in self.direct.get(work.pop(), ()):
                    if name in self.files:
                        if name not in seen:
                            seen.add(name)
                            work.append(name)
                    else:
                        heavy.add(name)
            self._loads[module] = frozenset(heavy)
        return self._loads[module]

    def lazy_imports(self) -> list[LazyImport]:
        """Every import inside a function, with the HEAVY names it adds to its module's."""
        found = []
        for module, paths in self.files.items():
            for path in paths:
                _, inner = _split(self.trees[path])
                if not inner:
                    continue
                source = path.read_text()
                lines, comments = source.splitlines(), _comments(source)
                for node in sorted(inner, key=lambda n: n.lineno):
                    adds = set()
                    for name in self.targets(node, module, path):
                        adds |= self.loads(name) if name in self.files else {name}
                    adds -= self.loads(module)
                    found.append(LazyImport(
                        path, node.lineno, module, lines[node.lineno - 1].strip(),
                        _own_names(node, module, path.name == "__init__.py"),
                        tuple(key for key in HEAVY if key in adds), comments.get(node.lineno, "")))
        return found


def _names_a_reason(lazy: LazyImport) -> bool:
    """The comment names one of the HEAVY names the import defers (``safetensors.torch``: either
    part), beyond a bare ``noqa``."""
    text = lazy.comment.lower()
    return any(part.lower() in text for key in lazy.adds for part in key.split("."))


def problems(package: Package | None = None) -> list[str]:
    """One readable line per import inside a function that breaks the rule."""
    found = []
    for lazy in (package or Package()).lazy_imports():
        head = f"{lazy.where} ({lazy.module}) `{lazy.text}`"
        if not lazy.adds:
            if not all((lazy.module, name) in ALLOWED for name in lazy.names):
                found.append(f"{head}: move it to module level (it loads nothing heavy that "
                             f"{lazy.module} does not load at import time)")
            elif not lazy.comment:
                found.append(f"{head}: say why it is lazy in a trailing comment on its first "
                             f"line ({ALLOWED[lazy.module, lazy.names[0]]})")
        elif not _names_a_reason(lazy):
            found.append(f"{head}: say why it is lazy in a trailing comment on its first line "
                         f"that names what it defers, one of {', '.join(lazy.adds)} "
                         f"(e.g. `# {lazy.adds[0]}: loaded only when ...`)")
    return found


def test_imports_inside_functions_are_heavy_and_say_why():
    found = problems()
    assert not found, ("imports inside functions only for optional or heavy backends, each with "
                       "its reason on the line (tests/test_lazy_imports.py):\n" + "\n".join(found))


def test_the_scan_sees_the_package():
    lazy = Package().lazy_imports()
    assert len({item.path for item in lazy}) > 10
    assert any(item.module.startswith("pkd.cli.") and "torch" in item.adds for item in lazy)


def test_every_allowed_import_is_still_there():
    lazy = {(item.module, name) for item in Package().lazy_imports() for name in item.names}
    assert set(ALLOWED) <= lazy, f"stale ALLOWED entries: {set(ALLOWED) - lazy}"


def test_rules_on_a_fake_tree(tmp_path, monkeypatch):
    """Light lazy imports fail, heavy ones need a comment naming what they defer, a name the
    module already loads is not heavy for it, parents and TYPE_CHECKING count as they run."""
    fake = {
        "core/__init__.py": "",
        "core/light.py": "import json\n",
        "core/heavy.py": "import torch\n",
        "core/uses_np.py": "import numpy\n",
        "train/__init__.py": "import numpy\n",
        "train/a.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    import torch\n"
            "def f():\n"
            "    from pkd import light\n"                      # 5: light pkd module
            "    import json\n"                                # 6: standard library
            "    from pkd.heavy import x  # torch: lazy\n"     # 7: fine
            "    from pkd.heavy import (  # torch: lazy\n"     # 8: fine, comment on line 1
            "        y,\n"
            "    )\n"
            "    import matplotlib\n"                          # 11: no comment
            "    import torch  # noqa\n"                       # 12: comment names nothing
            "    from pkd.uses_np import z  # numpy: lazy\n"   # 13: the parent loads numpy
            "    def g():\n"
            "        from rich.table import Table  # rich: 40 ms\n"  # 15: fine, nested
        ),
    }
    for rel, text in fake.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(floors, "ROOT", tmp_path)
    found = problems(Package())
    lines = sorted(int(line.split(":")[1].split(" ")[0]) for line in found)
    assert lines == [5, 6, 11, 12, 13], found
    assert "train/a.py:5 (pkd.train.a) `from pkd import light`: move it to module level" in found[0]
    assert "names what it defers, one of matplotlib" in found[2]
