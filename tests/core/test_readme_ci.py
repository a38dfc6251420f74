"""The README's first two fenced blocks are the set-up and test commands, and .ci/run runs exactly them."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def blocks() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    return [[line for line in b.splitlines() if line.strip()] for b in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)]


def test_ci_runs_the_readme_blocks_verbatim():
    setup, tests = blocks()[:2]
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    body = ci[ci.index(setup[0]) :]
    assert body == setup + tests
    assert any("pytest" in line for line in tests)
    assert setup[1].startswith("pip install torch==2.13.0")
