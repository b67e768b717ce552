"""File-system errors are one line, checked before long work, and never leave half a file:
built on a real full or read-only tmpfs (skipped where mounting is not permitted)."""

from __future__ import annotations

import errno
import json

import pytest
from fs_fixtures import fill, read_only, tmpfs

from pkd.cli import main
from pkd.errors import PkdError
from pkd.fsio import check_writable, os_error_line, write_atomic, write_json


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def evaluation_files(folder) -> list[str]:
    """Questions, annotations and results of one question, as ``pkd evaluate`` options."""
    q = {"questions": [{"image_id": 1, "question": "Is it?", "question_id": 10}]}
    a = {"annotations": [{"question_id": 10, "image_id": 1, "question_type": "is it",
                          "answer_type": "yes/no", "multiple_choice_answer": "yes",
                          "answers": [{"answer": "yes", "answer_id": i + 1} for i in range(10)]}]}
    paths = [folder / name for name in ("q.json", "a.json", "r.json")]
    for path, data in zip(paths, (q, a, [{"question_id": 10, "answer": "yes"}]), strict=True):
        path.write_text(json.dumps(data))
    return ["evaluate", "--questions", str(paths[0]), "--annotations", str(paths[1]),
            "--results", str(paths[2])]


def test_a_full_disk_leaves_the_old_file_and_names_the_path(tmp_path):
    with tmpfs(tmp_path / "disk", size_kib=64) as disk:
        path = write_json(disk / "metrics.json", {"old": 1})
        fill(disk)
        with pytest.raises(OSError) as err:
            write_atomic(path, "x" * 200_000)
        assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
        assert json.loads(path.read_text()) == {"old": 1}
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "metrics.json"]
        assert os_error_line(err.value) == (f"{path}: no space left on the device "
                                            "(free space or choose another output)")


def test_check_writable_refuses_read_only_files_and_full_disks(tmp_path):
    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        with pytest.raises(PkdError, match="read-only file system"):
            check_writable(ro / "out")
    with tmpfs(tmp_path / "full", size_kib=16) as full:
        fill(full)
        with pytest.raises(PkdError, match="no space left"):
            check_writable(full)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PkdError, match="is a file"):
        check_writable(tmp_path / "file")


def test_evaluate_refuses_an_output_it_cannot_write_before_scoring(tmp_path, capsys):
    args = evaluation_files(tmp_path)
    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        assert main([*args, "--out", str(ro / "m.json")]) == 2
        assert "not writable: read-only file system" in one_error_line(capsys)
    (tmp_path / "folder").mkdir()
    assert main([*args, "--out", str(tmp_path / "folder")]) == 2
    assert "--out is a folder" in one_error_line(capsys)
    assert main([*args, "--bootstrap", "1"]) == 2
    assert "at least 100 resamples" in one_error_line(capsys)


def test_demo_refuses_an_output_that_is_a_file(tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    assert main(["demo", "--out", str(tmp_path / "out")]) == 2
    assert "is a file, a folder was expected" in one_error_line(capsys)


def test_a_full_disk_mid_command_is_one_line_naming_the_output(tmp_path, capsys):
    with tmpfs(tmp_path / "disk", size_kib=32) as disk:
        out = disk / "bench"
        assert main(["data", "synth", str(out), "--train-images", "40"]) == 2
        err = one_error_line(capsys)
        assert "no space left on the device" in err and str(out) in err


def test_extract_into_a_read_only_file_system_is_one_line(synth_data, tiny_resnet_dir, tmp_path,
                                                          capsys):
    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        code = main(["extract", "regions", "--data", str(synth_data), "--splits", "val",
                     "--out", str(ro / "r.zarr"), "--detector", "grid:2",
                     "--backbone", str(tiny_resnet_dir)])
        assert code == 2
        assert "read-only file system" in one_error_line(capsys)


pytest_plugins = ["fixtures_extract"]  # synth_data (session fixture)


def test_evaluate_refuses_a_read_only_run_before_predicting(tmp_path, capsys, monkeypatch):
    import torch
    from train_fixtures import make_benchmark, make_regions_store, train_overrides

    import pkd.train.predict as predict

    torch.set_num_threads(1)
    data = make_benchmark(tmp_path / "data")
    regions = make_regions_store(data, tmp_path / "regions.zarr")
    run = tmp_path / "run"
    assert main(["train", *train_overrides(data, regions, run)]) == 0
    called = []
    monkeypatch.setattr(predict, "predict", lambda *a, **k: called.append(1))
    capsys.readouterr()
    with read_only(run):
        assert main(["evaluate", "--checkpoint", str(run)]) == 2
    assert "run folder is not writable: read-only file system" in one_error_line(capsys)
    assert not called  # refused before any prediction was computed
