"""`pkd demo` on the command line: options, and the printed table (never a cut name)."""

from __future__ import annotations

import pytest

from pkd.data.synth import SynthConfig
from pkd.demo import results_table

pytest.register_assert_rewrite("demo_tables")
from demo_tables import LONG, fake_results, markdown_rows  # noqa: E402


def test_cli_prints_the_table_of_a_finished_demo(tmp_path, monkeypatch, capsys):
    """``pkd demo`` prints one row per (method, split) with the prior share and model size."""
    import pkd.demo
    from pkd.cli import main

    rows = [{"method": m, "seed": s, "split": sp, "overall": 50.0 + s, "perAnswerType":
             {"number": 40.0, "other": 30.0, "yes/no": 60.0}, "ms_per_question": 0.02,
             "prior": 70.0 - s, "prior_gold": 5.0 if sp == "test" else 60.0}
            for m in ("baseline", "pkd") for s in (0, 1) for sp in ("test", "test_iid")]
    results = {"elapsed_s": 1.0, "rows": rows, "models": {"baseline": 1234, "pkd": 5678}}
    seen = {}

    def fake_run_demo(cfg):
        seen["cfg"] = cfg
        return results

    monkeypatch.setattr(pkd.demo, "run_demo", fake_run_demo)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["demo", "--out", str(tmp_path), "--seeds", "2", "--ablations"]) == 0
    out = capsys.readouterr().out
    assert seen["cfg"].seeds == 2 and "pkd-memory" in seen["cfg"].methods
    # 50 and 51: hw = t_{0.975, 1} * 0.7071 / sqrt(2) = 6.35; pkd - baseline = 0 on both seeds
    assert "50.50 ± 6.35" in out and "69.5" in out and "5,678" in out
    assert "vs baseline +0.00 [+0.00, +0.00]" in out
    assert "gold test 5.0%, test_iid 60.0%" in out


def test_cli_methods_option_and_unknown_method(tmp_path, monkeypatch, capsys):
    import pkd.demo
    from pkd.cli import main

    seen = {}
    monkeypatch.setattr(pkd.demo, "run_demo", lambda cfg: seen.setdefault("cfg", cfg) and {
        "elapsed_s": 0.0, "rows": [], "models": {}})
    main(["demo", "--out", str(tmp_path), "--methods", "pkd, pkd-mkd3"])
    assert seen["cfg"].methods == ("pkd", "pkd-mkd3")
    monkeypatch.undo()
    assert main(["demo", "--out", str(tmp_path), "--methods", "pkd-typo"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'pkd-typo'" in err and len(err.strip().splitlines()) == 1


def test_cli_preset_option_sets_size_seeds_and_rows(tmp_path, monkeypatch):
    import pkd.demo
    from pkd.cli import main
    from pkd.demo import FULL_METHODS

    seen = {}
    monkeypatch.setattr(pkd.demo, "run_demo", lambda cfg: seen.setdefault("cfg", cfg) and {
        "elapsed_s": 0.0, "rows": [], "models": {}})
    assert main(["demo", "--out", str(tmp_path), "--preset", "full"]) == 0
    cfg = seen.pop("cfg")
    assert (cfg.preset, cfg.seeds, cfg.methods) == ("full", 3, FULL_METHODS)
    assert cfg.data_seeds == (10, 11, 12)
    assert cfg.synth.train_images == SynthConfig.preset("full").train_images
    assert main(["demo", "--out", str(tmp_path), "--preset", "full", "--seeds", "2"]) == 0
    assert seen["cfg"].seeds == 2
    seen.pop("cfg")
    assert main(["demo", "--out", str(tmp_path), "--data-seeds", "0,4"]) == 0
    assert seen["cfg"].data_seeds == (0, 4)
    assert main(["demo", "--out", str(tmp_path), "--preset", "huge"]) == 2


def test_piped_demo_prints_full_names_at_any_width(tmp_path, monkeypatch):
    """In CI / a pipe (not a terminal) at 40 columns: every name whole, no ``±`` for one seed."""
    from typer.testing import CliRunner

    import pkd.demo
    from pkd.cli import app

    for seeds in (1, 2):
        results = fake_results(seeds=seeds)
        monkeypatch.setattr(pkd.demo, "run_demo", lambda cfg, r=results: r)
        got = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--seeds", str(seeds)],
                                 env={"COLUMNS": "40", "TERM": "dumb"})
        assert got.exit_code == 0, got.output
        out = got.output
        assert "…" not in out and ("±" in out) == (seeds > 1)
        table = markdown_rows(out)
        assert {(r["method"], r["split"]) for r in table} == {
            (m, sp) for m in LONG for sp in ("test", "test_iid")}
        assert "gold test 5.0%, test_iid 60.0%" in out


@pytest.mark.parametrize("width", [200, 40])
def test_terminal_table_never_cuts_a_name(width):
    """On a terminal: a rich table when it fits whole, else the plain table — never ``basel…``."""
    import io

    from rich.console import Console

    from pkd.cli.report import print_table

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=width, color_system=None)
    print_table(*results_table(fake_results(seeds=2)), console=console)
    out = buf.getvalue()
    assert "…" not in out and "± " in out
    assert ("┃" in out) == (width == 200)  # rich's box only when every cell fits
    for name in (*LONG, "test_iid"):
        assert name in out
    if width == 200:
        assert max(len(ln) for ln in out.splitlines()) <= width
