"""The rotary entry points as PyTorch custom ops, so ``torch.compile`` traces through them.

Two ops in the ``ropepatch`` namespace, registered when this module is first imported (which
:mod:`ropepatch.kernels.dispatch` does; ``import ropepatch`` never does):

* ``ropepatch::rotary(q, k, cos?, sin?, positions?, inv_freq?, kind, rotary_dim, half,
  attention_factor, interleaved, conj, backend) -> (q_out, k_out)`` - out of place, with a fake
  (meta) implementation and autograd registered through the op: the backward is the same op with
  ``conj`` flipped, i.e. the rotation by ``-theta`` (the forward's adjoint), so it is differentiable
  again and traceable by AOTAutograd.
* ``ropepatch::rotary_(q!, k!, ...) -> ()`` - in place; ``mutates_args=("q", "k")`` tells the
  compiler (functionalization) what it writes. PyTorch does not allow an autograd formula on a
  mutating op, so :func:`ropepatch.kernels.dispatch.rotate` sends in-place calls that need gradients
  through ``rotary`` plus ``copy_`` instead.

q and k are ``[batch, seq, heads, head_dim]`` views (any strides); k may have zero heads (a q-only
call). The cos/sin source is spelled out as tensors and scalars (``kind`` is 0 table, 1 indexed,
2 freqs; see :class:`ropepatch.kernels.reference.RotarySource`). ``backend`` is ``"torch"`` (the
PyTorch implementation, any device - the CPU path) or ``"triton"`` (the fused kernel; CUDA tensors,
or CPU tensors while the kernel module is interpreted). Both run inside the op, so a compiled graph
holds one opaque node per call whichever backend runs.

``torch.library.custom_op`` exists from torch 2.4. On older torch :data:`AVAILABLE` is False and
the dispatcher uses its plain path (an ``autograd.Function``): same results, but ``torch.compile``
breaks the graph at each call there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ropepatch.kernels.reference import RotarySource, SourceKind, rotate_torch

__all__ = ["AVAILABLE", "KIND_CODES", "op_args", "rotary", "rotary_", "source_from_args"]

KIND_CODES: dict[SourceKind, int] = {"table": 0, "indexed": 1, "freqs": 2}
_KINDS: dict[int, SourceKind] = {code: kind for kind, code in KIND_CODES.items()}

#: True when this torch can register custom ops (2.4+); the ops below exist only then
AVAILABLE: bool = all(hasattr(torch.library, name) for name in ("custom_op", "register_fake", "register_autograd"))

_SOURCE_ARGS = (
    "Tensor? cos, Tensor? sin, Tensor? positions, Tensor? inv_freq, int kind, int rotary_dim, bool half, "
    "float attention_factor, bool interleaved, bool conj, str backend"
)


def op_args(src: RotarySource) -> tuple[Any, ...]:
    """The source as the ops' positional arguments ``(cos, sin, positions, inv_freq, kind, rotary_dim, half, factor)``."""
    return (
        src.cos,
        src.sin,
        src.positions,
        src.inv_freq,
        KIND_CODES[src.kind],
        src.rotary_dim,
        bool(src.half),
        float(src.attention_factor),
    )


def source_from_args(
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    positions: torch.Tensor | None,
    inv_freq: torch.Tensor | None,
    kind: int,
    rotary_dim: int,
    half: bool,
    attention_factor: float,
) -> RotarySource:
    """Inverse of :func:`op_args`."""
    return RotarySource(
        _KINDS[kind],
        rotary_dim,
        cos=cos,
        sin=sin,
        half=half,
        positions=positions,
        inv_freq=inv_freq,
        attention_factor=attention_factor,
    )


def _run(
    q: torch.Tensor,
    k: torch.Tensor,
    q_out: torch.Tensor,
    k_out: torch.Tensor,
    source: Sequence[Any],
    interleaved: bool,
    conj: bool,
    backend: str,
) -> None:
    src = source_from_args(*source)
    if backend == "triton":
        from ropepatch.kernels.triton_rope import rotate_triton

        rotate_triton(q, k, q_out, k_out, src, interleaved=interleaved, conj=conj)
    elif backend == "torch":
        rotate_torch(q, k, q_out, k_out, src, interleaved=interleaved, conj=conj)
    else:
        raise ValueError(f"backend must be 'torch' or 'triton' inside the op, got {backend!r}")


if AVAILABLE:

    @torch.library.custom_op(
        "ropepatch::rotary",
        mutates_args=(),
        schema=f"(Tensor q, Tensor k, {_SOURCE_ARGS}) -> (Tensor, Tensor)",
    )
    def rotary(
        q: torch.Tensor,
        k: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        positions: torch.Tensor | None,
        inv_freq: torch.Tensor | None,
        kind: int,
        rotary_dim: int,
        half: bool,
        attention_factor: float,
        interleaved: bool,
        conj: bool,
        backend: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated copies of q and k (``[batch, seq, heads, head_dim]``), strides as ``empty_like`` gives."""
        q_out, k_out = torch.empty_like(q), torch.empty_like(k)
        source = (cos, sin, positions, inv_freq, kind, rotary_dim, half, attention_factor)
        _run(q, k, q_out, k_out, source, interleaved, conj, backend)
        return q_out, k_out

    @rotary.register_fake
    def _rotary_fake(q: torch.Tensor, k: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.empty_like(q), torch.empty_like(k)

    def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        cos, sin, positions, inv_freq = inputs[2:6]
        ctx.save_for_backward(*(t if t is not None else torch.empty(0) for t in (cos, sin, positions, inv_freq)))
        ctx.present = tuple(t is not None for t in (cos, sin, positions, inv_freq))
        ctx.scalars = inputs[6:]

    def _backward(ctx: Any, grad_q: torch.Tensor, grad_k: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        tensors = [t if present else None for t, present in zip(ctx.saved_tensors, ctx.present, strict=True)]
        kind, rotary_dim, half, factor, interleaved, conj, backend = ctx.scalars
        # d/dx of a rotation by theta is the rotation by -theta: the same op with the sines conjugated
        gq, gk = rotary(grad_q, grad_k, *tensors, kind, rotary_dim, half, factor, interleaved, not conj, backend)
        return (gq, gk) + (None,) * 11

    rotary.register_autograd(_backward, setup_context=_setup_context)

    @torch.library.custom_op(
        "ropepatch::rotary_",
        mutates_args=("q", "k"),
        schema=f"(Tensor(a!) q, Tensor(b!) k, {_SOURCE_ARGS}) -> ()",
    )
    def rotary_(
        q: torch.Tensor,
        k: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        positions: torch.Tensor | None,
        inv_freq: torch.Tensor | None,
        kind: int,
        rotary_dim: int,
        half: bool,
        attention_factor: float,
        interleaved: bool,
        conj: bool,
        backend: str,
    ) -> None:
        """Rotate q and k in place (both halves of a pair are read before either is written)."""
        source = (cos, sin, positions, inv_freq, kind, rotary_dim, half, attention_factor)
        _run(q, k, q, k, source, interleaved, conj, backend)

    @rotary_.register_fake
    def _rotary_inplace_fake(q: torch.Tensor, k: torch.Tensor, *args: Any) -> None:
        return None

else:  # torch < 2.4: no ops; dispatch.rotate takes its autograd.Function path
    rotary = None  # type: ignore[assignment]
    rotary_ = None  # type: ignore[assignment]
