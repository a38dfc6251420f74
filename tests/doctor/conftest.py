"""Fixtures for the doctor tests: the checkpoint corpus (tests/data/checkpoints) and a clean ropepatch state."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers", reason="the doctor's transformers probe needs transformers installed")

import torch  # noqa: E402

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doctor_paths import CORPUS  # noqa: E402


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.fail("the checkpoint corpus tests/data/checkpoints is missing")
    return CORPUS


@pytest.fixture(autouse=True)
def _disabled() -> Any:
    import ropepatch

    ropepatch.disable()
    yield
    ropepatch.disable()
