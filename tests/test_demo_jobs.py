"""`pkd demo --jobs N`: runs side by side in processes, one process per run (file locks), the
same table as one process."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from pkd.cores import usable_cores
from pkd.data.synth import SynthConfig
from pkd.demo import DemoConfig, run_config, run_demo
from pkd.demo.jobs import locked, run_tasks, threads_per_job


def test_threads_per_job_leave_each_process_a_core_for_its_data_thread():
    assert threads_per_job(1, cores=16) == 15  # = the trainer's own choice for one process
    assert threads_per_job(4, cores=16) == 3
    assert threads_per_job(2, cores=2) == 1
    assert threads_per_job(8, cores=2) == 1  # never 0


def test_a_lock_is_exclusive_while_held_and_free_after(tmp_path):
    def try_lock() -> bool:
        fd = os.open(tmp_path / "locks" / "run-seed0.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    with locked(tmp_path, "run-seed0"):
        assert not try_lock()  # another open file (another process) must wait
    assert try_lock()


def test_a_second_holder_waits_for_the_first(tmp_path):
    order = []

    def second():
        with locked(tmp_path, "x"):
            order.append("second")

    with locked(tmp_path, "x"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first done")
    t.join(5)
    assert order == ["first done", "second"]


def test_run_tasks_keeps_the_order_and_raises_the_first_error():
    assert run_tasks([(2, 4), (1, 8), (3, 3)], 2, threads_per_job) == [1, 7, 1]
    assert run_tasks([("7",)], 1, int) == [7]  # jobs=1: in this process
    with pytest.raises(ValueError):
        run_tasks([("1",), ("x",)], 2, int)


def test_a_dead_worker_is_one_line_that_says_resume():
    from pkd.errors import PkdError

    with pytest.raises(PkdError, match="worker process died.*run the same command again") as err:
        run_tasks([()], 2, os.abort)  # the worker process dies on SIGABRT
    assert "\n" not in str(err.value)


def test_jobs_set_the_runs_threads_only_when_parallel(tmp_path):
    from pkd.train.config import TrainConfig

    one = run_config(DemoConfig(out=tmp_path), "baseline", 0)
    assert one.run.threads == TrainConfig().run.threads  # the default: every usable core
    assert run_config(DemoConfig(out=tmp_path, jobs=2), "baseline", 0).run.threads == (
        threads_per_job(2))


TINY_SYNTH = {"train_images": 60, "val_images": 16, "test_images": 20, "test_iid_images": 20,
              "test_comp_images": 20, "detection_train_images": 10, "detection_val_images": 5,
              "caption_images": 40, "pilot_scenes": 400}
TINY = {"seeds": 2, "methods": ("baseline", "distillvlm", "inverted-prior"),
        "pretrain_epochs": 1, "pretrain_tag_epochs": 1, "train_epochs": 1,
        "student_epochs": 1, "teacher_epochs": 1}


def test_two_jobs_train_each_run_once_and_give_the_table_of_one(tmp_path, capfd):
    common = {**TINY, "synth": SynthConfig(**TINY_SYNTH)}
    out = tmp_path / "demo"
    one = run_demo(DemoConfig(out=out, **common))
    shutil.rmtree(out / "draw0" / "runs")  # the same benchmark, stores and models; every run again
    capfd.readouterr()
    two = run_demo(DemoConfig(out=out, jobs=2, **common))
    printed = capfd.readouterr().out
    # distillvlm's seed-s task trains teacher seed s first; each run once, in some process
    for run in ("baseline", "teacher", "distillvlm"):
        for seed in (0, 1):
            assert printed.count(f"training {run} (seed {seed})") == 1, run
            assert (out / "draw0" / "runs" / f"{run}-seed{seed}" / "done").is_file()
    assert "6 (draw, row, seed) tasks in 2 processes" in printed
    assert [(r["method"], r["seed"], r["split"]) for r in two["rows"]] == [
        (r["method"], r["seed"], r["split"]) for r in one["rows"]]  # the table's order
    assert {"baseline-seed1", "teacher-seed1", "distillvlm-seed1", "controls"} <= set(
        two["stage_seconds"])
    if threads_per_job(2) == max(1, usable_cores() - 1):  # same torch threads per run: same numbers
        def scores(rows):
            return [(r["method"], r["seed"], r["split"], r["overall"]) for r in rows]

        assert scores(two["rows"]) == scores(one["rows"])
    again = run_demo(DemoConfig(out=out, jobs=2, **common))  # resumes: nothing left
    assert "[demo] training" not in capfd.readouterr().out
    assert [r["overall"] for r in again["rows"]] == [r["overall"] for r in two["rows"]]


def test_a_killed_jobs_run_resumes_to_the_table_of_an_uninterrupted_one(tmp_path, capfd):
    """Preemption: ``pkd demo --jobs 2`` (parent and both workers) killed with SIGKILL as soon
    as its first run is done; the same command again trains only what was not done and gives
    the table of a run never interrupted (every run trained afresh on the same benchmark and
    stores)."""
    out = tmp_path / "demo"
    script = tmp_path / "demo_run.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\n"
        "from pkd.data.synth import SynthConfig\nfrom pkd.demo import DemoConfig, run_demo\n"
        "if __name__ == '__main__':\n"
        "    run_demo(DemoConfig(out=Path(sys.argv[1]), jobs=2, "
        f"synth=SynthConfig(**{TINY_SYNTH!r}), **{TINY!r}))\n")
    proc = subprocess.Popen([sys.executable, str(script), str(out)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not list((out / "draw0" / "runs").glob("*/done")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no run finished in 10 minutes"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and both workers, mid-way
    finally:
        proc.wait(60)
    done_before = {d.parent.name for d in (out / "draw0" / "runs").glob("*/done")}
    assert done_before and len(done_before) < 6  # killed with work left (6 runs in all)
    capfd.readouterr()
    resumed = run_demo(DemoConfig(out=out, jobs=2, synth=SynthConfig(**TINY_SYNTH), **TINY))
    printed = capfd.readouterr().out
    for run in ("baseline", "teacher", "distillvlm"):
        for seed in (0, 1):
            trained = printed.count(f"training {run} (seed {seed})")
            assert trained == (0 if f"{run}-seed{seed}" in done_before else 1), (run, seed)
            assert (out / "draw0" / "runs" / f"{run}-seed{seed}" / "done").is_file()
    shutil.rmtree(out / "draw0" / "runs")
    fresh = run_demo(DemoConfig(out=out, jobs=2, synth=SynthConfig(**TINY_SYNTH), **TINY))
    assert len(resumed["rows"]) == len(fresh["rows"]) > 0
    assert [(r["method"], r["seed"], r["split"], r["overall"]) for r in resumed["rows"]] == [
        (r["method"], r["seed"], r["split"], r["overall"]) for r in fresh["rows"]]


def test_cli_jobs_option(tmp_path, monkeypatch, capsys):
    import pkd.demo
    from pkd.cli import main

    seen = {}
    monkeypatch.setattr(pkd.demo, "run_demo", lambda cfg: seen.setdefault("cfg", cfg) and {
        "elapsed_s": 0.0, "rows": [], "models": {}})
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert seen.pop("cfg").jobs == 1  # the README's main command: one process
    assert main(["demo", "--out", str(tmp_path), "--jobs", "2"]) == 0
    assert seen.pop("cfg").jobs == 2
    assert main(["demo", "--out", str(tmp_path), "--jobs", "0"]) == 2  # refused, nothing run
    assert "cfg" not in seen and "--jobs" in capsys.readouterr().err


def test_jobs_below_one_are_refused_in_one_line(tmp_path):
    from pkd.errors import PkdError

    with pytest.raises(PkdError, match="jobs must be >= 1, not 0"):
        run_demo(DemoConfig(out=tmp_path, jobs=0))
    assert not (tmp_path / "data").exists()  # refused before anything is written
