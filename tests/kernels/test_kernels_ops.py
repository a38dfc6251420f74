"""The custom ops ``ropepatch::rotary`` / ``ropepatch::rotary_``: registration, opcheck, autograd, plain path.

``torch.library.opcheck`` runs PyTorch's own consistency checks (schema and mutation declarations,
fake implementation vs the real one, autograd registration, AOTAutograd tracing with dynamic
shapes). Values are checked against transformers' ``apply_rotary_pos_emb`` and the differentiable
reference formula, never against the op alone.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_apply

from ropepatch.kernels import dispatch, ops
from ropepatch.kernels.dispatch import apply_rotary, apply_rotary_table_free
from ropepatch.kernels.reference import RotarySource, build_cos_sin_cache, rotary_reference

pytestmark = pytest.mark.skipif(not ops.AVAILABLE, reason="torch.library.custom_op needs torch >= 2.4")

ROOT = Path(__file__).resolve().parents[2]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DEFAULT_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _inv(rot, dtype=torch.float32):
    return 1.0 / (10000.0 ** (torch.arange(0, rot, 2, dtype=dtype) / rot))


def _source(kind, rot, batch, seq, device, dtype=torch.float32):
    pos = (torch.arange(seq)[None] + torch.tensor([[0], [7]])[:batch]).to(device)
    inv = _inv(rot, dtype).to(device)
    cos_h, sin_h = (t.to(dtype) for t in build_cos_sin_cache(inv, 64, 1.1))
    if kind == "freqs":
        return RotarySource("freqs", rot, inv_freq=inv, positions=pos, attention_factor=1.1)
    if kind == "indexed":
        return RotarySource("indexed", rot, cos=cos_h, sin=sin_h, half=True, positions=pos)
    full_c, full_s = torch.cat([cos_h, cos_h], -1), torch.cat([sin_h, sin_h], -1)
    return RotarySource("table", rot, cos=full_c[pos], sin=full_s[pos])


def _qk(batch, seq, hq, hk, dim, device, dtype=torch.float32, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    # transformers' [batch, heads, seq, dim] seen as [batch, seq, heads, dim]: non-contiguous views
    q = torch.randn(batch, hq, seq, dim, generator=g, dtype=dtype).to(device).transpose(1, 2)
    k = torch.randn(batch, hk, seq, dim, generator=g, dtype=dtype).to(device).transpose(1, 2)
    if requires_grad:
        q, k = q.detach().requires_grad_(True), k.detach().requires_grad_(True)
    return q, k


def _args(src, interleaved=False, conj=False, backend="torch"):
    return (*ops.op_args(src), interleaved, conj, backend)


def test_import_ropepatch_registers_nothing_and_kernels_register_lazily():
    code = (
        "import sys, ropepatch, ropepatch.kernels\n"
        "assert 'torch' not in sys.modules, 'import ropepatch(.kernels) must not import torch'\n"
        "import torch\n"
        "assert not hasattr(torch.ops.ropepatch, 'rotary'), 'registered before first use'\n"
        "ropepatch.kernels.apply_rotary\n"
        "print(torch.ops.ropepatch.rotary.default._schema)\n"
        "print(torch.ops.ropepatch.rotary_.default._schema)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    functional, inplace = out.stdout.splitlines()
    assert functional.startswith("ropepatch::rotary(Tensor q, Tensor k,") and functional.endswith("-> (Tensor, Tensor)")
    assert inplace.startswith("ropepatch::rotary_(Tensor(a!) q, Tensor(b!) k,") and inplace.endswith("-> ()")
    assert torch.Tag.pt2_compliant_tag in torch.ops.ropepatch.rotary.default.tags


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "kind,interleaved,shape",
    [
        ("table", False, (2, 3, 4, 2, 8, 8)),
        ("indexed", True, (2, 3, 3, 1, 10, 6)),  # GQA, partial rotary, GPT-J pairs
        ("freqs", False, (1, 4, 2, 2, 8, 8)),
    ],
)
def test_opcheck_functional_op(device, kind, interleaved, shape):
    batch, seq, hq, hk, dim, rot = shape
    src = _source(kind, rot, batch, seq, device)
    for requires_grad in (False, True):
        q, k = _qk(batch, seq, hq, hk, dim, device, requires_grad=requires_grad)
        result = torch.library.opcheck(torch.ops.ropepatch.rotary.default, (q, k, *_args(src, interleaved)))
        assert set(result) == set(DEFAULT_CHECKS) and all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["table", "freqs"])
def test_opcheck_inplace_op(device, kind):
    src = _source(kind, 6, 2, 3, device)
    q, k = _qk(2, 3, 2, 1, 8, device)
    result = torch.library.opcheck(torch.ops.ropepatch.rotary_.default, (q, k, *_args(src)))
    assert all(v == "SUCCESS" for v in result.values()), result


def test_opcheck_triton_backend_under_the_interpreter(kernel):
    # the kernel inside the op: CUDA tensors on a GPU host, interpreted CPU tensors elsewhere
    device = "cuda" if torch.cuda.is_available() else "cpu"
    src = _source("indexed", 8, 1, 2, device)
    q, k = _qk(1, 2, 2, 1, 8, device)
    for op in (torch.ops.ropepatch.rotary.default, torch.ops.ropepatch.rotary_.default):
        result = torch.library.opcheck(op, (q.clone(), k.clone(), *_args(src, backend="triton")))
        assert all(v == "SUCCESS" for v in result.values()), (op, result)


def test_op_values_match_transformers_and_inplace_declares_its_writes():
    q, k = _qk(2, 5, 4, 2, 8, "cpu")
    src = _source("table", 8, 2, 5, "cpu")
    want = llama_apply(q.transpose(1, 2), k.transpose(1, 2), src.cos, src.sin)
    got = torch.ops.ropepatch.rotary(q, k, *_args(src))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.transpose(1, 2), b, rtol=1e-6, atol=1e-6)
        assert a.stride() == torch.empty_like(a).stride()  # what the fake implementation promises
    versions = (q._version, k._version)
    assert torch.ops.ropepatch.rotary_(q, k, *_args(src)) is None
    assert q._version > versions[0] and k._version > versions[1]  # autograd sees the mutation
    for a, b in zip((q, k), want, strict=True):
        torch.testing.assert_close(a.transpose(1, 2), b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["table", "indexed", "freqs"])
def test_registered_backward_is_the_adjoint_rotation(kind):
    # float64 gradcheck of the op itself, its second derivative, and agreement with autograd
    # through the differentiable formula (the independent check of the registered backward)
    src = _source(kind, 6, 2, 3, "cpu", torch.float64)
    q, k = _qk(2, 3, 3, 1, 10, "cpu", torch.float64, requires_grad=True)

    def fn(q, k):
        return torch.ops.ropepatch.rotary(q, k, *_args(src, interleaved=True))

    assert torch.autograd.gradcheck(fn, (q, k), eps=1e-6, atol=1e-8)
    if kind == "freqs":  # the backward is the op again, hence twice differentiable (slow: once)
        assert torch.autograd.gradgradcheck(fn, (q, k), eps=1e-6, atol=1e-8)
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    ours = torch.autograd.grad(fn(q, k), (q, k), (gq, gk))
    ref_out = tuple(rotary_reference(t, src, interleaved=True) for t in (q, k))
    for a, b in zip(ours, torch.autograd.grad(ref_out, (q, k), (gq, gk)), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_entry_points_call_the_ops(monkeypatch):
    calls = []
    for name in ("rotary", "rotary_"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    q, k = _qk(1, 3, 2, 2, 8, "cpu")
    pos = torch.arange(3)[None]
    apply_rotary_table_free(q, k, _inv(8), pos, unsqueeze_dim=2)
    apply_rotary_table_free(q.clone(), k.clone(), _inv(8), pos, unsqueeze_dim=2, inplace=True)
    q_grad = q.detach().clone().requires_grad_(True) * 1.0
    apply_rotary_table_free(q_grad, k, _inv(8), pos, unsqueeze_dim=2, inplace=True)  # with grad: functional + copy_
    assert calls == ["rotary", "rotary_", "rotary"]


def test_plain_path_without_ops_gives_the_same_values_and_gradients(monkeypatch, tables):
    # torch < 2.4 has no custom_op: the dispatcher's autograd.Function path must agree with the op path
    q, k = _qk(2, 4, 4, 2, 8, "cpu", torch.float64)
    q, k = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
    cos, sin = tables.hf(_inv(8).double(), torch.arange(4)[None], 1.0, torch.float64)

    def run():
        ql, kl = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
        out = apply_rotary(ql * 1.0, kl * 1.0, cos, sin, inplace=True)
        (out[0].square().sum() + out[1].sum()).backward()
        return (*[t.detach() for t in out], ql.grad, kl.grad)

    with_ops = run()
    monkeypatch.setattr(dispatch._ops, "AVAILABLE", False)
    without = run()
    for a, b in zip(with_ops, without, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(with_ops[0], llama_apply(q, k, cos, sin)[0], rtol=0, atol=1e-12)
