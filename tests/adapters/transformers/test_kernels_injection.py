"""``enable(kernels=True)`` wraps a family's apply_rotary_pos_emb; CPU tensors keep transformers' path."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import ropepatch  # noqa: E402


def _tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        rope_parameters={
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 32,
            "rope_theta": 10000.0,
        },
    )
    return cfg, LlamaForCausalLM


def test_kernels_wrap_and_restore_and_cpu_logits_unchanged():
    from transformers.models.llama import modeling_llama

    original = modeling_llama.apply_rotary_pos_emb
    cfg, cls = _tiny()
    ids = torch.randint(0, 64, (1, 48), generator=torch.Generator().manual_seed(1))
    with ropepatch.enabled():
        torch.manual_seed(0)
        plain = cls(cfg).eval()
        assert modeling_llama.apply_rotary_pos_emb is original  # default off
        with torch.no_grad():
            ref = plain(ids).logits
    with ropepatch.enabled(kernels=True):
        torch.manual_seed(0)
        model = cls(cfg).eval()
        wrapped = modeling_llama.apply_rotary_pos_emb
        assert wrapped is not original and wrapped.__wrapped__ is original
        with torch.no_grad():
            out = model(ids).logits
    assert modeling_llama.apply_rotary_pos_emb is original  # disable() restored the very object
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # CPU tensors: transformers' own function


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the kernel route is taken for CUDA tensors only")
def test_kernels_route_cuda_tensors():
    cfg, cls = _tiny()
    ids = torch.randint(0, 64, (1, 48), device="cuda")
    with ropepatch.enabled():
        torch.manual_seed(0)
        ref = cls(cfg).cuda().eval()(ids).logits
    with ropepatch.enabled(kernels=True):
        torch.manual_seed(0)
        out = cls(cfg).cuda().eval()(ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
