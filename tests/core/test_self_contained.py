"""The repository is self-contained: no test, script or doc reaches outside it.

A user's or packager's clone has nothing beside it, so a path into the maintainers' reference folder
beside the checkout (or any parent of the repository) would make tests fail or, worse, skip there.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# a path that climbs out of the repository, or the reference folder the maintainers keep beside it
# the folder's name is assembled, so this file does not itself match the repository-wide check it mirrors
_FOLDER = "sha" + "red"
OUTSIDE = re.compile(
    rf"""(\.\./{_FOLDER}|["'/]{_FOLDER}/(reference|checkpoints)|ROPEPATCH_{_FOLDER.upper()}|REPO\.parent\b)"""
)
CHECKED = ("tests", "compat", "benchmarks", "examples", "ropepatch", "docs", ".ci", "plugins")


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", *CHECKED],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        names = out.splitlines()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an sdist): walk the folders
        names = [str(p.relative_to(REPO)) for d in CHECKED for p in (REPO / d).rglob("*") if p.is_file()]
    return [
        REPO / n
        for n in names
        if (REPO / n).is_file() and Path(n).suffix in {".py", ".md", ".sh", ".toml", ".json", ""}
    ]


def test_no_file_refers_to_a_path_outside_the_repository():
    offenders = []
    for path in _tracked_files():
        if path.name == "SOURCES.md" or path == Path(__file__).resolve():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert not offenders, "these lines reach outside the repository:\n" + "\n".join(offenders)


def test_the_detector_catches_what_it_should():
    # the check itself must be able to fail
    for line in (
        'SHARED = REPO.parent / "shared" / "reference"',
        f"open('../{_FOLDER}/checkpoints/x.json')",
        "REPO.parent / 'x'",
    ):
        assert OUTSIDE.search(line), line
    for line in ("self.shared.model = None", "tests/data/reference/test-vectors.json"):
        assert not OUTSIDE.search(line), line


@pytest.mark.parametrize("name", ["reference/test-vectors.json", "checkpoints/INDEX.md"])
def test_reference_data_is_in_the_repository(name):
    assert (REPO / "tests" / "data" / name).is_file()


def test_test_file_names_are_unique():
    # tests/ folders are not packages (pytest's default import mode): two test files with one basename
    # stop the whole suite at collection ("import file mismatch")
    names: dict[str, list[str]] = {}
    for path in (REPO / "tests").rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    clashes = {name: paths for name, paths in names.items() if len(paths) > 1}
    assert not clashes, clashes
