"""Fixtures for the llama.cpp tests: tiny GGUF files written on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("gguf", reason="the gguf package writes the test models (pip install 'ropepatch[llamacpp]')")

from llamacpp_models import random_weights, write_gguf  # noqa: E402


@pytest.fixture(scope="session")
def weights():
    return random_weights(0)


@pytest.fixture(scope="session")
def plain_gguf(tmp_path_factory, weights) -> Path:
    """A GGUF converted "as plain RoPE": no scaling keys at all."""
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny-plain.gguf", weights, context_length=256)


@pytest.fixture(scope="session")
def yarn_gguf(tmp_path_factory, weights) -> Path:
    """A GGUF with llama.cpp's YaRN keys (factor 4 over 64 tokens)."""
    keys = {
        "llama.rope.scaling.type": ("string", "yarn"),
        "llama.rope.scaling.factor": ("float32", 4.0),
        "llama.rope.scaling.original_context_length": ("uint32", 64),
    }
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny-yarn.gguf", weights, context_length=256, keys=keys)
