"""The PyTorch rotary path and the dispatcher, against transformers' own rotary functions.

References: llama's ``apply_rotary_pos_emb`` and ``LlamaRotaryEmbedding`` (NeoX, attention
scaling), gpt_neox's (partial rotary), gptj's (interleaved, half-width tables), cohere's
(interleaved, full-width tables). Gradients: ``torch.autograd.gradcheck`` in float64 and autograd
through transformers' functions.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers.models.cohere.modeling_cohere import apply_rotary_pos_emb as cohere_apply
from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb as neox_apply
from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb as gptj_apply
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_apply

import ropepatch.kernels as kernels
from ropepatch.kernels.dispatch import (
    RotaryCache,
    RotaryFunction,
    apply_rotary,
    apply_rotary_cached,
    apply_rotary_table_free,
    select_backend,
    wrap_apply_rotary_pos_emb,
)
from ropepatch.kernels.reference import RotarySource, rotary_reference
from ropepatch.spec import RopeSpec


def _qk(batch, hq, hk, seq, dim, dtype=torch.float32, layout="bhsd", seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (lambda h: (batch, h, seq, dim)) if layout == "bhsd" else (lambda h: (batch, seq, h, dim))
    q = torch.randn(*shape(hq), generator=g).to(dtype)
    k = torch.randn(*shape(hk), generator=g).to(dtype)
    return q, k


def _batched_positions(batch, seq, offsets):
    return torch.arange(seq)[None, :] + torch.tensor(offsets)[:, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_llama_tables_match_transformers(dtype, layout, tables):
    # GQA 6 q heads / 2 kv heads, head_dim 48 (not a power of two), batched positions with offsets
    q, k = _qk(2, 6, 2, 7, 48, dtype, layout)
    pos = _batched_positions(2, 7, [0, 1000])
    cos, sin = tables.hf(tables.inv_freq(48, 500000.0), pos, 1.0, dtype)
    unsqueeze = 1 if layout == "bhsd" else 2
    ours = apply_rotary(q, k, cos, sin, unsqueeze_dim=unsqueeze)
    # oracle: transformers' function on the same values upcast (its float32 math is exact here)
    want = llama_apply(q.float(), k.float(), cos.float(), sin.float(), unsqueeze_dim=unsqueeze)
    for got, ref in zip(ours, want, strict=True):
        assert got.dtype == dtype and got.shape == ref.shape
        torch.testing.assert_close(got.float(), ref.to(dtype).float(), **tables.tol(dtype))
    if dtype != torch.float32:
        # transformers in native half precision rounds after every op: we agree to a few ulp
        native = llama_apply(q, k, cos, sin, unsqueeze_dim=unsqueeze)
        eps = torch.finfo(dtype).eps
        for got, ref in zip(ours, native, strict=True):
            torch.testing.assert_close(got.float(), ref.float(), rtol=4 * eps, atol=4 * eps)
    else:
        for got, ref in zip(ours, llama_apply(q, k, cos, sin, unsqueeze_dim=unsqueeze), strict=True):
            torch.testing.assert_close(got, ref, rtol=0, atol=2e-6)


def test_yarn_attention_factor_table_free_and_cached_match_transformers(tables):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=16384,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 4096},
    )  # fmt: skip
    rope = LlamaRotaryEmbedding(config)
    assert rope.attention_scaling == pytest.approx(0.1 * torch.log(torch.tensor(4.0)).item() + 1)
    # packed: two sequences in one row, positions restart at the boundary, then a far position
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 16000]])
    q, k = _qk(1, 4, 2, 8, 32)
    cos, sin = rope(q, pos)
    want = llama_apply(q, k, cos, sin)
    free = apply_rotary_table_free(q, k, rope.inv_freq, pos, rope.attention_scaling)
    cached = apply_rotary_cached(q, k, RotaryCache.build(rope.inv_freq, 16384, rope.attention_scaling), pos,
                                 check_positions=True)  # fmt: skip
    for got, ref in zip((*free, *cached), (*want, *want), strict=True):
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # the adapter's route: RotaryCache.from_spec(spec) with ropepatch's own yarn frequencies
    spec = RopeSpec("yarn", rope_theta=10000.0, rotary_dim=32, factor=4.0,
                    original_max_position_embeddings=4096, max_position_embeddings=16384)  # fmt: skip
    cache = RotaryCache.from_spec(spec, 16384)
    assert cache.rotary_dim == 32 and cache.max_positions == 16384
    # ropepatch computes inv_freq in float64 and rounds once; transformers in float32 (<= 1 ulp apart),
    # which at position 16000 can move the float32 angle by an ulp: compare the near positions tightly
    near = pos[:, :7]
    got = apply_rotary_cached(q[:, :, :7], k[:, :, :7], cache, near)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b[:, :, :7], rtol=1e-5, atol=1e-5)


def test_position_ids_cache_matches_old_transformers_signature(tables):
    # transformers <= 4.37: cos/sin [max_pos, dim] and cos[position_ids] inside apply_rotary_pos_emb
    inv = tables.inv_freq(16)
    all_pos = torch.arange(64)[None, :]
    cos_full, sin_full = tables.hf(inv, all_pos, 1.0, torch.float32)
    cos_full, sin_full = cos_full[0], sin_full[0]
    pos = torch.tensor([[5, 9, 63], [0, 1, 2]])
    q, k = _qk(2, 2, 1, 3, 16)
    got = apply_rotary(q, k, cos_full, sin_full, position_ids=pos)
    want = llama_apply(q, k, cos_full[pos], sin_full[pos])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_partial_rotary_matches_gpt_neox(tables):
    q, k = _qk(2, 4, 4, 5, 40)  # rotary_dim 16 of head_dim 40
    pos = _batched_positions(2, 5, [3, 11])
    cos, sin = tables.hf(tables.inv_freq(16), pos, 1.0, torch.float32)
    got = apply_rotary(q, k, cos, sin)
    want = neox_apply(q, k, cos, sin)
    for a, b, x in zip(got, want, (q, k), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert torch.equal(a[..., 16:], x[..., 16:])  # pass-through dims untouched


def test_interleaved_half_width_matches_gptj(tables):
    # GPT-J: [batch, seq, heads, dim], rotary_dim 16 of 24, pairs (2i, 2i+1), sin/cos [b, s, rot/2]
    q, k = _qk(2, 3, 3, 6, 24, layout="bshd")
    pos = _batched_positions(2, 6, [0, 40])
    inv = tables.inv_freq(16)
    angle = pos[..., None].float() * inv
    sin_half, cos_half = torch.sin(angle), torch.cos(angle)
    want = [torch.cat([gptj_apply(x[..., :16], sin_half, cos_half), x[..., 16:]], dim=-1) for x in (q, k)]
    cache = RotaryCache.build(inv, 64)
    cached = apply_rotary_cached(q, k, cache, pos, unsqueeze_dim=2, interleaved=True)
    free = apply_rotary_table_free(q, k, inv, pos, unsqueeze_dim=2, interleaved=True)
    full_cos = torch.repeat_interleave(cos_half, 2, dim=-1)
    full_sin = torch.repeat_interleave(sin_half, 2, dim=-1)
    table = apply_rotary(q, k, full_cos, full_sin, unsqueeze_dim=2, interleaved=True)
    for got in (cached, free, table):
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_interleaved_full_width_matches_cohere(dtype, tables):
    q, k = _qk(1, 4, 2, 5, 32, dtype)
    pos = torch.arange(5)[None] + 7
    angle = pos[..., None].float() * tables.inv_freq(32)
    emb = torch.repeat_interleave(angle, 2, dim=-1)  # cohere's table layout
    cos, sin = (emb.cos() * 1.25).to(dtype), (emb.sin() * 1.25).to(dtype)
    got = apply_rotary(q, k, cos, sin, interleaved=True)
    want = cohere_apply(q, k, cos, sin)  # cohere computes in float32 and rounds once, like us
    for a, b in zip(got, want, strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_inplace_writes_into_fused_qkv_view_and_leaves_v_alone(tables):
    batch, seq, hq, hk, dim = 2, 5, 4, 2, 16
    qkv = torch.randn(batch, seq, (hq + 2 * hk) * dim)
    before = qkv.clone()
    q = qkv[..., : hq * dim].view(batch, seq, hq, dim)
    k = qkv[..., hq * dim : (hq + hk) * dim].view(batch, seq, hk, dim)
    pos = _batched_positions(batch, seq, [0, 3])
    cos, sin = tables.hf(tables.inv_freq(dim), pos, 1.0, torch.float32)
    want = llama_apply(q.clone(), k.clone(), cos, sin, unsqueeze_dim=2)
    got = apply_rotary(q, k, cos, sin, unsqueeze_dim=2, inplace=True)
    assert got[0] is q and got[1] is k
    torch.testing.assert_close(q, want[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(k, want[1], rtol=0, atol=1e-6)
    assert torch.equal(qkv[..., (hq + hk) * dim :], before[..., (hq + hk) * dim :])


def test_out_of_place_leaves_inputs_alone(tables):
    q, k = _qk(1, 2, 2, 4, 16)
    q0, k0 = q.clone(), k.clone()
    cos, sin = tables.hf(tables.inv_freq(16), torch.arange(4)[None], 1.0, torch.float32)
    apply_rotary(q, k, cos, sin)
    assert torch.equal(q, q0) and torch.equal(k, k0)


# -- autograd ------------------------------------------------------------------------------------


def _sources(rot, batch, seq, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    pos = torch.randint(0, 50, (batch, seq), generator=g)
    inv = 1.0 / (10000.0 ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    angle = torch.arange(64, dtype=torch.float64)[:, None] * inv
    cos_half, sin_half = angle.cos() * 1.1, angle.sin() * 1.1
    full = (torch.cat([cos_half, cos_half], -1)[pos], torch.cat([sin_half, sin_half], -1)[pos])
    return {
        "table": RotarySource("table", rot, cos=full[0], sin=full[1]),
        "indexed": RotarySource("indexed", rot, cos=cos_half, sin=sin_half, half=True, positions=pos),
        "freqs": RotarySource("freqs", rot, inv_freq=inv, positions=pos, attention_factor=1.1),
    }


@pytest.mark.parametrize("kind", ["table", "indexed", "freqs"])
@pytest.mark.parametrize("interleaved", [False, True])
def test_gradcheck_float64_torch_function(kind, interleaved):
    batch, seq, dim, rot = 2, 3, 10, 6  # partial rotary, GQA 3/1
    src = _sources(rot, batch, seq)[kind]
    g = torch.Generator().manual_seed(1)
    q = torch.randn(batch, seq, 3, dim, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(batch, seq, 1, dim, dtype=torch.float64, generator=g, requires_grad=True)

    def fn(q, k):
        return RotaryFunction.apply(q, k, src, interleaved, False, "torch")

    assert torch.autograd.gradcheck(fn, (q, k), eps=1e-6, atol=1e-8)
    # and the hand-written backward equals autograd through the differentiable formula
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    ours = torch.autograd.grad(fn(q, k), (q, k), (gq, gk))
    ref_out = (rotary_reference(q, src, interleaved=interleaved), rotary_reference(k, src, interleaved=interleaved))
    ref = torch.autograd.grad(ref_out, (q, k), (gq, gk))
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_backward_matches_transformers_autograd_and_inplace_views(tables):
    # a training-shaped graph: q from a linear layer, viewed and transposed as transformers does
    torch.manual_seed(0)
    batch, seq, heads, dim = 2, 4, 2, 8
    lin = torch.nn.Linear(6, heads * dim).double()
    x = torch.randn(batch, seq, 6, dtype=torch.float64)
    k_leaf = torch.randn(batch, 1, seq, dim, dtype=torch.float64, requires_grad=True)
    pos = _batched_positions(batch, seq, [0, 9])
    cos, sin = tables.hf(tables.inv_freq(dim).double(), pos, 1.3, torch.float64)

    def grads(rotate):
        lin.zero_grad()
        k_leaf.grad = None
        q = lin(x).view(batch, seq, heads, dim).transpose(1, 2)
        q2, k2 = rotate(q, k_leaf * 1.0)
        (q2.square().sum() + (k2 * torch.arange(dim)).sum()).backward()
        return lin.weight.grad.clone(), k_leaf.grad.clone()

    want = grads(lambda q, k: llama_apply(q, k, cos, sin))
    for inplace in (False, True):
        got = grads(lambda q, k, inplace=inplace: apply_rotary(q, k, cos, sin, inplace=inplace))
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_gradient_into_cos_sin_when_they_require_grad(tables):
    q, k = _qk(1, 2, 1, 3, 8, torch.float64)
    cos, sin = tables.hf(tables.inv_freq(8).double(), torch.arange(3)[None], 1.0, torch.float64)
    cos.requires_grad_(True)
    sin.requires_grad_(True)
    ours = torch.autograd.grad(sum(t.sum() for t in apply_rotary(q, k, cos, sin)), (cos, sin))
    want = torch.autograd.grad(sum(t.sum() for t in llama_apply(q, k, cos, sin)), (cos, sin))
    for a, b in zip(ours, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# -- dispatch, wrapper, errors --------------------------------------------------------------------


def test_cpu_tensors_take_the_torch_path_even_when_enabled():
    q = torch.zeros(1, 1, 1, 2)
    kernels.set_enabled(True)
    try:
        assert select_backend(q) == "torch"
        assert select_backend(q.double()) == "torch"
    finally:
        kernels.set_enabled(False)
    with pytest.raises(ValueError, match="backend must be"):
        select_backend(q, "cuda")  # type: ignore[arg-type]


def test_wrapper_calls_transformers_on_cpu_whether_enabled_or_not(tables):
    calls = []

    def counted(q, k, cos, sin, unsqueeze_dim=1):
        calls.append(unsqueeze_dim)
        return llama_apply(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)

    wrapped = wrap_apply_rotary_pos_emb(counted)
    assert wrap_apply_rotary_pos_emb(wrapped) is wrapped  # idempotent
    assert wrapped.__wrapped__ is counted and wrapped.__name__ == "counted"
    q, k = _qk(1, 2, 2, 3, 8, torch.bfloat16)
    cos, sin = tables.hf(tables.inv_freq(8), torch.arange(3)[None], 1.0, torch.bfloat16)
    for flag in (False, True):
        kernels.set_enabled(flag)
        try:
            got = wrapped(q, k, cos, sin)
            got2 = wrapped(q.transpose(1, 2), k.transpose(1, 2), cos, sin, unsqueeze_dim=2)
        finally:
            kernels.set_enabled(False)
        want = llama_apply(q, k, cos, sin)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))  # bit-identical on CPU
        assert all(torch.equal(a.transpose(1, 2), b) for a, b in zip(got2, want, strict=True))
    assert calls == [1, 2, 1, 2]


def test_errors_say_what_is_wrong(tables):
    q, k = _qk(1, 2, 2, 3, 8)
    cos, sin = tables.hf(tables.inv_freq(8), torch.arange(3)[None], 1.0, torch.float32)
    with pytest.raises(ValueError, match="unsqueeze_dim"):
        apply_rotary(q, k, cos, sin, unsqueeze_dim=3)
    with pytest.raises(ValueError, match="exceeds head_dim"):
        apply_rotary(q[..., :4], k[..., :4], cos, sin)
    with pytest.raises(ValueError, match="broadcast"):
        apply_rotary(q, k, cos[:, :2], sin[:, :2])
    with pytest.raises(ValueError, match="integers"):
        apply_rotary_table_free(q, k, tables.inv_freq(8), torch.zeros(1, 3))
    with pytest.raises(IndexError, match="cache holds"):
        apply_rotary_cached(q, k, RotaryCache.build(tables.inv_freq(8), 4), torch.tensor([[0, 1, 4]]),
                            check_positions=True)  # fmt: skip


def test_importing_kernels_loads_neither_torch_nor_triton():
    code = (
        "import sys, ropepatch, ropepatch.kernels as k\n"
        "assert k.is_enabled() is False\n"
        "bad = sorted(m for m in ('torch', 'triton') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=_repo_root())


def _repo_root() -> str:
    import pathlib

    return str(pathlib.Path(__file__).resolve().parents[2])


def test_arbitrary_full_width_tables_follow_transformers_formula():
    # the torch path also implements x * cos + rotate_half(x) * sin for tables whose halves differ
    q, k = _qk(2, 4, 2, 3, 32, seed=5)
    g = torch.Generator().manual_seed(6)
    cos, sin = torch.randn(2, 3, 32, generator=g), torch.randn(2, 3, 32, generator=g)
    for a, b in zip(apply_rotary(q, k, cos, sin), llama_apply(q, k, cos, sin), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(apply_rotary(q, k, cos, sin, interleaved=True), cohere_apply(q, k, cos, sin), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
