"""The README and docs/: every relative link resolves inside the repository; the README is short.

A link is markdown's ``[text](target)`` (images ``![alt](target)`` and reference definitions
``[id]: target`` too) outside code: fenced blocks, inline code spans and HTML comments are not
read, so a bare path in backticks is not a link. External targets (``https:``, ``mailto:``, any
scheme) are skipped. A relative target, its ``#anchor`` stripped, must exist, resolved against the
linking file's folder, and stay inside the repository: ``../shared/...`` from the README fails
even where that folder exists on the author's machine. An anchor into a markdown file (or ``#x``
into the file itself) must name one of its headings, slugged as GitHub does.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
COMMENT = re.compile(r"<!--.*?-->", re.S)
LINK = re.compile(r"!?\[[^\[\]]*\]\(\s*(<[^>\n]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>\n]*>|\S+)", re.M)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def doc_files() -> list[Path]:
    """README.md and every markdown file under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _blank(match: re.Match) -> str:
    """What a removed span leaves: its newlines, so line numbers stay right."""
    return "\n" * match.group(0).count("\n")


def prose(text: str) -> str:
    """``text`` without fenced code blocks, HTML comments and inline code spans (line numbers
    kept): what is left is where links can be."""
    return CODE_SPAN.sub(_blank, unfenced(text))


def unfenced(text: str) -> str:
    """``text`` without fenced code blocks and HTML comments (line numbers kept)."""
    lines, fence = [], None
    for line in text.split("\n"):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
            lines.append("")
        elif fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence) \
                    and not line.strip().lstrip(fence[0]):
                fence = None
            lines.append("")
        else:
            lines.append(line)
    return COMMENT.sub(_blank, "\n".join(lines))


def links(text: str) -> list[tuple[int, str]]:
    """``(line number, target)`` of every link in markdown ``text``, outside code."""
    body = prose(text)
    found = [*LINK.finditer(body), *REFERENCE.finditer(body)]
    return sorted((body.count("\n", 0, m.start(1)) + 1, m.group(1).strip("<>")) for m in found)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: links reduced to their text, lower case, everything
    but letters, digits, ``_``, ``-`` and spaces dropped, each space a ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's headings (ATX and setext), repeats numbered ``-1``, ..."""
    seen: dict[str, int] = {}
    out = set()
    lines = unfenced(path.read_text(encoding="utf-8")).split("\n")
    for i, line in enumerate(lines):
        atx = HEADING.match(line)
        setext = (i > 0 and re.fullmatch(r" {0,3}(=+|-+)\s*", line) and lines[i - 1].strip()
                  and not HEADING.match(lines[i - 1]) and "|" not in lines[i - 1])
        if not (atx or setext):
            continue
        base = slug(atx.group(2) if atx else lines[i - 1].strip())
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def dead_links(path: Path, root: Path = ROOT) -> list[str]:
    """``'FILE:LINE: target (why)'`` for each relative link of ``path`` that does not resolve
    inside ``root``."""
    root = root.resolve()
    dead = []
    for line, target in links(path.read_text(encoding="utf-8")):
        if SCHEME.match(target):
            continue
        where, _, anchor = unquote(target).partition("#")
        resolved = (path.parent / where).resolve() if where else path.resolve()
        why = None
        if not resolved.is_relative_to(root):
            why = "outside the repository"
        elif not resolved.exists():
            why = "no such file"
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            why = f"no heading with anchor #{anchor}"
        if why:
            dead.append(f"{path.relative_to(root)}:{line}: {target} ({why})")
    return dead


def test_readme_and_docs_links_resolve_inside_the_repository():
    files = doc_files()
    assert len(files) > 3, files
    dead = [d for f in files for d in dead_links(f)]
    assert not dead, "dead links:\n" + "\n".join(dead)


def test_readme_is_at_most_300_lines():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, (f"README.md has {n} lines (at most {README_MAX_LINES}): "
                                   "move detail to docs/")


def test_the_checker_finds_dead_links_and_reads_no_code(tmp_path):
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "STYLE.md").write_text("# Style\n")
    (repo / "core.py").write_text("")
    (repo / "docs" / "page.md").write_text("# A page\n\n## Two words: here\n")
    readme = repo / "README.md"
    readme.write_text(
        "# Top\n"
        "[ok](core.py) [ok](docs/page.md#two-words-here) ![ok](docs/) [ok](#top)\n"
        "[web](https://example.com/x) [mail](mailto:a@b.c) `[code](missing.py)` "
        "`../shared/STYLE.md`\n"
        "```\n[fenced](missing.py)\n```\n"
        "<!-- [comment](missing.py) -->\n"
        "[escapes](../shared/STYLE.md)\n"
        "[gone](pkd/data/synth_questions.py)\n"
        "[bad anchor](docs/page.md#nowhere) [title](core.py \"a title\")\n"
        "[ref]: missing_ref.md\n")
    dead = dead_links(readme, repo)
    assert [d.split(": ", 1)[1] for d in dead] == [
        "../shared/STYLE.md (outside the repository)",
        "pkd/data/synth_questions.py (no such file)",
        "docs/page.md#nowhere (no heading with anchor #nowhere)",
        "missing_ref.md (no such file)",
    ]
    assert [d.split(":")[1] for d in dead] == ["8", "9", "10", "11"]


def test_slugs_are_githubs():
    assert slug("Reported: data draws 1–3 (quick size, 3 seeds each)") == \
        "reported-data-draws-13-quick-size-3-seeds-each"
    heading = "GPU benchmark (`gpu.py`, run through `gpu.sh`): measured on one H200 (2026-12-04)"
    assert slug(heading) == \
        "gpu-benchmark-gpupy-run-through-gpush-measured-on-one-h200-2026-12-04"
    assert slug("Stores (Zarr v3)") == "stores-zarr-v3"
