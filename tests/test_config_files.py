"""Config files that extend one another and name variables (pkd.train.config_files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pkd.errors import PkdError
from pkd.train.config_files import deep_merge, read_config_file, substitute


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_child_merges_over_its_parent_key_by_key_and_replaces_lists(tmp_path: Path) -> None:
    write(tmp_path / "_base.yaml", "vars: {seed: 0, draw: d0}\nneeds: [a]\n"
                                   "run: {seed: '${seed}', epochs: 3}\n"
                                   "method: {rubi: {branch_dims: [1, 2, 3]}}\n")
    write(tmp_path / "mid.yaml", "extends: _base.yaml\nvars: {draw: d1}\nrun: {epochs: 5}\n")
    child = read_config_file(write(tmp_path / "row.yaml", "extends: mid.yaml\nneeds: [b]\n"
                                   "method: {rubi: {branch_dims: [7]}}\n"))
    assert child.vars == {"seed": 0, "draw": "d1"} and child.needs == ["b"]
    assert child.data == {"run": {"seed": "${seed}", "epochs": 5},
                          "method": {"rubi": {"branch_dims": [7]}}}
    assert read_config_file(tmp_path / "mid.yaml").needs == ["a"]  # inherited when not set


def test_variables_keep_their_type_when_whole_and_format_inside_strings() -> None:
    data = {"run": {"seed": "${seed}", "out_dir": "${draw}/runs/${row}-seed${seed}"},
            "list": ["${seed}", "x${seed}"], "n": 3, "plain": "no vars"}
    out = substitute(data, {"seed": 2, "draw": "/d", "row": "lmh"}, "f.yaml")
    assert out == {"run": {"seed": 2, "out_dir": "/d/runs/lmh-seed2"}, "list": [2, "x2"], "n": 3,
                   "plain": "no vars"}
    with pytest.raises(PkdError, match=r"^f.yaml: \$\{epochs\} has no value \(give "
                                       r"vars.epochs=VALUE\)$"):
        substitute({"run": {"epochs": "${epochs}"}}, {}, "f.yaml")


def test_resolved_names_the_row_and_lets_callers_override_vars(tmp_path: Path) -> None:
    row = write(tmp_path / "lmh.yaml", "vars: {seed: 0}\nrun: {out_dir: 'r/${row}-seed${seed}'}\n")
    assert read_config_file(row).resolved() == {"run": {"out_dir": "r/lmh-seed0"}}
    assert read_config_file(row).resolved({"seed": 4}) == {"run": {"out_dir": "r/lmh-seed4"}}


@pytest.mark.parametrize("files, match", [
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"}, r"'extends' loops"),
    ({"a.yaml": "extends: missing.yaml\n"}, r"missing.yaml: cannot read config"),
    ({"a.yaml": "extends: [b.yaml]\n"}, r"'extends' must be a file name"),
    ({"a.yaml": "vars: [1, 2]\n"}, r"'vars' must be a mapping"),
    ({"a.yaml": "needs: teacher\n"}, r"'needs' must be a list of row names"),
    ({"a.yaml": "run: [\n"}, r"invalid YAML at line"),
    ({"a.yaml": "- 1\n"}, r"a config file is a mapping of sections"),
])
def test_bad_files_are_one_line_errors(tmp_path: Path, files: dict, match: str) -> None:
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(PkdError, match=match) as err:
        read_config_file(tmp_path / "a.yaml")
    assert "\n" not in str(err.value)


def test_deep_merge_leaves_its_inputs_alone() -> None:
    base, over = {"a": {"b": 1, "c": 2}}, {"a": {"c": 3}, "d": 4}
    assert deep_merge(base, over) == {"a": {"b": 1, "c": 3}, "d": 4}
    assert base == {"a": {"b": 1, "c": 2}} and over == {"a": {"c": 3}, "d": 4}
