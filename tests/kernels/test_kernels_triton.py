"""The Triton kernel, interpreted on CPU (compiled where CUDA is), against transformers and the PyTorch path.

Shapes are tiny because the interpreter runs every program as a Python loop. Tolerances are one
output rounding: the interpreter truncates float32 -> bfloat16 where GPUs round to nearest, and
its in-kernel sin/cos can differ from torch's by an float32 ulp.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.cohere.modeling_cohere import apply_rotary_pos_emb as cohere_apply
from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb as neox_apply
from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb as gptj_apply
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_apply

from ropepatch.kernels.dispatch import (
    RotaryCache,
    apply_rotary,
    apply_rotary_cached,
    apply_rotary_table_free,
    rotate,
)
from ropepatch.kernels.reference import RotarySource, build_cos_sin_cache, rotary_reference, rotate_torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _randn(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(DEVICE)


def _source(kind, rot, pos, dtype, interleaved, factor=1.2):
    inv = (1.0 / (10000.0 ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))).to(DEVICE)
    cos_h, sin_h = build_cos_sin_cache(inv, 256, factor)
    if kind == "freqs":
        return RotarySource("freqs", rot, inv_freq=inv, positions=pos, attention_factor=factor)
    if kind == "indexed":
        return RotarySource("indexed", rot, cos=cos_h, sin=sin_h, half=True, positions=pos)
    if kind == "table-half":  # per-token, one value per pair (GPT-J's sin/cos shape), model dtype
        return RotarySource("table", rot, cos=cos_h[pos].to(dtype), sin=sin_h[pos].to(dtype), half=True)
    # full-width tables laid out like q's pairs
    if interleaved:
        cos, sin = cos_h.repeat_interleave(2, -1), sin_h.repeat_interleave(2, -1)
    else:
        cos, sin = torch.cat([cos_h, cos_h], -1), torch.cat([sin_h, sin_h], -1)
    if kind == "indexed-full":  # transformers <= 4.37: [max_pos, dim] gathered by position_ids
        return RotarySource("indexed", rot, cos=cos.to(dtype), sin=sin.to(dtype), positions=pos)
    return RotarySource("table", rot, cos=cos[pos].to(dtype), sin=sin[pos].to(dtype))


# GQA 6/2 with head_dim 80 (not a power of two) fully rotated; GQA 4/1 with partial rotary 16 of 24
SHAPES = [(6, 2, 80, 80), (4, 1, 24, 16)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "q{}k{}d{}r{}".format(*s))
@pytest.mark.parametrize("kind", ["table", "table-half", "indexed", "indexed-full", "freqs"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_matches_torch_path(kernel, dtype, interleaved, kind, shape):
    hq, hk, dim, rot = shape
    batch, seq = 2, 5
    q = _randn(batch, seq, hq, dim, dtype=dtype, seed=1)
    k = _randn(batch, seq, hk, dim, dtype=dtype, seed=2)
    pos = torch.tensor([[0, 1, 2, 200, 3], [7, 8, 0, 1, 255]], device=DEVICE)  # packed and batched
    src = _source(kind, rot, pos, dtype, interleaved)
    want_q, want_k = torch.empty_like(q), torch.empty_like(k)
    rotate_torch(q, k, want_q, want_k, src, interleaved=interleaved)
    got_q, got_k = torch.full_like(q, float("nan")), torch.full_like(k, float("nan"))
    kernel.rotate_triton(q, k, got_q, got_k, src, interleaved=interleaved)
    tol = {torch.float32: 2e-6, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}[dtype]
    torch.testing.assert_close(got_q, want_q, rtol=tol, atol=1e-5)
    torch.testing.assert_close(got_k, want_k, rtol=tol, atol=1e-5)
    assert torch.equal(got_q[..., rot:], q[..., rot:]) and torch.equal(got_k[..., rot:], k[..., rot:])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_matches_transformers_llama(kernel, dtype, tables):
    # transformers' layout [batch, heads, seq, dim], GQA 8/2, its own tables with an attention factor
    q = _randn(2, 8, 6, 32, dtype=dtype, seed=3)
    k = _randn(2, 2, 6, 32, dtype=dtype, seed=4)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5], [90, 91, 92, 93, 94, 95]], device=DEVICE)
    cos, sin = tables.hf(tables.inv_freq(32).to(DEVICE), pos, 1.5, dtype)
    got = apply_rotary(q, k, cos, sin, backend="triton")
    want = llama_apply(q.float(), k.float(), cos.float(), sin.float())  # its float32 math on our inputs
    for a, b in zip(got, want, strict=True):
        assert a.dtype == dtype and a.shape == b.shape
        torch.testing.assert_close(a.float(), b.to(dtype).float(), **tables.tol(dtype))


def test_table_free_and_cache_match_transformers_yarn(kernel):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=32768,
        rope_parameters={"rope_type": "yarn", "rope_theta": 500000.0, "factor": 8.0,
                         "original_max_position_embeddings": 4096},
    )  # fmt: skip
    rope = LlamaRotaryEmbedding(config).to(DEVICE)
    pos = torch.tensor([[0, 1, 2, 0, 1, 30000, 30001]], device=DEVICE)  # packed, then far positions
    q, k = _randn(1, 2, 7, 32, seed=5), _randn(1, 1, 7, 32, seed=6)
    cos, sin = rope(q, pos)
    want = llama_apply(q, k, cos, sin)
    free = apply_rotary_table_free(q, k, rope.inv_freq, pos, rope.attention_scaling, backend="triton")
    cache = RotaryCache.build(rope.inv_freq, 32768, rope.attention_scaling)
    cached = apply_rotary_cached(q, k, cache, pos, backend="triton")
    for got in (free, cached):
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_gptj_partial_interleaved_matches_transformers(kernel):
    # GPT-J: [batch, seq, heads, dim], rotary 16 of 40, half-width cache, int32 positions
    q, k = _randn(2, 4, 3, 40, seed=7), _randn(2, 4, 3, 40, seed=8)
    pos = torch.tensor([[3, 4, 5, 6], [0, 1, 2, 3]], dtype=torch.int32, device=DEVICE)
    inv = (1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16))).to(DEVICE)
    angle = pos[..., None].float() * inv
    want = [torch.cat([gptj_apply(x[..., :16], angle.sin(), angle.cos()), x[..., 16:]], -1) for x in (q, k)]
    cached = apply_rotary_cached(q, k, RotaryCache.build(inv, 8), pos, unsqueeze_dim=2, interleaved=True,
                                 backend="triton")  # fmt: skip
    free = apply_rotary_table_free(q, k, inv, pos, unsqueeze_dim=2, interleaved=True, backend="triton")
    for got in (cached, free):
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_cohere_interleaved_tables_and_neox_partial_match_transformers(kernel, tables):
    q, k = _randn(1, 4, 5, 32, dtype=torch.bfloat16, seed=9), _randn(1, 2, 5, 32, dtype=torch.bfloat16, seed=10)
    angle = (torch.arange(5, device=DEVICE)[None] + 11)[..., None].float() * tables.inv_freq(32).to(DEVICE)
    emb = angle.repeat_interleave(2, -1)
    cos, sin = emb.cos().to(torch.bfloat16), emb.sin().to(torch.bfloat16)
    got = apply_rotary(q, k, cos, sin, interleaved=True, backend="triton")
    for a, b in zip(got, cohere_apply(q, k, cos, sin), strict=True):  # cohere: float32 math, one rounding
        torch.testing.assert_close(a, b, **tables.tol(torch.bfloat16))
    # partial NeoX rotary (gpt_neox): 24 of 40 dims rotate, float32
    q, k = _randn(2, 3, 4, 40, seed=11), _randn(2, 3, 4, 40, seed=12)
    pos = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8]], device=DEVICE)
    cos, sin = tables.hf(tables.inv_freq(24).to(DEVICE), pos, 1.0, torch.float32)
    got = apply_rotary(q, k, cos, sin, backend="triton")
    for a, b in zip(got, neox_apply(q, k, cos, sin), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_inplace_fused_qkv_view_partial_tail_and_v_untouched(kernel, tables):
    batch, seq, hq, hk, dim, rot = 2, 3, 4, 2, 24, 16
    qkv = _randn(batch, seq, (hq + 2 * hk) * dim, dtype=torch.float16, seed=13)
    before = qkv.clone()
    q = qkv[..., : hq * dim].view(batch, seq, hq, dim)
    k = qkv[..., hq * dim : (hq + hk) * dim].view(batch, seq, hk, dim)
    pos = torch.tensor([[4, 5, 6], [0, 1, 2]], device=DEVICE)
    cos, sin = tables.hf(tables.inv_freq(rot).to(DEVICE), pos, 1.0, torch.float16)
    want = neox_apply(q.float(), k.float(), cos.float(), sin.float(), unsqueeze_dim=2)
    got = apply_rotary(q, k, cos, sin, unsqueeze_dim=2, inplace=True, backend="triton")
    assert got[0] is q and got[1] is k
    torch.testing.assert_close(q.float(), want[0].half().float(), **tables.tol(torch.float16))
    torch.testing.assert_close(k.float(), want[1].half().float(), **tables.tol(torch.float16))
    after, orig = qkv.view(batch, seq, hq + 2 * hk, dim), before.view(batch, seq, hq + 2 * hk, dim)
    assert torch.equal(after[..., rot:], orig[..., rot:])  # pass-through dims of q and k
    assert torch.equal(after[:, :, hq + hk :], orig[:, :, hq + hk :])  # v


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
def test_gpu_tiling_with_many_blocks(kernel, interleaved):
    # the GPU-style small tiles: several token and head blocks, ragged edges on both axes
    batch, seq, hq, hk, dim = 2, 5, 5, 3, 80
    q, k = _randn(batch, seq, hq, dim, seed=14), _randn(batch, seq, hk, dim, seed=15)
    pos = torch.arange(batch * seq, device=DEVICE).view(batch, seq) * 3
    src = _source("freqs", dim, pos, torch.float32, interleaved)
    want_q, want_k = torch.empty_like(q), torch.empty_like(k)
    rotate_torch(q, k, want_q, want_k, src, interleaved=interleaved)
    for block in ((4, 2), (2, 4)):
        got_q, got_k = q.clone(), k.clone()
        kernel.rotate_triton(got_q, got_k, got_q, got_k, src, interleaved=interleaved, block=block)
        torch.testing.assert_close(got_q, want_q, rtol=2e-6, atol=1e-5)
        torch.testing.assert_close(got_k, want_k, rtol=2e-6, atol=1e-5)


@pytest.mark.parametrize("kind", ["table", "indexed", "freqs"])
def test_kernel_backward_matches_autograd_of_reference(kernel, kind):
    batch, seq, dim, rot = 2, 4, 24, 16
    pos = torch.tensor([[0, 1, 2, 3], [10, 0, 1, 2]], device=DEVICE)
    for interleaved in (False, True):
        src = _source(kind, rot, pos, torch.float32, interleaved)
        q = _randn(batch, seq, 4, dim, seed=16).requires_grad_(True)
        k = _randn(batch, seq, 2, dim, seed=17).requires_grad_(True)
        gq, gk = _randn(batch, seq, 4, dim, seed=18), _randn(batch, seq, 2, dim, seed=19)
        outs = rotate(q, k, src, interleaved=interleaved, backend="triton")
        ours = torch.autograd.grad(outs, (q, k), (gq, gk))
        ref = [rotary_reference(x, src, interleaved=interleaved) for x in (q, k)]
        want = torch.autograd.grad(ref, (q, k), (gq, gk))
        for a, b in zip(ours, want, strict=True):
            torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-5)


def test_backward_through_transformers_layout_in_bf16(kernel, tables):
    q = _randn(1, 4, 5, 16, dtype=torch.bfloat16, seed=20).requires_grad_(True)
    k = _randn(1, 2, 5, 16, dtype=torch.bfloat16, seed=21).requires_grad_(True)
    cos, sin = tables.hf(tables.inv_freq(16).to(DEVICE), torch.arange(5, device=DEVICE)[None], 1.0, torch.bfloat16)
    q2, k2 = apply_rotary(q, k, cos, sin, backend="triton")
    (q2.float().sum() + (k2.float() * 2).sum()).backward()
    qf, kf = q.detach().float().requires_grad_(True), k.detach().float().requires_grad_(True)
    q3, k3 = llama_apply(qf, kf, cos.float(), sin.float())
    (q3.sum() + (k3 * 2).sum()).backward()
    torch.testing.assert_close(q.grad.float(), qf.grad.bfloat16().float(), **tables.tol(torch.bfloat16))
    torch.testing.assert_close(k.grad.float(), kf.grad.bfloat16().float(), **tables.tol(torch.bfloat16))


def test_rotate_then_conj_is_identity_at_large_positions(kernel):
    # factor 1: rotating by theta then -theta returns the input, also at 128k positions
    q, k = _randn(1, 3, 2, 64, seed=22), _randn(1, 3, 1, 64, seed=23)
    pos = torch.tensor([[131071, 65536, 100000]], device=DEVICE)
    inv = (1.0 / (500000.0 ** (torch.arange(0, 64, 2).float() / 64))).to(DEVICE)
    src = RotarySource("freqs", 64, inv_freq=inv, positions=pos)
    q2, k2 = q.clone(), k.clone()
    kernel.rotate_triton(q2, k2, q2, k2, src)
    kernel.rotate_triton(q2, k2, q2, k2, src, conj=True)
    torch.testing.assert_close(q2, q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k2, k, rtol=1e-5, atol=1e-5)


def test_decode_single_token_without_k(kernel):
    # decode: one token per sequence, batch 3 at different positions; q only (k=None)
    q = _randn(3, 1, 4, 16, seed=24)
    pos = torch.tensor([[17], [0], [250]], device=DEVICE)
    src = _source("indexed", 16, pos, torch.float32, False)
    want = torch.empty_like(q)
    rotate_torch(q, None, want, None, src)
    got = torch.empty_like(q)
    kernel.rotate_triton(q, None, got, None, src)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_kernel_rejects_unsupported_inputs(kernel):
    q = _randn(1, 2, 2, 8).double()
    src = _source("freqs", 8, torch.zeros(1, 2, dtype=torch.long, device=DEVICE), torch.float32, False)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        kernel.rotate_triton(q, None, q, None, src)
    with pytest.raises(ValueError, match="powers of two"):
        kernel.rotate_triton(q.float(), None, q.float(), None, src, block=(3, 1))


def test_arbitrary_full_width_tables_follow_transformers_formula(kernel):
    # x * cos + rotate_half(x) * sin holds for any table, not only cat(freqs, freqs): halves differ here
    q, k = _randn(2, 4, 3, 32, seed=25), _randn(2, 2, 3, 32, seed=26)
    cos, sin = _randn(2, 3, 32, seed=27), _randn(2, 3, 32, seed=28)
    for a, b in zip(apply_rotary(q, k, cos, sin, backend="triton"), llama_apply(q, k, cos, sin), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    got = apply_rotary(q, k, cos, sin, interleaved=True, backend="triton")
    for a, b in zip(got, cohere_apply(q, k, cos, sin), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
