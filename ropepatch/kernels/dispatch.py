"""Rotary entry points: the Triton kernel for CUDA tensors, the PyTorch path for everything else.

Contract for the transformers adapter
-------------------------------------

``apply_rotary(q, k, cos, sin, position_ids=None, unsqueeze_dim=1)`` returns what transformers'
``apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)`` (``models/llama/modeling_llama.py``) returns:

* ``q``/``k``: ``[batch, heads, seq, head_dim]`` (``unsqueeze_dim=1``, transformers' layout) or
  ``[batch, seq, heads, head_dim]`` (``unsqueeze_dim=2``); q and k may have different head counts
  (grouped-query) and any strides (fused-qkv views included).
* ``cos``/``sin``: ``[batch|1, seq, rotary_dim]`` per-token tables, NeoX layout (``cat(freqs, freqs)``),
  attention factor already multiplied in, any float dtype - exactly transformers'
  ``position_embeddings``. With ``position_ids`` (``[batch|1, seq]`` ints), ``cos``/``sin`` are instead
  ``[max_positions, rotary_dim]`` caches gathered by position (transformers <= 4.37's signature).
* ``rotary_dim < head_dim`` rotates the first ``rotary_dim`` dims and passes the rest through (as
  gpt_neox/phi do); ``interleaved=True`` takes GPT-J pairs ``(2i, 2i+1)`` with a table in the same
  interleaved layout (as cohere builds it).
* Returns new tensors ``(q_embed, k_embed)`` in the caller's layout; ``inplace=True`` writes into q
  and k and returns them.
* Math is float32 (float64 for float64 inputs), rounded once at the store; transformers rounds
  after every op in half precision, so the two agree to output rounding (<= 1-2 ulp), and exactly
  in float32 up to the order of two roundings.
* Autograd: q and k get gradients through the op ``ropepatch::rotary``, whose registered backward
  rotates the incoming gradient by ``-theta`` (the same op with the sines swapped and negated). An
  in-place call that needs gradients rotates out of place and copies (a mutating op can't carry an
  autograd formula). When ``cos``/``sin`` themselves require grad, a differentiable PyTorch formula
  is used instead.
* ``torch.compile``: every entry point is one custom-op node (:mod:`ropepatch.kernels.ops`), the
  PyTorch implementation on CPU, the Triton kernel on CUDA, so ``fullgraph=True`` holds. On torch
  < 2.4 (no ``torch.library.custom_op``) the plain path runs :class:`RotaryFunction` instead: same
  values and gradients, but the compiler breaks the graph at each call.

``apply_rotary_table_free(q, k, inv_freq, position_ids, attention_factor=1.0, unsqueeze_dim=1)`` is
the same without tables: ``cos/sin(float32(pos) * inv_freq) * attention_factor`` are computed per
token (in the kernel on CUDA), so memory does not grow with the context. ``inv_freq`` and
``attention_factor`` are what ``RopeSpec.frequencies(seq_len, device)`` returns.

``apply_rotary_cached(q, k, cache, position_ids)`` uses a :class:`RotaryCache`: half-width float32
tables ``[max_positions, rotary_dim // 2]`` built once (``RotaryCache.from_spec(spec, n)``) and
gathered by position in the kernel.

Backend choice (``backend="auto"``): ``"triton"`` when q is a CUDA float16/bfloat16/float32 tensor
and triton imports, else ``"torch"``. ``backend="torch"`` / ``"triton"`` force one.

``wrap_apply_rotary_pos_emb(original)`` turns a transformers ``apply_rotary_pos_emb`` into a drop-in
replacement that, while :func:`ropepatch.kernels.set_enabled` is on (``ropepatch.enable(kernels=True)``),
sends CUDA tensors to the kernel and calls ``original`` for everything else (CPU stays bit-identical
unless ``set_enabled(True, cpu=True)`` routes CPU tensors through the op as well).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from ropepatch.kernels import is_enabled, routes_cpu, triton_status
from ropepatch.kernels import ops as _ops
from ropepatch.kernels.reference import (
    RotarySource,
    build_cos_sin_cache,
    rotary_reference,
    rotate_torch,
)

if TYPE_CHECKING:
    from ropepatch.spec import RopeSpec

__all__ = [
    "RotaryCache",
    "RotaryFunction",
    "apply_rotary",
    "apply_rotary_cached",
    "apply_rotary_table_free",
    "rotate",
    "select_backend",
    "wrap_apply_rotary_pos_emb",
]

Backend = Literal["auto", "torch", "triton"]
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_ORIGINAL_ATTR = "__ropepatch_original__"


def _triton_ok() -> bool:
    return triton_status()[0]


if hasattr(torch, "compiler") and hasattr(torch.compiler, "assume_constant_result"):
    # the first call may import triton; under torch.compile that runs at trace time, as a constant,
    # instead of an import statement inside the traced frame (a graph break)
    _triton_ok = torch.compiler.assume_constant_result(_triton_ok)


def select_backend(q: torch.Tensor, requested: Backend = "auto") -> Literal["torch", "triton"]:
    """The backend that rotates ``q``: ``"triton"`` for CUDA half/float tensors when triton imports."""
    if requested == "torch":
        return "torch"
    if requested == "triton":
        if not _triton_ok():
            raise RuntimeError(f"backend='triton' requested but {triton_status()[1]}")
        return "triton"
    if requested != "auto":
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {requested!r}")
    if q.is_cuda and q.dtype in _KERNEL_DTYPES and _triton_ok():
        return "triton"
    return "torch"


def _rotator(backend: str) -> Callable[..., None]:
    if backend == "triton":
        from ropepatch.kernels.triton_rope import rotate_triton

        return rotate_triton
    return rotate_torch


class RotaryFunction(torch.autograd.Function):
    """Rotation of q and k whose backward is the rotation by ``-theta`` (the forward's adjoint).

    Tensors are ``[batch, seq, heads, head_dim]``. Returns ``(q_out, k_out)``, or ``q_out`` alone when
    ``k`` is ``None`` (autograd allows a Function that modifies a view in place only one output).
    The cos/sin source is a constant (no gradient). With ``inplace=True`` the inputs are overwritten
    and marked dirty.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor | None,
        src: RotarySource,
        interleaved: bool,
        inplace: bool,
        backend: str,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        ctx.src, ctx.interleaved, ctx.backend = src, interleaved, backend
        q_out, k_out = _outputs(q, k, inplace)
        _rotator(backend)(q, k, q_out, k_out, src, interleaved=interleaved, conj=False)
        if inplace:
            ctx.mark_dirty(*(t for t in (q, k) if t is not None))
        if k_out is None:
            return q_out
        return q_out, k_out

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        grad_q, grad_k = grads if len(grads) == 2 else (grads[0], None)
        gq, gk = _outputs(grad_q, grad_k, False)
        _rotator(ctx.backend)(grad_q, grad_k, gq, gk, ctx.src, interleaved=ctx.interleaved, conj=True)
        return gq, gk, None, None, None, None


def _outputs(q: torch.Tensor, k: torch.Tensor | None, inplace: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if inplace:
        return q, k
    return torch.empty_like(q), (torch.empty_like(k) if k is not None else None)


def rotate(
    q: torch.Tensor,
    k: torch.Tensor | None,
    src: RotarySource,
    *,
    interleaved: bool = False,
    inplace: bool = False,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate ``[batch, seq, heads, head_dim]`` tensors q (and k) by ``src``; the core of every entry point."""
    chosen = select_backend(q, backend)
    if chosen == "triton" and (q.dtype not in _KERNEL_DTYPES or (k is not None and k.dtype not in _KERNEL_DTYPES)):
        raise TypeError(f"the Triton kernel takes float16, bfloat16 or float32, got {q.dtype}")
    if src.rotary_dim > q.shape[-1]:
        raise ValueError(f"rotary_dim {src.rotary_dim} exceeds head_dim {q.shape[-1]}")
    inputs = [t for t in (q, k) if t is not None]
    grad = torch.is_grad_enabled()
    if grad and any(t.requires_grad for t in src.tensors):
        # gradients into cos/sin: only the differentiable formula provides them
        outs = [rotary_reference(t, src, interleaved=interleaved) for t in inputs]
        if inplace:
            outs = [t.copy_(o) for t, o in zip(inputs, outs, strict=True)]
        return outs[0], (outs[1] if k is not None else None)
    if _ops.AVAILABLE:
        return _rotate_op(q, k, src, interleaved, inplace, chosen, grad and any(t.requires_grad for t in inputs))
    if grad and any(t.requires_grad for t in inputs):
        if inplace and k is not None:
            # autograd lets a Function that modifies a view in place return only one tensor:
            # rotate q and k in two calls (two launches, training with inplace=True only)
            q_out = RotaryFunction.apply(q, None, src, interleaved, True, chosen)
            return q_out, RotaryFunction.apply(k, None, src, interleaved, True, chosen)
        if k is None:
            return RotaryFunction.apply(q, None, src, interleaved, inplace, chosen), None
        return RotaryFunction.apply(q, k, src, interleaved, inplace, chosen)
    q_out, k_out = _outputs(q, k, inplace)
    _rotator(chosen)(q, k, q_out, k_out, src, interleaved=interleaved, conj=False)
    return q_out, k_out


def _rotate_op(
    q: torch.Tensor,
    k: torch.Tensor | None,
    src: RotarySource,
    interleaved: bool,
    inplace: bool,
    backend: str,
    needs_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # a q-only call passes a k with zero heads: the op always has two outputs, the kernel skips k
    kk = k if k is not None else q.new_empty((q.shape[0], q.shape[1], 0, q.shape[3]))
    args = (*_ops.op_args(src), interleaved, False, backend)
    if not inplace:
        q_out, k_out = _ops.rotary(q, kk, *args)
        return q_out, (k_out if k is not None else None)
    if needs_grad:
        # a mutating op can't carry an autograd formula: rotate out of place, then copy (autograd
        # tracks copy_ into views); costs one extra copy, in training with inplace=True only
        q_out, k_out = _ops.rotary(q, kk, *args)
        q.copy_(q_out)
        if k is not None:
            k.copy_(k_out)
        return q, k
    _ops.rotary_(q, kk, *args)
    return q, k


def _seq_dim(unsqueeze_dim: int) -> int:
    if unsqueeze_dim in (1, -3):
        return 2
    if unsqueeze_dim in (2, -2):
        return 1
    raise ValueError(
        f"unsqueeze_dim must be 1 (q is [batch, heads, seq, dim]) or 2 ([batch, seq, heads, dim]), got {unsqueeze_dim}"
    )


def _to_bshd(x: torch.Tensor, unsqueeze_dim: int, name: str) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D, got shape {tuple(x.shape)}")
    if unsqueeze_dim in (1, -3):
        return x.transpose(1, 2)  # [batch, heads, seq, dim] -> [batch, seq, heads, dim], a view
    if unsqueeze_dim in (2, -2):
        return x
    raise ValueError(
        f"unsqueeze_dim must be 1 (q is [batch, heads, seq, dim]) or 2 ([batch, seq, heads, dim]), got {unsqueeze_dim}"
    )


def _from_bshd(x: torch.Tensor | None, unsqueeze_dim: int) -> torch.Tensor | None:
    if x is None:
        return None
    return x.transpose(1, 2) if unsqueeze_dim in (1, -3) else x


def _apply(
    q: torch.Tensor,
    k: torch.Tensor,
    src: RotarySource,
    unsqueeze_dim: int,
    interleaved: bool,
    inplace: bool,
    backend: Backend,
) -> tuple[torch.Tensor, torch.Tensor]:
    q4 = _to_bshd(q, unsqueeze_dim, "q")
    k4 = _to_bshd(k, unsqueeze_dim, "k") if k is not None else None
    if k4 is not None and (k4.shape[:2] != q4.shape[:2] or k4.shape[3] != q4.shape[3]):
        raise ValueError(f"k shape {tuple(k.shape)} does not match q shape {tuple(q.shape)}")
    q_out, k_out = rotate(q4, k4, src, interleaved=interleaved, inplace=inplace, backend=backend)
    if inplace:
        # q4/k4 are views of q/k, so autograd already sees q and k as modified
        return q, k
    return _from_bshd(q_out, unsqueeze_dim), _from_bshd(k_out, unsqueeze_dim)  # type: ignore[return-value]


def _check_tables(cos: torch.Tensor, sin: torch.Tensor, batch: int, seq: int) -> None:
    if cos.shape != sin.shape:
        raise ValueError(f"cos {tuple(cos.shape)} and sin {tuple(sin.shape)} differ in shape")
    if cos.dim() != 3:
        raise ValueError(f"cos/sin must be [batch, seq, rotary_dim] without position_ids, got {tuple(cos.shape)}")
    try:
        torch.broadcast_shapes(cos.shape[:2], (batch, seq))
    except RuntimeError:
        raise ValueError(f"cos/sin {tuple(cos.shape)} do not broadcast to batch={batch}, seq={seq}") from None
    if cos.shape[0] not in (1, batch) or cos.shape[1] not in (1, seq):
        raise ValueError(f"cos/sin {tuple(cos.shape)} do not broadcast to batch={batch}, seq={seq}")


def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    unsqueeze_dim: int = 1,
    *,
    interleaved: bool = False,
    inplace: bool = False,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)``, fused on CUDA.

    See the module docstring for the full contract (shapes, partial rotary, ``position_ids`` caches,
    interleaved tables, precision, autograd).
    """
    seq_dim = _seq_dim(unsqueeze_dim)
    batch, seq = q.shape[0], q.shape[seq_dim]
    rot = cos.shape[-1]
    if position_ids is None:
        _check_tables(cos, sin, batch, seq)
        src = RotarySource("table", rot, cos=cos, sin=sin)
    else:
        if cos.dim() != 2 or cos.shape != sin.shape:
            raise ValueError(f"with position_ids, cos/sin must be [max_positions, rotary_dim], got {tuple(cos.shape)}")
        src = RotarySource("indexed", rot, cos=cos, sin=sin, positions=_positions(position_ids, batch, seq))
    return _apply(q, k, src, unsqueeze_dim, interleaved, inplace, backend)


def _positions(position_ids: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    pos = position_ids.unsqueeze(0) if position_ids.dim() == 1 else position_ids
    if pos.dim() != 2 or pos.shape[0] not in (1, batch) or pos.shape[1] != seq:
        raise ValueError(f"position_ids {tuple(position_ids.shape)} must be [batch|1, seq] with seq={seq}")
    return pos


def apply_rotary_table_free(
    q: torch.Tensor,
    k: torch.Tensor,
    inv_freq: torch.Tensor,
    position_ids: torch.Tensor,
    attention_factor: float = 1.0,
    unsqueeze_dim: int = 1,
    *,
    interleaved: bool = False,
    inplace: bool = False,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k by ``cos/sin(float32(pos) * inv_freq) * attention_factor``, no table in memory.

    ``inv_freq`` (``[rotary_dim // 2]``) and ``attention_factor`` are ``RopeSpec.frequencies()``'s
    values; ``position_ids`` is ``[batch|1, seq]`` (int32/int64, packed or batched, any values).
    """
    seq_dim = _seq_dim(unsqueeze_dim)
    batch, seq = q.shape[0], q.shape[seq_dim]
    src = RotarySource(
        "freqs",
        2 * inv_freq.shape[-1],
        inv_freq=inv_freq,
        positions=_positions(position_ids, batch, seq),
        attention_factor=float(attention_factor),
    )
    return _apply(q, k, src, unsqueeze_dim, interleaved, inplace, backend)


@dataclass(frozen=True, eq=False)
class RotaryCache:
    """Half-width float32 cos/sin tables ``[max_positions, rotary_dim // 2]``, attention factor folded in."""

    cos: torch.Tensor
    sin: torch.Tensor

    @property
    def rotary_dim(self) -> int:
        """Number of rotated dimensions (twice the table width)."""
        return 2 * self.cos.shape[-1]

    @property
    def max_positions(self) -> int:
        """Number of positions the tables hold."""
        return self.cos.shape[0]

    @classmethod
    def build(cls, inv_freq: torch.Tensor, max_positions: int, attention_factor: float = 1.0) -> RotaryCache:
        """Tables for positions ``0 .. max_positions - 1`` on ``inv_freq``'s device."""
        cos, sin = build_cos_sin_cache(inv_freq, max_positions, attention_factor)
        return cls(cos, sin)

    @classmethod
    def from_spec(
        cls,
        spec: RopeSpec,
        max_positions: int,
        device: torch.device | str | None = None,
        seq_len: int | None = None,
    ) -> RotaryCache:
        """Tables for a checkpoint's :class:`~ropepatch.RopeSpec` (``seq_len`` for dynamic methods)."""
        inv_freq, attention_factor = spec.frequencies(seq_len, device)
        return cls.build(inv_freq, max_positions, attention_factor)


def apply_rotary_cached(
    q: torch.Tensor,
    k: torch.Tensor,
    cache: RotaryCache,
    position_ids: torch.Tensor,
    unsqueeze_dim: int = 1,
    *,
    interleaved: bool = False,
    inplace: bool = False,
    backend: Backend = "auto",
    check_positions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k with a :class:`RotaryCache` gathered by ``position_ids`` (in the kernel on CUDA).

    ``check_positions=True`` verifies ``0 <= position_ids < cache.max_positions`` first (a device sync,
    so not for CUDA graphs); the kernel itself never reads outside the cache.
    """
    seq_dim = _seq_dim(unsqueeze_dim)
    batch, seq = q.shape[0], q.shape[seq_dim]
    pos = _positions(position_ids, batch, seq)
    if check_positions and pos.numel():
        lo, hi = int(pos.min()), int(pos.max())
        if lo < 0 or hi >= cache.max_positions:
            raise IndexError(f"position ids span [{lo}, {hi}], the cache holds 0..{cache.max_positions - 1}")
    src = RotarySource("indexed", cache.rotary_dim, cos=cache.cos, sin=cache.sin, half=True, positions=pos)
    return _apply(q, k, src, unsqueeze_dim, interleaved, inplace, backend)


def wrap_apply_rotary_pos_emb(
    original: Callable[..., Any], *, interleaved: bool = False, partial: bool = False
) -> Callable[..., Any]:
    """A drop-in for a transformers ``apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)``.

    While kernels are enabled, CUDA tensors of a supported dtype go to the Triton kernel (through the
    ``ropepatch::rotary`` op); every other call (CPU tensors, kernels off, triton missing, extra
    arguments) goes to ``original`` unchanged - except CPU tensors while
    ``set_enabled(True, cpu=True)``, which take the op's PyTorch implementation. The routing tests
    only types, devices, dtypes and shapes, so under ``torch.compile`` they are guards, not breaks.
    ``interleaved=True`` declares that ``original`` pairs ``(2i, 2i+1)`` with an interleaved full-width
    table (cohere); ``partial=True`` that a table narrower than ``head_dim`` rotates only the first
    dims and passes the rest (gpt_neox, phi). Without ``partial`` such calls go to ``original``,
    because some models (glm) give narrow tables another meaning. Wrapping twice is a no-op.
    """
    if getattr(original, _ORIGINAL_ATTR, None) is not None:
        return original

    @functools.wraps(original)
    def apply_rotary_pos_emb(q: Any, k: Any, cos: Any, sin: Any, *args: Any, **kwargs: Any) -> Any:
        # every test here is on Python values, types, devices, dtypes and shapes: under
        # torch.compile they become guards, never graph breaks
        unsqueeze_dim = _plain_unsqueeze_dim(args, kwargs)
        if unsqueeze_dim is not None and is_enabled():
            backend = _route(q, k, cos, sin, partial)
            if backend is not None:
                return apply_rotary(
                    q, k, cos, sin, unsqueeze_dim=unsqueeze_dim, interleaved=interleaved, backend=backend
                )
        return original(q, k, cos, sin, *args, **kwargs)

    setattr(apply_rotary_pos_emb, _ORIGINAL_ATTR, original)
    return apply_rotary_pos_emb


def _plain_unsqueeze_dim(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    # only the (q, k, cos, sin[, unsqueeze_dim]) form is routed; anything else is the original's business
    if len(args) > 1 or set(kwargs) - {"unsqueeze_dim"} or (args and "unsqueeze_dim" in kwargs):
        return None
    value = args[0] if args else kwargs.get("unsqueeze_dim", 1)
    return value if isinstance(value, int) and value in (1, 2, -2, -3) else None


def _route(q: Any, k: Any, cos: Any, sin: Any, partial: bool) -> Backend | None:
    """``"triton"`` for CUDA tensors the kernel takes, ``"torch"`` for CPU ones while ``routes_cpu()``, else None."""
    tensors = (q, k, cos, sin)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return None
    if all(t.is_cuda for t in tensors):
        backend: Backend = "triton"
    elif routes_cpu() and all(t.device.type == "cpu" for t in tensors):
        backend = "torch"
    else:
        return None
    if q.dtype not in _KERNEL_DTYPES or k.dtype not in _KERNEL_DTYPES or q.dim() != 4 or k.dim() != 4:
        return None
    if cos.dim() != 3 or cos.shape != sin.shape or cos.shape[-1] % 2:
        return None
    width = cos.shape[-1]
    if width > q.shape[-1] or (width < q.shape[-1] and not partial):
        return None
    if backend == "triton" and not _triton_ok():
        return None
    return backend
