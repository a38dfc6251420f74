"""Fixtures for the evaluation tests: a tiny randomly initialised byte-level Llama saved to disk."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="the evaluation tests run a torch model")
pytest.importorskip("transformers", reason="the evaluation tests build a transformers Llama")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_tiny import make_tiny_llama  # noqa: E402

# tiny models: one thread avoids two contending threads on the 2-core CI machine
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved with a byte-level tokenizer, as a checkpoint folder."""
    from ropepatch.evaluation.byte_tokens import save_byte_level_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama().save_pretrained(path)
    save_byte_level_tokenizer(path)
    return path


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """A small ASCII text (one byte per token) long enough for a few 64-token windows."""
    body = ("def f(x):\n    return x * 2 + 1\n\nclass A:\n    pass\n" * 20)[:600]
    path = tmp_path / "text.txt"
    path.write_text(body)
    return path


@pytest.fixture(autouse=True)
def _disabled() -> Any:
    """Every test starts and ends with ropepatch disabled."""
    import ropepatch

    ropepatch.disable()
    yield
    ropepatch.disable()
