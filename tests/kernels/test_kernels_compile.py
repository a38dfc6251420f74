"""``torch.compile(fullgraph=True)`` through every rotary entry point and a tiny Llama with kernels on.

Graph breaks are counted (``torch._dynamo`` counters, ``CompileCounterWithBackend`` frames,
``torch._dynamo.explain``) and must be zero; ``fullgraph=True`` would raise at the first one anyway.
The no-break assertions use the ``aot_eager`` backend (AOTAutograd's tracing through the fake
implementations and the registered backward, without Inductor's C++ compile, which is slow on a
2-core CI runner); one case runs Inductor end to end. Compiled outputs are compared with eager
transformers, not with ropepatch's own eager output alone.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_apply

import ropepatch
import ropepatch.kernels as kernels
from ropepatch.kernels import ops
from ropepatch.kernels.dispatch import (
    RotaryCache,
    apply_rotary,
    apply_rotary_cached,
    apply_rotary_table_free,
    rotate,
)
from ropepatch.kernels.reference import RotarySource

pytestmark = pytest.mark.skipif(not ops.AVAILABLE, reason="torch.library.custom_op needs torch >= 2.4")

DIM, SEQ = 8, 5


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def _inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, SEQ, DIM, generator=g).to(dtype)  # transformers' [batch, heads, seq, dim]
    k = torch.randn(2, 2, SEQ, DIM, generator=g).to(dtype)
    inv = 1.0 / (10000.0 ** (torch.arange(0, DIM, 2, dtype=torch.float32) / DIM))
    pos = torch.arange(SEQ)[None] + torch.tensor([[0], [11]])
    angle = pos[..., None].float() * inv
    emb = torch.cat([angle, angle], -1)
    return q, k, inv, pos, emb.cos().to(dtype), emb.sin().to(dtype)


def _compile_once(fn, *args, backend="aot_eager"):
    """Run ``fn`` compiled with fullgraph=True; assert one graph, zero breaks, and the op in it."""
    counter = CompileCounterWithBackend(backend)
    out = torch.compile(fn, backend=counter, fullgraph=True)(*args)
    assert counter.frame_count == 1
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == 0
    code = counter.graphs[0].code
    assert "torch.ops.ropepatch.rotary" in code, code
    return out, code


def _entry_points():
    q, k, inv, pos, cos, sin = _inputs()
    cache = RotaryCache.build(inv, 32)
    full_cos = torch.cat([cache.cos, cache.cos], -1)
    full_sin = torch.cat([cache.sin, cache.sin], -1)
    return {
        "apply_rotary": lambda q, k: apply_rotary(q, k, cos, sin),
        "apply_rotary[position_ids]": lambda q, k: apply_rotary(q, k, full_cos, full_sin, position_ids=pos),
        "apply_rotary_table_free": lambda q, k: apply_rotary_table_free(q, k, inv, pos),
        "apply_rotary_cached": lambda q, k: apply_rotary_cached(q, k, cache, pos),
        "apply_rotary[inplace]": lambda q, k: apply_rotary(q.clone(), k.clone(), cos, sin, inplace=True),
        "apply_rotary_table_free[inplace,bshd]": lambda q, k: apply_rotary_table_free(
            q.transpose(1, 2).clone(), k.transpose(1, 2).clone(), inv, pos, unsqueeze_dim=2, inplace=True
        ),
        "rotate[q only]": lambda q, k: (
            rotate(q.transpose(1, 2), None, RotarySource("freqs", DIM, inv_freq=inv, positions=pos))[0],
        ),
    }


@pytest.mark.parametrize("name", list(_entry_points()))
def test_each_entry_point_compiles_without_graph_breaks(name):
    fn = _entry_points()[name]
    q, k, inv, pos, cos, sin = _inputs()
    out, code = _compile_once(fn, q, k)
    want = llama_apply(q, k, cos, sin)
    if name == "rotate[q only]":
        want = (want[0].transpose(1, 2),)
    if "bshd" in name:
        want = tuple(w.transpose(1, 2) for w in want)
    for a, b in zip(out, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    if "inplace" in name:
        assert "rotary_.default" in code  # the mutating op, functionalized by the compiler


def test_backward_compiles_without_graph_breaks_and_matches_transformers():
    q0, k0, inv, pos, cos, sin = _inputs(torch.float64)

    def loss(q, k):
        q2, k2 = apply_rotary(q, k, cos, sin)
        return (q2.square() * 0.5).sum() + (k2 * torch.arange(DIM)).sum()

    def grads(fn):
        q, k = q0.clone().requires_grad_(True), k0.clone().requires_grad_(True)
        fn(q, k).backward()
        return q.grad, k.grad

    counter = CompileCounterWithBackend("aot_eager")
    got = grads(torch.compile(loss, backend=counter, fullgraph=True))
    assert counter.frame_count == 1 and not torch._dynamo.utils.counters["graph_break"]

    def hf_loss(q, k):
        q2, k2 = llama_apply(q, k, cos, sin)
        return (q2.square() * 0.5).sum() + (k2 * torch.arange(DIM)).sum()

    for a, b in zip(got, grads(hf_loss), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_inductor_end_to_end_on_cpu():
    # Inductor keeps the op as an extern call; the in-place op on graph inputs is functionalized and
    # written back into q and k. Kept tiny: Inductor's first C++ compile is slow on a 2-core runner.
    q, k, inv, pos, cos, sin = _inputs(torch.bfloat16)
    want = llama_apply(q.float(), k.float(), *_inputs(torch.float32)[4:])

    def fn(q, k):
        return apply_rotary_table_free(q, k, inv, pos, inplace=True)

    counter = CompileCounterWithBackend("inductor")
    out = torch.compile(fn, backend=counter, fullgraph=True)(q, k)
    assert counter.frame_count == 1
    assert out[0] is q and out[1] is k  # written in place, as eager does
    for a, b in zip((q, k), want, strict=True):
        torch.testing.assert_close(a.float(), b.bfloat16().float(), rtol=2**-7, atol=1e-5)


def test_triton_backend_inside_a_compiled_graph(kernel, monkeypatch):
    # the kernel (interpreted on CPU) runs inside the op; the triton check is traced as a constant,
    # even when it has not run before (the import happens at trace time, not in the graph)
    monkeypatch.setattr(kernels, "_triton_status", None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, inv, pos, cos, sin = (t.to(device) for t in _inputs())
    out, _ = _compile_once(lambda q, k: apply_rotary(q, k, cos, sin, backend="triton"), q, k)
    for a, b in zip(out, llama_apply(q, k, cos, sin), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_parameters={
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 32,
            "rope_theta": 10000.0,
        },
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def test_tiny_llama_with_kernels_on_compiles_without_graph_breaks():
    from transformers.models.llama import modeling_llama

    ids = torch.randint(0, 64, (1, 24), generator=torch.Generator().manual_seed(1))
    with ropepatch.enabled():
        model = _tiny_llama()
        with torch.no_grad():
            ref = model(ids).logits  # transformers' own rotary, eager
    with ropepatch.enabled(kernels=True):
        model = _tiny_llama()
        # the adapter wrapped the module global that LlamaAttention looks up at call time
        assert getattr(modeling_llama.apply_rotary_pos_emb, "__ropepatch_original__", None) is not None
        with torch.no_grad():
            # as enable(kernels=True) leaves it: CPU tensors keep transformers' function
            explained = torch._dynamo.explain(lambda x: model(x).logits)(ids)
            assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
            torch._dynamo.reset()
            # CPU tensors routed through the op as CUDA ones are: the op is in the one graph
            kernels.set_enabled(True, cpu=True)
            counter = CompileCounterWithBackend("aot_eager")
            out = torch.compile(lambda x: model(x).logits, backend=counter, fullgraph=True)(ids)
    assert counter.frame_count == 1 and not torch._dynamo.utils.counters["graph_break"]
    assert counter.graphs[0].code.count("torch.ops.ropepatch.rotary.default") == 2  # one per layer
    assert not kernels.routes_cpu()  # disable() cleared the CPU route with the switch
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
