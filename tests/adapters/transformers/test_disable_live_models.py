"""A model built under ropepatch with a ropepatch dynamic type keeps working after disable().

transformers looks the rope type up in ROPE_INIT_FUNCTIONS on every length change, so disable()
keeps that entry while such a model lives, and removes it once the model is gone.
"""

from __future__ import annotations

import gc

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import ropepatch  # noqa: E402


def test_dynamic_model_survives_disable_and_entry_goes_with_it():
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    before = set(ROPE_INIT_FUNCTIONS)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
        rope_parameters={
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 16,
            "rope_theta": 10000.0,
        },
    )
    with ropepatch.enabled(method="dynamic-yarn"):
        model = LlamaForCausalLM(cfg).eval()
    rope = model.model.rotary_emb
    key = rope.rope_type
    assert key.startswith("ropepatch_") and key in ROPE_INIT_FUNCTIONS  # kept for the live model
    spec = ropepatch.RopeSpec("dynamic-yarn", rotary_dim=32, factor=4.0, original_max_position_embeddings=16)
    with torch.no_grad():
        model(torch.arange(40).unsqueeze(0) % 64)  # grows past L0 after disable: needs the entry
    expected, attention = spec.frequencies(40)
    torch.testing.assert_close(rope.inv_freq, expected, rtol=2e-6, atol=0)
    assert rope.attention_scaling == pytest.approx(attention)
    del model, rope
    gc.collect()
    ropepatch.enable()
    ropepatch.disable()  # the next restore drops entries no live model uses
    assert set(ROPE_INIT_FUNCTIONS) == before
