"""CI runs the README's first two fenced blocks verbatim: a user's set-up, then the contributor's checks.

CI runs ``.ci/run`` in a fresh clone on a fresh machine, so these tests only check that what it runs
is the README's text (and nothing else), and that the user's block stays a user's block.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def fenced_blocks() -> list[str]:
    """Every fenced block of README.md, read independently of .ci/readme-block."""
    blocks, current = [], None
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("awk") is None, reason="needs bash and awk")
@pytest.mark.parametrize("n", [1, 2])
def test_the_extracted_block_is_the_readme_block(n):
    out = subprocess.run([str(REPO / ".ci" / "readme-block"), str(n)], capture_output=True, text=True, check=True)
    assert out.stdout.rstrip("\n") == fenced_blocks()[n - 1]


def test_ci_runs_blocks_one_and_two_and_nothing_else():
    code = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert code == [
        "set -euo pipefail",
        'cd "$(dirname "$0")/.."',
        "for n in 1 2; do",
        'echo "::: README block $n"',
        'bash -euxo pipefail -c "$(.ci/readme-block "$n")"',
        "done",
    ]


def test_the_first_block_is_a_user_install_that_runs_the_main_job():
    setup = fenced_blocks()[0]
    commands = [line.split("#")[0].strip() for line in setup.splitlines()]
    assert commands[0] == "python3 -m venv .venv && . .venv/bin/activate"
    installs = [c for c in commands if c.startswith("pip install")]
    # from the clone (ropepatch is not on the package index), a runtime's extra, no test tooling
    assert any(re.fullmatch(r"pip install '\.\[transformers[a-z,]*\]'", c) for c in installs), installs
    assert not any(word in setup for word in ("[test]", "pytest", "ruff", "mypy", "-e ")), setup
    assert all(re.fullmatch(r"pip install (torch==[\d.]+|'\.\[[a-z,]+\]')", c) for c in installs), installs
    assert any(c.startswith("ropepatch inspect examples/") for c in commands)
    assert any(c.startswith("ropepatch eval examples/eval_demo/model") for c in commands)
    for path in re.findall(r"examples/[\w./-]+", setup):
        assert (REPO / path).exists(), path


def test_the_second_block_installs_the_test_extra_and_runs_all_four_checks():
    tests = fenced_blocks()[1]
    assert tests.startswith(". .venv/bin/activate && pip install -e '.[test]'")
    for check in ("ruff check .", "ruff format --check .", "mypy", "python -m pytest"):
        assert check in tests, check


def test_measure_it_installs_from_the_clone():
    text = (REPO / "README.md").read_text()
    assert "pip install 'ropepatch[" not in text  # not on the package index
    assert "pip install '.[transformers,eval]'" in text
