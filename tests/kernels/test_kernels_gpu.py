"""The compiled kernel on a real GPU: realistic shapes, 128k positions, dispatch, CUDA graphs.

Everything here needs CUDA; the interpreter tests in test_kernels_triton.py cover the same logic on
CPU. What only a GPU can show: the compiled code (vectorised loads, FMA contraction, bf16 rounding
to nearest), libdevice sin/cos at large angles, and that the hot path has no host syncs.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_apply

import ropepatch.kernels as kernels
from ropepatch.kernels.dispatch import (
    RotaryCache,
    apply_rotary,
    apply_rotary_table_free,
    select_backend,
    wrap_apply_rotary_pos_emb,
)
from ropepatch.kernels.reference import RotarySource, rotate_torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 512, 32, 8, 128), (4, 1, 32, 8, 128), (2, 300, 40, 40, 80)], ids=str)
def test_realistic_shapes_match_transformers(kernel, tables, dtype, shape):
    batch, seq, hq, hk, dim = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(batch, hq, seq, dim, device="cuda", generator=g).to(dtype)
    k = torch.randn(batch, hk, seq, dim, device="cuda", generator=g).to(dtype)
    pos = torch.randint(0, 32768, (batch, seq), device="cuda", generator=g)
    cos, sin = tables.hf(tables.inv_freq(dim, 500000.0).cuda(), pos, 1.2, dtype)
    assert select_backend(q) == "triton"
    got = apply_rotary(q, k, cos, sin)
    want = llama_apply(q.float(), k.float(), cos.float(), sin.float())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.float(), b.to(dtype).float(), **tables.tol(dtype))


def test_in_kernel_sin_cos_at_128k_positions_match_the_float32_cache(kernel):
    # an approximate sin/cos would be off by up to ~1e-2 at angles near 1.3e5 rad
    dim = 128
    pos = torch.arange(131072 - 4096, 131072, device="cuda")[None]
    inv = (1.0 / (500000.0 ** (torch.arange(0, dim, 2).float() / dim))).cuda()
    q = torch.randn(1, 4096, 8, dim, device="cuda")
    k = torch.randn(1, 4096, 2, dim, device="cuda")
    free = [torch.empty_like(q), torch.empty_like(k)]
    cached = [torch.empty_like(q), torch.empty_like(k)]
    kernel.rotate_triton(q, k, *free, RotarySource("freqs", dim, inv_freq=inv, positions=pos))
    cache = RotaryCache.build(inv, 131072)
    src = RotarySource("indexed", dim, cos=cache.cos, sin=cache.sin, half=True, positions=pos)
    kernel.rotate_triton(q, k, *cached, src)
    for a, b in zip(free, cached, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_backward_on_gpu_matches_reference(kernel):
    q = torch.randn(2, 8, 64, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(2, 2, 64, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(64, device="cuda")[None].expand(2, 64)
    inv = (1.0 / (10000.0 ** (torch.arange(0, 128, 2).float() / 128))).cuda()
    q2, k2 = apply_rotary_table_free(q, k, inv, pos)
    gq, gk = torch.randn_like(q2), torch.randn_like(k2)
    ours = torch.autograd.grad((q2, k2), (q, k), (gq, gk))
    src = RotarySource("freqs", 128, inv_freq=inv, positions=pos)
    for g, grad in zip((gq, gk), ours, strict=True):
        g4 = g.transpose(1, 2)
        want = torch.empty_like(g4)
        rotate_torch(g4, None, want, None, src, conj=True)
        torch.testing.assert_close(grad.transpose(1, 2).float(), want.float(), rtol=2.0**-7, atol=1e-5)


def test_wrapper_routes_cuda_to_the_kernel_only_when_enabled(kernel, tables):
    q = torch.randn(1, 4, 16, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 2, 16, 64, device="cuda", dtype=torch.bfloat16)
    cos, sin = tables.hf(tables.inv_freq(64).cuda(), torch.arange(16, device="cuda")[None], 1.0, torch.bfloat16)
    wrapped = wrap_apply_rotary_pos_emb(llama_apply)
    off = wrapped(q, k, cos, sin)
    assert all(torch.equal(a, b) for a, b in zip(off, llama_apply(q, k, cos, sin), strict=True))
    kernels.set_enabled(True)
    try:
        on = wrapped(q, k, cos, sin)
    finally:
        kernels.set_enabled(False)
    fused = apply_rotary(q, k, cos, sin, backend="triton")
    assert all(torch.equal(a, b) for a, b in zip(on, fused, strict=True))


def test_cuda_graph_capture_and_replay(kernel):
    # no host syncs or allocations in the in-place table-free path: it can live in a CUDA graph
    q = torch.randn(8, 32, 1, 128, device="cuda", dtype=torch.float16)
    k = torch.randn(8, 8, 1, 128, device="cuda", dtype=torch.float16)
    pos = torch.zeros(8, 1, dtype=torch.long, device="cuda")
    inv = (1.0 / (10000.0 ** (torch.arange(0, 128, 2).float() / 128))).cuda()
    apply_rotary_table_free(q, k, inv, pos, inplace=True)  # warm-up compiles the kernel
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        apply_rotary_table_free(q, k, inv, pos, inplace=True)
    q0, k0 = torch.randn_like(q), torch.randn_like(k)
    q.copy_(q0)
    k.copy_(k0)
    pos.copy_(torch.arange(8, device="cuda")[:, None] * 1000)
    graph.replay()
    want = apply_rotary_table_free(q0, k0, inv, pos, backend="torch")
    torch.testing.assert_close(q.float(), want[0].float(), rtol=2.0**-10, atol=1e-5)
    torch.testing.assert_close(k.float(), want[1].float(), rtol=2.0**-10, atol=1e-5)


def test_compiled_cuda_llama_with_kernels_has_no_graph_breaks_and_one_op_per_layer(kernel):
    from torch._dynamo.testing import CompileCounterWithBackend
    from transformers import LlamaConfig, LlamaForCausalLM

    import ropepatch

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=128,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    )
    ids = torch.randint(0, 64, (2, 96), device="cuda")
    with ropepatch.enabled():
        torch.manual_seed(0)
        with torch.no_grad():
            ref = LlamaForCausalLM(cfg).cuda().eval()(ids).logits
    torch._dynamo.reset()
    with ropepatch.enabled(kernels=True):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).cuda().eval()
        counter = CompileCounterWithBackend("inductor")
        with torch.no_grad():
            out = torch.compile(lambda x: model(x).logits, backend=counter, fullgraph=True)(ids)
    assert counter.frame_count == 1
    assert counter.graphs[0].code.count("torch.ops.ropepatch.rotary.default") == 2
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_decode_rotates_q_and_k_in_one_launch(kernel):
    from torch.profiler import ProfilerActivity, profile

    q = torch.randn(4, 40, 1, 128, device="cuda", dtype=torch.float16)
    k = torch.randn(4, 40, 1, 128, device="cuda", dtype=torch.float16)
    pos = torch.arange(4, device="cuda")[:, None] + 1000
    inv = (1.0 / (10000.0 ** (torch.arange(0, 128, 2).float() / 128))).cuda()
    apply_rotary_table_free(q, k, inv, pos, inplace=True)  # compile the kernel first
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        apply_rotary_table_free(q, k, inv, pos, inplace=True)
        torch.cuda.synchronize()
    launches = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(launches) == 1 and "_rope_kernel" in launches[0], launches
