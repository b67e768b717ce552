"""The one method boundary: ``METHODS`` maps ``method.name`` to a Method, and nothing else in the
library compares method names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pkd.errors import PkdError
from pkd.train.config import MethodConfig, TrainConfig
from pkd.train.config_load import config_from_dict
from pkd.train.tasks import METHODS, Method, method_of

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("stores", "pipeline", "train", "core")  # below the app (app/ names rows by method)


def test_every_method_is_keyed_by_its_name():
    assert set(METHODS) == {"baseline", "teacher-adapt", "distillvlm", "pkd-predictors", "pkd",
                            "question-only", "rubi", "lmh", "kd-id", "lwf-oracle",
                            "pkd-vlm-predictors", "pkd-vlm"}
    for name, method in METHODS.items():
        assert isinstance(method, Method) and method.name == name


def test_unknown_method_is_one_line_naming_the_known_ones():
    with pytest.raises(PkdError, match=r"method.name='css': not implemented yet \(available: "
                                       r"baseline, teacher-adapt, distillvlm, pkd-predictors, pkd, "
                                       r"question-only, rubi, lmh, kd-id, lwf-oracle, "
                                       r"pkd-vlm-predictors, pkd-vlm\)"):
        method_of(TrainConfig(method=MethodConfig(name="css")))
    with pytest.raises(PkdError, match=r"method.name: 'css' is not one of baseline, "):
        config_from_dict({"method": {"name": "css"}})


def _compares_method_name(tree: ast.AST) -> list[int]:
    """Lines of ``<x>.method.name <op> ...`` / ``... <op> <x>.method.name`` comparisons."""

    def is_name(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "name"
                and isinstance(node.value, ast.Attribute) and node.value.attr == "method")

    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Compare)
            and any(is_name(n) for n in (node.left, *node.comparators))]


def test_no_library_module_dispatches_on_method_names():
    """Dispatch lives in ``METHODS`` only."""
    found = []
    for folder in LIBRARY:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            lines = _compares_method_name(ast.parse(path.read_text()))
            found += [f"{rel}:{n}" for n in lines]
    assert not found, f"method.name compared outside pkd.train.tasks.METHODS: {found}"


def test_the_scan_sees_a_comparison():
    assert _compares_method_name(ast.parse("if cfg.method.name == 'pkd':\n    pass\n")) == [1]
    assert _compares_method_name(ast.parse("x = 'pkd' in cfg.method.name\n")) == [1]
