"""spec -> llama.cpp settings: numbers from llama.cpp's documented semantics, refusals for the rest.

The expected values are written from llama.cpp's rules (``rope_freq_scale = 1/s``; with
``ext_factor != 0`` the cos/sin factor is ``attn_factor_key * (1 + 0.1 ln s)``; NTK is
``b * alpha^(d/(d-2))``), not read back from ropepatch.
"""

from __future__ import annotations

import math

import pytest

from ropepatch import RopeSpec
from ropepatch.errors import RopeConfigError
from ropepatch.llamacpp import REFUSALS, LlamaCppUnsupported, llamacpp_flags, translate
from ropepatch.registry import get_registry


def spec(method: str, **kw):
    kw.setdefault("rotary_dim", 128)
    kw.setdefault("rope_theta", 10000.0)
    return RopeSpec(method=method, **kw)


def test_linear_is_freq_scale_one_over_factor() -> None:
    s = translate(spec("linear", factor=4.0))
    kwargs = s.llama_kwargs("llama")
    assert kwargs["rope_scaling_type"] == 1 and kwargs["rope_freq_scale"] == 0.25
    assert s.gguf_keys("llama") == {
        "llama.rope.freq_base": ("float32", 10000.0),
        "llama.rope.scaling.type": ("string", "linear"),
        "llama.rope.scaling.factor": ("float32", 4.0),
    }


def test_ntk_is_a_base_change() -> None:
    s = translate(spec("ntk", params={"alpha": 8.0}))
    assert s.scaling_type == "none" and s.factor is None
    assert s.freq_base == pytest.approx(10000 * 8 ** (128 / 126), rel=1e-12)
    assert s.llama_kwargs("llama")["rope_freq_scale"] == 1.0


def test_yarn_flags_and_arguments() -> None:
    s = translate(
        spec("yarn", factor=4.0, original_max_position_embeddings=4096, params={"beta_fast": 16.0, "beta_slow": 2.0})
    )
    assert s.attn_factor_key is None  # llama.cpp applies 1 + 0.1 ln s itself
    kwargs = s.llama_kwargs("qwen2", context=False)
    assert kwargs == {
        "rope_scaling_type": 2,
        "rope_freq_base": 10000.0,
        "rope_freq_scale": 0.25,
        "yarn_orig_ctx": 4096,
        "yarn_ext_factor": 1.0,
        "yarn_beta_fast": 16.0,
        "yarn_beta_slow": 2.0,
    }
    flags = s.flags("qwen2")
    assert flags[flags.index("-c") + 1] == "16384"
    with pytest.raises(LlamaCppUnsupported, match="betas"):
        s.gguf_keys("qwen2")  # llama.cpp's qwen2 loader reads no beta keys
    assert s.gguf_keys("mistral3")["mistral3.rope.scaling.yarn_beta_fast"] == ("float32", 16.0)


@pytest.mark.parametrize("attention", [1.0, 1.3])
def test_yarn_attention_factor_is_the_gguf_key(attention: float) -> None:
    s = translate(
        spec("yarn", factor=8.0, original_max_position_embeddings=2048, params={"attention_factor": attention})
    )
    key = attention / (1 + 0.1 * math.log(8))
    assert s.attn_factor_key == pytest.approx(key, rel=1e-12)
    assert s.llama_kwargs("llama")["kv_overrides"] == {"llama.rope.scaling.attn_factor": pytest.approx(key)}
    assert f"llama.rope.scaling.attn_factor=float:{key:.10g}" in s.flags("llama")


def test_ntk_by_parts_cancels_the_temperature() -> None:
    s = translate(spec("ntk-by-parts", factor=4.0, original_max_position_embeddings=4096))
    assert s.scaling_type == "yarn" and s.attn_factor_key == pytest.approx(1 / (1 + 0.1 * math.log(4)), rel=1e-12)


def test_ntk_yarn_is_a_base_and_a_constant_factor() -> None:
    s = translate(spec("ntk-yarn", factor=4.0))
    assert s.scaling_type == "none"
    assert s.freq_base == pytest.approx(10000 * 5 ** (128 / 126), rel=1e-12)
    assert s.attn_factor_key == pytest.approx(1 + 0.1 * math.log(4), rel=1e-12)


def test_a_stale_attn_factor_key_is_reset() -> None:
    s = translate(spec("linear", factor=2.0), arch="llama", gguf_attn_factor=1.2)
    assert s.attn_factor_key == 1.0


def test_yarn_log_multiplier_changes_the_base_factor() -> None:
    # deepseek2 with yarn_log_multiplier m: llama.cpp's own factor is mscale(s, m)/mscale(s, m) = 1
    s = translate(
        spec("yarn", factor=40.0, original_max_position_embeddings=4096, params={"attention_factor": 1.0}),
        arch="deepseek2",
        yarn_log_multiplier=0.707,
    )
    assert s.attn_factor_key is None


def test_llama3_needs_the_rope_freqs_tensor() -> None:
    llama3 = spec("llama3", factor=8.0, original_max_position_embeddings=8192)
    with pytest.raises(LlamaCppUnsupported, match="rope_freqs"):
        translate(llama3)
    assert translate(llama3, has_rope_freqs=True).scaling_type == "none"


@pytest.mark.parametrize("method", sorted(REFUSALS))
def test_refusals_name_method_and_alternative(method: str) -> None:
    params = {"short_factor": [1.0] * 64, "long_factor": [2.0] * 64} if method == "longrope" else {}
    if method == "per-dim":
        params = {"freq_factors": [1.0] * 32 + [4.0] * 32}
    s = spec(method, factor=4.0, original_max_position_embeddings=4096, params=params)
    with pytest.raises(LlamaCppUnsupported) as info:
        translate(s)
    assert isinstance(info.value, RopeConfigError)
    assert info.value.method == method and info.value.alternative
    assert f"cannot run RoPE method {method!r}" in str(info.value) and "closest it can run:" in str(info.value)


def test_every_method_translates_or_is_refused() -> None:
    for name in sorted(get_registry().methods):
        params = {"short_factor": [1.0] * 64, "long_factor": [2.0] * 64} if name == "longrope" else {}
        if name == "ntk":
            params = {"alpha": 2.0}
        if name == "per-dim":
            params = {"freq_factors": [1.0] * 32 + [4.0] * 32}
        s = spec(name, factor=4.0, original_max_position_embeddings=4096, params=params)
        flags, note = llamacpp_flags(s)
        assert (flags is None) == (name in REFUSALS), (name, note)
