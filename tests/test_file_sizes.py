"""Small modules (STYLE.md): no Python file of the project over 400 lines."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("core", "app", "pipeline", "train", "stores", "benchmarks", "tests")
MAX_LINES = 400


def test_no_source_file_is_over_400_lines() -> None:
    files = [p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 100 and ROOT / "train" / "loop.py" in files
    long = {str(p.relative_to(ROOT)): n for p in files
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them by concept): {long}"
