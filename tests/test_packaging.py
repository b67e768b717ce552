"""Every package folder is listed in pyproject.toml, so a non-editable install ships it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"pkd": "core", "pkd.cli": "app/cli", "pkd.demo": "app/demo", "pkd.pipeline": "pipeline",
          "pkd.train": "train", "pkd.stores": "stores"}


def _package_folders() -> set[str]:
    names = set()
    for top, folder in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            names.add(".".join([top, *rel.parts]) if rel.parts else top)
    return names


def test_pyproject_lists_every_package():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert conf["package-dir"] == MAPPED
    missing = _package_folders() - set(conf["packages"])
    assert not missing, f"add to [tool.setuptools] packages: {sorted(missing)}"


def test_library_floors_do_not_import_typer():
    for folder in ("stores", "pipeline", "train", "core"):
        for py in (ROOT / folder).rglob("*.py"):
            text = py.read_text()
            assert "import typer" not in text, f"{py} imports typer (library floors stay CLI-free)"


def test_cli_registers_every_command():
    """Each command module is imported explicitly in pkd.cli, so none can silently go missing."""
    import typer.main

    from pkd.cli import app

    root = typer.main.get_command(app)
    assert set(root.commands) == {"data", "stores", "evaluate", "extract", "pretrain", "train",
                                  "demo", "results", "wise-ft"}
    assert set(root.commands["extract"].commands) == {"foundation", "regions", "teacher",
                                                      "predicted"}
