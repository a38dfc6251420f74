"""The llama-cpp-python adapter on the real ``llama_cpp.Llama`` (a tiny GGUF, CPU).

What llama.cpp does with the arguments is checked numerically in test_llamacpp_numeric.py; here:
which arguments reach ``Llama``'s context parameters, that the caller's win, refusals, and disable().
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest

import ropepatch
from ropepatch.errors import RopeConfigError, RopepatchWarning

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (pip install 'ropepatch[llamacpp]')"
)


@pytest.fixture(autouse=True)
def _off():
    ropepatch.disable()
    yield
    ropepatch.disable()


def load(path: Path, **kwargs):
    return llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False, **kwargs)


def test_enable_passes_the_spec_and_disable_restores(plain_gguf: Path) -> None:
    original = llama_cpp.Llama.__init__
    ropepatch.enable(method="yarn", factor=4, original_max_position_embeddings=64)
    assert llama_cpp.Llama.__init__ is not original
    llm = load(plain_gguf)
    p = llm.context_params
    assert p.rope_scaling_type == llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN
    assert p.rope_freq_scale == pytest.approx(0.25) and p.yarn_orig_ctx == 64 and p.yarn_ext_factor == 1.0
    assert p.rope_freq_base == 10000.0
    llm.close()
    ropepatch.disable()
    assert llama_cpp.Llama.__init__ is original
    llm = load(plain_gguf)
    assert llm.context_params.rope_freq_scale == 0.0  # llama-cpp-python's "from the model"
    llm.close()


def test_callers_arguments_win_and_kv_overrides_merge(plain_gguf: Path) -> None:
    ropepatch.enable(method="yarn", factor=4, original_max_position_embeddings=64, attention_factor=1.0)
    llm = load(plain_gguf, rope_freq_scale=0.5, kv_overrides={"llama.context_length": 128})
    p = llm.context_params
    assert p.rope_freq_scale == pytest.approx(0.5)  # the caller's
    assert p.rope_scaling_type == llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN  # ropepatch's
    assert llm.kv_overrides["llama.context_length"] == 128
    assert llm.kv_overrides["llama.rope.scaling.attn_factor"] == pytest.approx(1 / (1 + 0.1 * math.log(4)))
    llm.close()


def test_plain_gguf_without_overrides_is_left_alone(plain_gguf: Path) -> None:
    ropepatch.enable()
    llm = load(plain_gguf)
    assert llm.context_params.rope_freq_scale == 0.0 and llm.kv_overrides is None
    llm.close()


# the strict refusal raises before Llama.__init__ runs; llama-cpp-python's __del__ then trips on the
# half-built object (its own AttributeError, reported by pytest as unraisable)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_inexpressible_warns_and_keeps_the_gguf(plain_gguf: Path) -> None:
    ropepatch.enable(method="dynamic", factor=4, original_max_position_embeddings=64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llm = load(plain_gguf)
    assert llm.context_params.rope_freq_scale == 0.0
    assert any("cannot run RoPE method 'dynamic'" in str(w.message) for w in caught if w.category is RopepatchWarning)
    llm.close()
    ropepatch.disable()
    ropepatch.enable(method="dynamic", factor=4, original_max_position_embeddings=64, strict=True)
    with pytest.raises(RopeConfigError, match="closest it can run"):
        load(plain_gguf)
