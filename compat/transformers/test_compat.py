"""The transformers adapter on whichever transformers version is installed (4.36 ... 5.x).

Only APIs every tested version has: ``LlamaConfig(rope_scaling=...)``, ``from_pretrained``,
``generate``; the rotary module is called through whichever signature the version has.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch

L0 = 64


def _config(**extra: Any) -> Any:
    from transformers import LlamaConfig

    kwargs = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=4 * L0,
        tie_word_embeddings=False,
    )
    kwargs.update(extra)
    return LlamaConfig(**kwargs)


def _model(config: Any) -> Any:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _rotary(model: Any) -> Any:
    return next(m for m in model.modules() if "RotaryEmbedding" in type(m).__name__)


def _cos_sin(rot: Any, length: int) -> tuple[Any, Any]:
    """cos/sin for positions 0..length-1 as (length, rotary_dim), through the version's signature."""
    params = inspect.signature(type(rot).forward).parameters
    x = torch.zeros(1, 4, length, 16)
    if "position_ids" in params:
        cos, sin = rot(x, torch.arange(length)[None])
    else:
        cos, sin = rot(x, seq_len=length)
    return cos.reshape(length, -1), sin.reshape(length, -1)


def _reference(spec: Any, length: int | None, positions: int) -> tuple[Any, Any]:
    inv, attention = spec.frequencies(length)
    freqs = torch.arange(positions)[:, None].float() * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * attention, emb.sin() * attention


def _check(rot: Any, spec: Any, calls: list[tuple[int, int | None]]) -> None:
    for positions, length in calls:
        cos, sin = _cos_sin(rot, positions)
        ref_cos, ref_sin = _reference(spec, length, positions)
        assert torch.allclose(cos, ref_cos, rtol=0, atol=5e-6), (positions, (cos - ref_cos).abs().max())
        assert torch.allclose(sin, ref_sin, rtol=0, atol=5e-6), (positions, (sin - ref_sin).abs().max())


def test_airophin_part_ntk_with_and_without_ropepatch() -> None:
    import ropepatch

    config = dict(max_position_embeddings=4 * L0, original_max_position_embeddings=L0)
    spec = ropepatch.detect(_config(**config))
    assert spec.method == "part-ntk"
    plain = _rotary(_model(_config(**config)))
    plain_spec = ropepatch.detect(_config(), method="default")
    _check(plain, plain_spec, [(40, None)])  # stock transformers: unscaled
    ropepatch.enable()
    _check(_rotary(_model(_config(**config))), spec, [(40, None), (200, None)])


def test_dynamic_yarn_follows_the_length() -> None:
    import ropepatch

    rope = {"type": "dynamic-yarn", "factor": 4.0, "original_max_position_embeddings": L0}
    ropepatch.enable()
    config = _config(rope_scaling=dict(rope))
    spec = ropepatch.detect(
        _config(max_position_embeddings=4 * L0), method="dynamic-yarn", factor=4.0, original_max_position_embeddings=L0
    )
    rot = _rotary(_model(config))
    _check(rot, spec, [(32, None), (200, 200), (32, None)])


def test_ntk_yarn_static_with_temperature() -> None:
    import ropepatch

    ropepatch.enable(method="ntk-yarn", factor=4.0)
    spec = ropepatch.detect(_config(), method="ntk-yarn", factor=4.0)
    assert spec.attention_factor(None) == pytest.approx(1.138629436111989)
    _check(_rotary(_model(_config())), spec, [(50, None), (200, None)])


def test_yarn_exact_whichever_implementation() -> None:
    """YaRN with an original context: transformers' own where it agrees, ropepatch's where it does not."""
    import ropepatch

    rope = {"type": "yarn", "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0}
    ropepatch.enable()
    rot = _rotary(_model(_config(rope_scaling=dict(rope))))
    spec = ropepatch.detect(_config(rope_scaling=dict(rope)))
    _check(rot, spec, [(100, None)])


def test_save_reload_and_generate(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    import ropepatch

    ropepatch.enable()
    model = _model(_config(original_max_position_embeddings=L0))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    spec = ropepatch.detect(tmp_path)
    _check(_rotary(loaded), spec, [(80, None)])
    ids = torch.randint(0, 128, (1, 60))
    out = loaded.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    again = loaded.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=False)
    assert out.shape == (1, 66) and torch.equal(out, again)


def test_disable_restores_patch_points() -> None:
    import transformers.modeling_utils as mu

    import ropepatch

    init, post = mu.PreTrainedModel.__dict__["__init__"], mu.PreTrainedModel.__dict__["post_init"]
    ropepatch.enable()
    _model(_config(original_max_position_embeddings=L0))
    assert mu.PreTrainedModel.__dict__["__init__"] is not init
    ropepatch.disable()
    assert mu.PreTrainedModel.__dict__["__init__"] is init and mu.PreTrainedModel.__dict__["post_init"] is post
    plain = _rotary(_model(_config(original_max_position_embeddings=L0)))
    _check(plain, ropepatch.detect(_config(), method="default"), [(40, None)])
