"""``pkd train --help`` lists every method, one line each, and only the methods that exist."""

from __future__ import annotations

from pkd.cli import main
from pkd.train.method_lines import METHOD_LINES, methods_help
from pkd.train.tasks import METHODS


def test_the_lines_name_exactly_the_methods() -> None:
    assert sorted(METHOD_LINES) == sorted(METHODS)
    assert all(line and "\n" not in line for line in METHOD_LINES.values())
    assert len(methods_help().split("\n\n")) == len(METHODS)


def test_pkd_train_help_lists_them(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for name, line in METHOD_LINES.items():
        assert name in out and line[:40] in out, name
