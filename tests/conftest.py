"""Shared fixtures: the reference material that tests check ropepatch against."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Reference material lives in the repository (tests/data/SOURCES.md says where each file came from):
# a fresh clone runs every test with nothing beside it.
DATA = REPO / "tests" / "data"
CHECKPOINTS = DATA / "checkpoints"
VECTORS = DATA / "reference" / "test-vectors.json"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"reference material missing: {path} (tests/data is part of the repository)")
    return path


@pytest.fixture(scope="session")
def vectors() -> dict:
    return {c["id"]: c for c in json.loads(_require(VECTORS).read_text())["cases"]}


@pytest.fixture(scope="session")
def checkpoints_dir() -> Path:
    return _require(CHECKPOINTS)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No test sees the developer's own ROPEPATCH settings."""
    for var in ("ROPEPATCH", "ROPEPATCH_DISABLED_PLUGINS", "ROPEPATCH_TRACE"):
        monkeypatch.delenv(var, raising=False)
