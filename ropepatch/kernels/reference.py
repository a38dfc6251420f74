"""The plain PyTorch rotary path: the CPU and no-Triton backend, and the oracle the kernel is tested against.

Everything here works on q/k views shaped ``[batch, seq, heads, head_dim]`` (any strides; the
dispatcher transposes transformers' ``[batch, heads, seq, head_dim]`` into that view without a copy).
A rotary pair is ``(x1, x2)`` at offsets ``(i, i + rot/2)`` (NeoX, "half") or ``(2i, 2i + 1)``
(GPT-J, "interleaved"); for pair ``i`` with table values ``c1, s1`` at the first offset and
``c2, s2`` at the second::

    y1 = x1 * c1 - x2 * s1
    y2 = x2 * c2 + x1 * s2

which is exactly ``x * cos + rotate_half(x) * sin`` for any full-width table, and a rotation by
``theta`` when ``c1 == c2 == a cos(theta)`` and ``s1 == s2 == a sin(theta)``. The adjoint
(``conj=True``) swaps and negates the sines (``s1, s2 = -s2, -s1``): the gradient of the forward,
i.e. a rotation by ``-theta``. Math runs in float32 (float64 for float64 inputs); only the store
rounds to the output dtype. Dimensions past ``rotary_dim`` pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "RotarySource",
    "build_cos_sin_cache",
    "math_dtype",
    "pair_tables",
    "rotary_reference",
    "rotate_torch",
]

SourceKind = Literal["table", "indexed", "freqs"]


@dataclass(frozen=True, eq=False)
class RotarySource:
    """Where cos/sin come from; shared by the PyTorch path and the Triton kernel.

    * ``"table"``: per-token tables ``cos``/``sin`` broadcastable to ``[batch, seq, W]``
      (transformers' ``position_embeddings``, attention factor already multiplied in).
    * ``"indexed"``: tables ``[max_positions, W]`` gathered by ``positions`` (``[batch|1, seq]`` ints).
    * ``"freqs"``: no table: ``cos(pos * inv_freq) * attention_factor`` from ``inv_freq``
      (``[rotary_dim // 2]``) and ``positions``; the angle is a float32 product as in transformers.

    ``W`` is ``rotary_dim`` (a full-width table in the layout of q, like transformers builds) or, with
    ``half=True``, ``rotary_dim // 2`` (one value per rotary pair).
    """

    kind: SourceKind
    rotary_dim: int
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    half: bool = False
    positions: torch.Tensor | None = None
    inv_freq: torch.Tensor | None = None
    attention_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.rotary_dim < 2 or self.rotary_dim % 2:
            raise ValueError(f"rotary_dim must be even and at least 2, got {self.rotary_dim}")
        if self.kind in ("table", "indexed"):
            if self.cos is None or self.sin is None:
                raise ValueError(f"a {self.kind!r} source needs cos and sin")
            width = self.rotary_dim // 2 if self.half else self.rotary_dim
            for name, t in (("cos", self.cos), ("sin", self.sin)):
                if t.shape[-1] != width:
                    raise ValueError(f"{name} is {t.shape[-1]} wide, expected {width} for rotary_dim={self.rotary_dim}")
        elif self.kind == "freqs":
            if self.inv_freq is None:
                raise ValueError("a 'freqs' source needs inv_freq")
            if self.inv_freq.dim() != 1 or self.inv_freq.numel() != self.rotary_dim // 2:
                raise ValueError(
                    f"inv_freq must be 1-D of length {self.rotary_dim // 2}, got {tuple(self.inv_freq.shape)}"
                )
        else:
            raise ValueError(f"unknown source kind {self.kind!r}")
        if self.kind in ("indexed", "freqs"):
            if self.positions is None:
                raise ValueError(f"a {self.kind!r} source needs positions")
            if self.positions.dtype.is_floating_point or self.positions.dtype.is_complex:
                raise ValueError(f"positions must be integers, got {self.positions.dtype}")

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors the source reads (for device and grad checks)."""
        return tuple(t for t in (self.cos, self.sin, self.positions, self.inv_freq) if t is not None)


def math_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any input is float64, else float32: half-precision inputs are upcast for the math."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _positions_2d(positions: torch.Tensor) -> torch.Tensor:
    return positions.unsqueeze(0) if positions.dim() == 1 else positions


def pair_tables(
    src: RotarySource, dtype: torch.dtype, interleaved: bool, *, conj: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c1, s1, c2, s2)``, each ``[batch|1, seq, rotary_dim // 2]`` in ``dtype``, for the pair formula."""
    if src.kind == "freqs":
        assert src.positions is not None and src.inv_freq is not None
        # transformers: position_ids.float() * inv_freq.float(), then cos() * attention_scaling
        angle = _positions_2d(src.positions).to(dtype)[..., None] * src.inv_freq.to(dtype)
        c = torch.cos(angle) * src.attention_factor
        s = torch.sin(angle) * src.attention_factor
        c1, s1, c2, s2 = c, s, c, s
    else:
        assert src.cos is not None and src.sin is not None
        cos, sin = src.cos, src.sin
        if src.kind == "indexed":
            assert src.positions is not None
            index = _positions_2d(src.positions).to(src.cos.device)
            cos, sin = cos[index], sin[index]
        elif cos.dim() == 2:
            cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
        cos, sin = cos.to(dtype), sin.to(dtype)
        if src.half:
            c1, s1, c2, s2 = cos, sin, cos, sin
        elif interleaved:
            c1, s1, c2, s2 = cos[..., 0::2], sin[..., 0::2], cos[..., 1::2], sin[..., 1::2]
        else:
            h = src.rotary_dim // 2
            c1, s1, c2, s2 = cos[..., :h], sin[..., :h], cos[..., h:], sin[..., h:]
    if conj:
        s1, s2 = -s2, -s1
    return c1, s1, c2, s2


def _pairs(x: torch.Tensor, rot: int, interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if interleaved:
        return x[..., 0:rot:2], x[..., 1:rot:2]
    return x[..., : rot // 2], x[..., rot // 2 : rot]


def _rotate_one(
    x: torch.Tensor,
    out: torch.Tensor,
    tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    rot: int,
    interleaved: bool,
    dtype: torch.dtype,
) -> None:
    c1, s1, c2, s2 = (t.unsqueeze(2) for t in tables)  # broadcast over heads
    x1, x2 = _pairs(x, rot, interleaved)
    x1, x2 = x1.to(dtype), x2.to(dtype)
    # both results exist before either is stored, so out may alias x (in place)
    y1 = x1 * c1 - x2 * s1
    y2 = x2 * c2 + x1 * s2
    o1, o2 = _pairs(out, rot, interleaved)
    o1.copy_(y1)
    o2.copy_(y2)
    if rot < x.shape[-1] and not _same_memory(x, out):
        out[..., rot:].copy_(x[..., rot:])


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.stride() == b.stride() and a.shape == b.shape


def rotate_torch(
    q: torch.Tensor,
    k: torch.Tensor | None,
    q_out: torch.Tensor,
    k_out: torch.Tensor | None,
    src: RotarySource,
    *,
    interleaved: bool = False,
    conj: bool = False,
) -> None:
    """Rotate ``q`` (and ``k``) into ``q_out`` (and ``k_out``), which may be the inputs themselves.

    Tensors are ``[batch, seq, heads, head_dim]`` views; ``q`` and ``k`` may differ in head count
    (grouped-query attention). The Triton wrapper :func:`ropepatch.kernels.triton_rope.rotate_triton`
    has this same signature.
    """
    dtype = math_dtype(q.dtype, *(t.dtype for t in src.tensors if t.dtype.is_floating_point))
    tables = pair_tables(src, dtype, interleaved, conj=conj)
    _rotate_one(q, q_out, tables, src.rotary_dim, interleaved, dtype)
    if k is not None:
        assert k_out is not None
        _rotate_one(k, k_out, tables, src.rotary_dim, interleaved, dtype)


def rotary_reference(
    x: torch.Tensor, src: RotarySource, *, interleaved: bool = False, conj: bool = False
) -> torch.Tensor:
    """Out-of-place, fully differentiable (also in cos/sin) rotation of one ``[batch, seq, heads, dim]`` tensor.

    Built from differentiable ops only, so autograd through it is the independent check of the
    hand-written backward.
    """
    dtype = math_dtype(x.dtype, *(t.dtype for t in src.tensors if t.dtype.is_floating_point))
    c1, s1, c2, s2 = (t.unsqueeze(2) for t in pair_tables(src, dtype, interleaved, conj=conj))
    rot = src.rotary_dim
    x1, x2 = _pairs(x, rot, interleaved)
    x1, x2 = x1.to(dtype), x2.to(dtype)
    y1 = x1 * c1 - x2 * s1
    y2 = x2 * c2 + x1 * s2
    if interleaved:
        y = torch.stack((y1, y2), dim=-1).flatten(-2)
    else:
        y = torch.cat((y1, y2), dim=-1)
    y = y.to(x.dtype)
    if rot < x.shape[-1]:
        y = torch.cat((y, x[..., rot:]), dim=-1)
    return y


def build_cos_sin_cache(
    inv_freq: torch.Tensor, max_positions: int, attention_factor: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-width float32 ``(cos, sin)`` tables ``[max_positions, rotary_dim // 2]``, factor folded in.

    Computed as transformers computes its per-token tables (float32 angle ``pos * inv_freq``, then
    ``cos() * attention_factor``), so gathering a row equals transformers' value for that position.
    """
    pos = torch.arange(max_positions, device=inv_freq.device, dtype=torch.int64).to(torch.float32)
    angle = pos[:, None] * inv_freq.to(torch.float32)[None, :]
    return torch.cos(angle) * attention_factor, torch.sin(angle) * attention_factor
