"""The README is a short front door and docs/ a user guide that builds, cites only what exists, and quotes
only measured numbers that docs/benchmarks.md records with their command."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BENCHMARKS = DOCS / "benchmarks.md"
MAX_README_LINES = 220
CITED_PATH = re.compile(r"(?<![\w/.$~-])((?:tests|kdistill|scripts|configs|data)/[\w./*-]*)(?:::(\w+))?")
LINK = re.compile(r"\]\(([^)\s]+)\)")
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def cited_paths(text: str) -> list[tuple[str, str | None]]:
    """(path, function or None) for every repository path the text names, e.g. `tests/x.py::test_y` or a
    glob such as `scripts/bench_*.py`."""
    return [(m.group(1).rstrip("."), m.group(2)) for m in CITED_PATH.finditer(text)]


def relative_links(text: str) -> list[str]:
    """Markdown link targets that point into the repository (no scheme, no bare anchor), anchors removed."""
    targets = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    return [t.split("#")[0] for t in targets]


def measured_table(text: str) -> list[str]:
    """The data rows of README.md's table of what the demo measured (the one headed `| measured |`)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| measured |")), None)
    assert start is not None, "README.md has no table headed '| measured | teacher | student |'"
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    assert rows, "README.md's measured table has no rows"
    return rows


def test_docs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, (
        "mkdocs build --strict failed (is mkdocs-material installed? pip install -e '.[test]'):\n"
        + done.stdout[-3000:] + done.stderr[-3000:])
    assert (tmp_path / "site" / "index.html").exists()


def test_readme_is_short():
    count = len(README.read_text().splitlines())
    assert count <= MAX_README_LINES, f"README.md has {count} lines; keep it under {MAX_README_LINES}, move detail to docs/"


def test_no_session_diary():
    found = [f"{page.relative_to(ROOT)}:{n}: {line.strip()}" for page in pages()
             for n, line in enumerate(page.read_text().splitlines(), 1) if re.search(r"session [0-9]", line, re.I)]
    assert not found, "the docs speak of the project, not of how it was built:\n" + "\n".join(found)


def test_every_cited_path_and_link_exists():
    missing = []
    for page in pages():
        text = page.read_text()
        for path, function in cited_paths(text):
            target = ROOT / path
            if not (any(ROOT.glob(path)) if "*" in path else target.exists()):
                missing.append(f"{page.relative_to(ROOT)}: {path}")
            elif function and target.is_file() and not re.search(rf"^\s*(?:async )?def {function}\b",
                                                                   target.read_text(), flags=re.M):
                missing.append(f"{page.relative_to(ROOT)}: {path}::{function}")
        for link in relative_links(text):
            if link and not (page.parent / link).exists():
                missing.append(f"{page.relative_to(ROOT)}: link {link}")
    assert not missing, "cited but not in the repository:\n" + "\n".join(missing)


def test_readme_numbers_are_benchmark_rows():
    benchmarks = BENCHMARKS.read_text()
    numbers = [n for row in measured_table(README.read_text()) for n in NUMBER.findall(row)]
    assert numbers, "README.md's measured table holds no numbers"
    absent = [n for n in numbers if not re.search(rf"(?<![\d.,]){re.escape(n)}(?![\d]|[.,]\d)", benchmarks)]
    assert not absent, f"numbers in README.md's measured table that docs/benchmarks.md does not record: {absent}"


def test_the_checks_catch_what_they_look_for():
    """Each check above can fail: fed a bad page, its helper finds the problem."""
    assert cited_paths("see `tests/nowhere/test_x.py::test_y`.") == [("tests/nowhere/test_x.py", "test_y")]
    assert cited_paths("`~/.cache/kdistill/teachers/` and $KDISTILL_CACHE/kdistill/x") == []
    assert cited_paths("`scripts/bench_*.py`") == [("scripts/bench_*.py", None)]
    assert relative_links("[a](docs/missing.md#top) [b](https://x.org) [c](#here)") == ["docs/missing.md"]
    rows = measured_table("intro\n| measured | teacher | student |\n|---|---|---|\n| speed | 1.5 | 2,000 |\n\nafter")
    assert NUMBER.findall(rows[0]) == ["1.5", "2,000"]
