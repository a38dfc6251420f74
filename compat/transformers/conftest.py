"""Compatibility tests: run unchanged against every transformers version in compat/run.py."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="compat tests need transformers")
torch = pytest.importorskip("torch", reason="compat tests need torch")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _disabled() -> object:
    import ropepatch

    ropepatch.disable()
    yield
    ropepatch.disable()
