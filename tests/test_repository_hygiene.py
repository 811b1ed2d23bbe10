"""The repository describes the code, not how it was made: no issue numbers, no machine paths.

Comments and docs name what the code does; history and measurements live in
``benchmarks/README.md`` and ``docs/``. A reader cannot look up an issue number or a path on the
machine that wrote a file, so neither belongs in a tracked file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# built from pieces so that this file does not match itself
FORBIDDEN = {
    "an issue number": re.compile(r"\b" + "iss" + r"ues? #?\d+\b", re.IGNORECASE),
    "a machine path": re.compile("/" + "work/|/" + "home/[a-z]|/" + r"root/(?!\w*\.)"),
    "a workplace tool": re.compile("far" + r"m-(studio|bench)|\." + "library/"),
}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".ipynb", ".txt", ".cfg", ".sh", ".yml", ".yaml", ""}


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [ROOT / name for name in out if name]
    return [p for p in files if p.is_file() and p.suffix in TEXT_SUFFIXES]


def test_the_checks_catch_what_they_are_for():
    assert FORBIDDEN["an issue number"].search("fixed in " + "iss" + "ue 12")
    assert FORBIDDEN["a machine path"].search("see " + "/" + "work/shared/x.md")
    assert not FORBIDDEN["an issue number"].search("Flower #1348 asks for it")


@pytest.mark.parametrize("what", sorted(FORBIDDEN))
def test_no_tracked_file_names(what):
    pattern = FORBIDDEN[what]
    hits = []
    for path in _tracked_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not hits, f"{len(hits)} lines name {what}:\n" + "\n".join(hits[:20])
