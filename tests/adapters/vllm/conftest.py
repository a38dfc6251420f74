"""Fixtures for the vLLM adapter tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

VECTORS = Path(__file__).resolve().parents[2] / "data" / "reference" / "test-vectors.json"


@pytest.fixture
def vector():
    """``vector(id)``: the expected values of one case of tests/data/reference/test-vectors.json."""
    if not VECTORS.is_file():
        pytest.fail(f"tests/data/reference/test-vectors.json not found at {VECTORS}")
    cases = {c["id"]: c for c in json.loads(VECTORS.read_text())["cases"]}
    return lambda case_id: cases[case_id]


@pytest.fixture
def state(monkeypatch):
    """A real enabled state with no overrides (``$ROPEPATCH`` cleared); disabled afterwards."""
    import ropepatch

    monkeypatch.delenv("ROPEPATCH", raising=False)
    monkeypatch.delenv("MAX_TOTAL_TOKENS", raising=False)
    with ropepatch.enabled() as st:
        yield st
