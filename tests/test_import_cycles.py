"""No import cycles anywhere in the package (STYLE.md, 'The shape of the house').

The graph has one node per module of the package folders and an edge ``a -> b`` for every
import in ``a``'s source that names ``b`` (or a name inside ``b``), found as
``tests/test_floors.py`` finds them: module level, inside functions, under ``TYPE_CHECKING``,
relative imports resolved, ``importlib.import_module`` / ``__import__`` with a literal name.
A cycle is a strongly connected component of more than one module; the failure lists each
cycle's modules and the import lines that close it.
"""

from __future__ import annotations

import test_floors as floors

Edges = dict[str, dict[str, str]]  # module -> {imported module: "path:line" of the first import}


def import_graph() -> Edges:
    """Every module of the package -> the package modules its source imports."""
    files = floors.library_files()
    graph: Edges = {}
    for module, paths in files.items():
        edges = graph.setdefault(module, {})
        for path in paths:
            names = floors.imported_names(path.read_text(), module, path.name == "__init__.py")
            for name, line in sorted(names.items(), key=lambda item: item[1]):
                target = _known_prefix(name, files)
                if target is not None and target != module:
                    edges.setdefault(target, f"{path.relative_to(floors.ROOT)}:{line}")
    return graph


def _known_prefix(name: str, modules) -> str | None:
    """The longest prefix of ``name`` that is a module (``pkd.x.f`` -> ``pkd.x``), or None."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def cycles(graph: Edges) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, {}))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def describe(cycle: frozenset[str], graph: Edges) -> str:
    """``cycle: a, b`` then one line per import inside it: ``path:line  a -> b``."""
    lines = [f"cycle: {', '.join(sorted(cycle))}"]
    for module in sorted(cycle):
        for target, where in sorted(graph[module].items()):
            if target in cycle:
                lines.append(f"  {where}  {module} -> {target}")
    return "\n".join(lines)


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (STYLE.md: no import cycles):\n" + "\n".join(
        describe(c, graph) for c in found)


def test_the_graph_covers_the_whole_package():
    graph = import_graph()
    assert set(graph) == set(floors.library_files())
    for module in ("pkd", "pkd.cli", "pkd.demo", "pkd.stores", "pkd.pipeline.detectors",
                   "pkd.train.loop", "pkd.train.tasks.pkd", "pkd.data.vqa"):
        assert module in graph, module


def test_a_cycle_through_a_lazy_import_is_found(tmp_path, monkeypatch):
    """A fake tree: a three-module cycle closed inside a function, a relative import, and a
    one-way import that is not a cycle."""
    fake = {
        "train/a.py": "from pkd.train.b import f\n",
        "train/b.py": "def f():\n    from . import c\n",
        "train/c.py": "import pkd.train.a\n",
        "train/d.py": "from pkd.train.a import x\n",
        "core/errors.py": "",
    }
    for rel, text in fake.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(floors, "ROOT", tmp_path)
    graph = import_graph()
    assert cycles(graph) == [frozenset({"pkd.train.a", "pkd.train.b", "pkd.train.c"})]
    text = describe(cycles(graph)[0], graph)
    assert "train/b.py:2  pkd.train.b -> pkd.train.c" in text
    assert "pkd.train.d" not in text
