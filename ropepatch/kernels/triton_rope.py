"""The fused rotary Triton kernel: q and k rotated in one launch, in place or into new tensors.

One program handles a tile of ``BLOCK_T`` tokens x ``BLOCK_H`` heads x all rotary pairs of one of
q or k; the second grid axis walks q's head blocks and then k's, so q and k (any head counts,
grouped-query included) take one launch. Per token the program builds cos/sin once and reuses
them for every head of its tile, from one of three sources (a ``constexpr``):

* ``SOURCE_TABLE``: per-token tables ``[batch|1, seq, W]`` (transformers' ``position_embeddings``);
* ``SOURCE_INDEXED``: a ``[max_positions, W]`` cache gathered by int64 position ids in the kernel;
* ``SOURCE_FREQS``: table-free, ``cos/sin(float32(pos) * inv_freq) * attention_factor`` in the kernel
  (no O(context x rotary_dim) memory).

Every load is upcast to float32 right away (the Triton interpreter computes bf16 arithmetic on raw
bit patterns, and float32 math is what the kernel promises anyway); only the stores round. Both
halves of a pair are loaded before either is stored, so in-place is safe. All strides are passed,
so fused-qkv views, transformers' transposed ``[batch, heads, seq, dim]`` layout and expanded
tables work without copies; a unit stride is specialised by Triton, which keeps loads vectorised.

Importing this module imports triton and decorates the kernel: ``TRITON_INTERPRET=1`` must be set
before that to run it on CPU tensors (the tests do so).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ropepatch.kernels.reference import RotarySource

__all__ = ["INTERPRETED", "launch_config", "rotate_triton"]

SOURCE_TABLE = 0
SOURCE_INDEXED = 1
SOURCE_FREQS = 2
_SOURCE_CODES = {"table": SOURCE_TABLE, "indexed": SOURCE_INDEXED, "freqs": SOURCE_FREQS}
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _rotate_heads(
    x_ptr,
    o_ptr,
    sx_b,
    sx_s,
    sx_h,
    sx_d,
    so_b,
    so_s,
    so_h,
    so_d,
    n_heads,
    h0,
    b,
    s,
    tmask,
    off1,
    off2,
    dmask,
    c1,
    s1,
    c2,
    s2,
    ROT: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    TAIL_PAD: tl.constexpr,
    COPY_TAIL: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    h = (h0 + tl.arange(0, BLOCK_H)).to(tl.int64)
    hmask = h < n_heads
    # [BLOCK_T, BLOCK_H, 1] row bases; int64 so huge tensors don't overflow the offsets
    xrow = b[:, None, None] * sx_b + s[:, None, None] * sx_s + h[None, :, None] * sx_h
    orow = b[:, None, None] * so_b + s[:, None, None] * so_s + h[None, :, None] * so_h
    rmask = tmask[:, None, None] & hmask[None, :, None]
    mask = rmask & dmask[None, None, :]
    d1 = off1[None, None, :]
    d2 = off2[None, None, :]
    x1 = tl.load(x_ptr + xrow + d1 * sx_d, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + xrow + d2 * sx_d, mask=mask, other=0.0).to(tl.float32)
    y1 = x1 * c1[:, None, :] - x2 * s1[:, None, :]
    y2 = x2 * c2[:, None, :] + x1 * s2[:, None, :]
    tl.store(o_ptr + orow + d1 * so_d, y1.to(o_ptr.dtype.element_ty), mask=mask)
    tl.store(o_ptr + orow + d2 * so_d, y2.to(o_ptr.dtype.element_ty), mask=mask)
    if COPY_TAIL:
        # out of place with partial rotary: the pass-through dims are copied bit for bit
        e = ROT + tl.arange(0, TAIL_PAD)
        emask = rmask & (e < HEAD_DIM)[None, None, :]
        tail = tl.load(x_ptr + xrow + e[None, None, :] * sx_d, mask=emask, other=0.0)
        tl.store(o_ptr + orow + e[None, None, :] * so_d, tail.to(o_ptr.dtype.element_ty), mask=emask)


@triton.jit
def _rope_kernel(
    q_ptr,
    k_ptr,
    qo_ptr,
    ko_ptr,
    cos_ptr,
    sin_ptr,
    pos_ptr,
    inv_ptr,
    n_tokens,
    seq_len,
    n_q_heads,
    n_k_heads,
    n_q_blocks,
    sq_b,
    sq_s,
    sq_h,
    sq_d,
    sqo_b,
    sqo_s,
    sqo_h,
    sqo_d,
    sk_b,
    sk_s,
    sk_h,
    sk_d,
    sko_b,
    sko_s,
    sko_h,
    sko_d,
    sc_b,
    sc_s,
    sc_d,
    ss_b,
    ss_s,
    ss_d,
    sp_b,
    sp_s,
    n_cache_rows,
    attention_factor,
    SOURCE: tl.constexpr,
    TABLE_HALF: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    CONJ: tl.constexpr,
    HAS_K: tl.constexpr,
    COPY_TAIL: tl.constexpr,
    ROT: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HALF_PAD: tl.constexpr,
    TAIL_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_h = tl.program_id(1)
    HALF: tl.constexpr = ROT // 2

    t = (pid_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    tmask = t < n_tokens
    b = t // seq_len
    s = t - b * seq_len

    d = tl.arange(0, HALF_PAD)
    dmask = d < HALF
    if INTERLEAVED:
        off1 = 2 * d
        off2 = 2 * d + 1
    else:
        off1 = d
        off2 = d + HALF
    mask2 = tmask[:, None] & dmask[None, :]

    if SOURCE == 2:
        pos = tl.load(pos_ptr + b * sp_b + s * sp_s, mask=tmask, other=0)
        inv = tl.load(inv_ptr + d, mask=dmask, other=0.0).to(tl.float32)
        angle = pos.to(tl.float32)[:, None] * inv[None, :]
        c1 = tl.cos(angle) * attention_factor
        s1 = tl.sin(angle) * attention_factor
        c2 = c1
        s2 = s1
    else:
        if SOURCE == 1:
            row = tl.load(pos_ptr + b * sp_b + s * sp_s, mask=tmask, other=0).to(tl.int64)
            # never read outside the cache; the wrapper validates positions when asked to
            mask2 = mask2 & ((row >= 0) & (row < n_cache_rows))[:, None]
            crow = row * sc_s
            srow = row * ss_s
        else:
            crow = b * sc_b + s * sc_s
            srow = b * ss_b + s * ss_s
        if TABLE_HALF:
            c1 = tl.load(cos_ptr + crow[:, None] + d[None, :] * sc_d, mask=mask2, other=0.0).to(tl.float32)
            s1 = tl.load(sin_ptr + srow[:, None] + d[None, :] * ss_d, mask=mask2, other=0.0).to(tl.float32)
            c2 = c1
            s2 = s1
        else:
            c1 = tl.load(cos_ptr + crow[:, None] + off1[None, :] * sc_d, mask=mask2, other=0.0).to(tl.float32)
            s1 = tl.load(sin_ptr + srow[:, None] + off1[None, :] * ss_d, mask=mask2, other=0.0).to(tl.float32)
            c2 = tl.load(cos_ptr + crow[:, None] + off2[None, :] * sc_d, mask=mask2, other=0.0).to(tl.float32)
            s2 = tl.load(sin_ptr + srow[:, None] + off2[None, :] * ss_d, mask=mask2, other=0.0).to(tl.float32)
    if CONJ:
        # the adjoint of the forward: rotation by -theta
        tmp = s1
        s1 = -s2
        s2 = -tmp

    if HAS_K:
        if pid_h < n_q_blocks:
            _rotate_heads(
                q_ptr, qo_ptr, sq_b, sq_s, sq_h, sq_d, sqo_b, sqo_s, sqo_h, sqo_d,
                n_q_heads, pid_h * BLOCK_H, b, s, tmask, off1, off2, dmask, c1, s1, c2, s2,
                ROT, HEAD_DIM, TAIL_PAD, COPY_TAIL, BLOCK_H,
            )  # fmt: skip
        else:
            _rotate_heads(
                k_ptr, ko_ptr, sk_b, sk_s, sk_h, sk_d, sko_b, sko_s, sko_h, sko_d,
                n_k_heads, (pid_h - n_q_blocks) * BLOCK_H, b, s, tmask, off1, off2, dmask, c1, s1, c2, s2,
                ROT, HEAD_DIM, TAIL_PAD, COPY_TAIL, BLOCK_H,
            )  # fmt: skip
    else:
        _rotate_heads(
            q_ptr, qo_ptr, sq_b, sq_s, sq_h, sq_d, sqo_b, sqo_s, sqo_h, sqo_d,
            n_q_heads, pid_h * BLOCK_H, b, s, tmask, off1, off2, dmask, c1, s1, c2, s2,
            ROT, HEAD_DIM, TAIL_PAD, COPY_TAIL, BLOCK_H,
        )  # fmt: skip


def _interpreted() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_rope_kernel, InterpretedFunction)


INTERPRETED: bool = _interpreted()
"""True when the kernel was decorated under ``TRITON_INTERPRET=1`` (runs on CPU tensors, slowly)."""


def launch_config(n_tokens: int, max_heads: int, rotary_dim: int, *, interpreted: bool) -> tuple[int, int, int]:
    """``(BLOCK_T, BLOCK_H, num_warps)`` for a launch, chosen per backend (no autotuning).

    On a GPU a tile holds about 2048 rotary pairs (4096 elements of q or k): small enough for the
    registers, large enough that each program's cos/sin serve several heads and tokens. The
    interpreter runs programs one after another in Python, so there few large tiles are fastest.
    """
    half_pad = triton.next_power_of_2(max(rotary_dim // 2, 1))
    token_pad = triton.next_power_of_2(max(n_tokens, 1))
    head_pad = triton.next_power_of_2(max(max_heads, 1))
    if interpreted:
        return min(token_pad, 64), head_pad, 1
    block_h = min(head_pad, 8)
    block_t = max(1, min(token_pad, 2048 // (block_h * half_pad)))
    return block_t, block_h, 4


def _table_strides(t: torch.Tensor, batch: int, seq: int) -> tuple[int, int, int]:
    if t.dim() == 2:
        t = t.unsqueeze(0)
    # expand() turns broadcast dimensions into stride-0 ones without copying
    e = t.expand(batch, seq, t.shape[-1])
    return e.stride(0), e.stride(1), e.stride(2)


def rotate_triton(
    q: torch.Tensor,
    k: torch.Tensor | None,
    q_out: torch.Tensor,
    k_out: torch.Tensor | None,
    src: RotarySource,
    *,
    interleaved: bool = False,
    conj: bool = False,
    block: tuple[int, int] | None = None,
) -> None:
    """Rotate ``q`` (and ``k``) into ``q_out`` (and ``k_out``) with one kernel launch.

    Same contract as :func:`ropepatch.kernels.reference.rotate_torch`: ``[batch, seq, heads, dim]``
    views with any strides, outputs may be the inputs (in place), float16/bfloat16/float32.
    ``block=(BLOCK_T, BLOCK_H)`` overrides the tile of :func:`launch_config` (powers of two; for tuning
    and for tests that exercise the GPU tiling under the interpreter).
    """
    if not q.is_cuda and not INTERPRETED:
        raise RuntimeError(
            "the Triton rotary kernel needs CUDA tensors, or TRITON_INTERPRET=1 set before "
            "ropepatch.kernels.triton_rope is imported (CPU interpreter)"
        )
    tensors = [q, q_out] + ([k, k_out] if k is not None else [])
    for t in tensors:
        if t is None:
            raise ValueError("k_out is required when k is given")
        if t.dtype not in _DTYPES:
            raise TypeError(f"the Triton rotary kernel takes float16, bfloat16 or float32, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"expected [batch, seq, heads, head_dim] tensors, got shape {tuple(t.shape)}")
    batch, seq, n_q, head_dim = q.shape
    if q_out.shape != q.shape:
        raise ValueError(f"q_out shape {tuple(q_out.shape)} differs from q {tuple(q.shape)}")
    n_k = 0
    if k is not None:
        assert k_out is not None
        if k.shape[:2] != q.shape[:2] or k.shape[3] != head_dim or k_out.shape != k.shape:
            raise ValueError(f"k shape {tuple(k.shape)} does not match q {tuple(q.shape)}")
        n_k = k.shape[2]
    rot = src.rotary_dim
    if rot > head_dim:
        raise ValueError(f"rotary_dim {rot} exceeds head_dim {head_dim}")
    n_tokens = batch * seq
    if n_tokens == 0 or (n_q == 0 and n_k == 0):
        return

    dummy = q  # stands in for pointers a constexpr branch never reads
    cos = sin = pos = inv = dummy
    sc = ss = (0, 0, 0)
    sp = (0, 0)
    n_rows = 0
    if src.kind in ("indexed", "freqs"):
        assert src.positions is not None
        pos = src.positions if src.positions.dim() == 2 else src.positions.unsqueeze(0)
        pos_e = pos.expand(batch, seq)
        sp = (pos_e.stride(0), pos_e.stride(1))
    if src.kind == "freqs":
        assert src.inv_freq is not None
        inv = src.inv_freq.to(torch.float32).contiguous()
    else:
        assert src.cos is not None and src.sin is not None
        cos, sin = src.cos, src.sin
        if src.kind == "indexed":
            n_rows = cos.shape[0]
            sc = (0, cos.stride(0), cos.stride(1))
            ss = (0, sin.stride(0), sin.stride(1))
        else:
            sc = _table_strides(cos, batch, seq)
            ss = _table_strides(sin, batch, seq)

    block_t, block_h, num_warps = launch_config(n_tokens, max(n_q, n_k), rot, interpreted=INTERPRETED)
    if block is not None:
        block_t, block_h = block
        if block_t < 1 or block_h < 1 or block_t & (block_t - 1) or block_h & (block_h - 1):
            raise ValueError(f"block sizes must be powers of two, got {block}")
    n_q_blocks = triton.cdiv(n_q, block_h)
    n_k_blocks = triton.cdiv(n_k, block_h) if k is not None else 0
    grid = (triton.cdiv(n_tokens, block_t), n_q_blocks + n_k_blocks)
    kk = k if k is not None else q
    ko = k_out if k_out is not None else q_out
    copy_tail = rot < head_dim and not (
        q_out.data_ptr() == q.data_ptr() and q_out.stride() == q.stride()
        and (k is None or (ko.data_ptr() == kk.data_ptr() and ko.stride() == kk.stride()))
    )  # fmt: skip
    _rope_kernel[grid](
        q, kk, q_out, ko, cos, sin, pos, inv,
        n_tokens, seq, n_q, n_k, n_q_blocks,
        *q.stride(), *q_out.stride(), *kk.stride(), *ko.stride(),
        *sc, *ss, *sp, n_rows, float(src.attention_factor),
        SOURCE=_SOURCE_CODES[src.kind],
        TABLE_HALF=bool(src.half),
        INTERLEAVED=bool(interleaved),
        CONJ=bool(conj),
        HAS_K=k is not None,
        COPY_TAIL=copy_tail,
        ROT=rot,
        HEAD_DIM=head_dim,
        HALF_PAD=triton.next_power_of_2(rot // 2),
        TAIL_PAD=triton.next_power_of_2(max(head_dim - rot, 1)),
        BLOCK_T=block_t,
        BLOCK_H=block_h,
        num_warps=num_warps,
    )  # fmt: skip
