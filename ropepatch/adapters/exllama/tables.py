"""What the ExLlama adapters hand their runtimes: frequencies per position, cos/sin factors, sin/cos tables.

ExLlamaV2 takes RoPE as data (fp16 sin/cos tables indexed by absolute position, looked up by its
kernels) and ExLlamaV3 as one ``inv_freq`` vector plus a cos/sin factor its kernel applies. Neither
recomputes anything per forward, so a spec is turned into data once, before the first forward
(CUDA graphs capture these tensors). The math stays in :meth:`RopeSpec.compute`; this module only
decides *which* lengths to evaluate it at and lays the result out the way the runtimes do.

Length-dependent specs get one of two treatments (:func:`table_policy`):

* ``context`` (LongRoPE): one frequency set, chosen for the runtime's configured context, as
  ExLlamaV2, ExLlamaV3 and vLLM do natively: long factors whenever that context exceeds the original
  one. Exact for every sequence longer than the original context and for every sequence when the
  configured context fits the original one.
* ``per-position`` (dynamic NTK and its variants, dynamic YaRN): row ``p`` of the table holds the
  angles the method gives at total length ``p + 1``. That is exactly what transformers computes when
  tokens arrive one at a time (each key is rotated, then cached, under the length at which it
  arrived). A prompt prefilled in one pass differs: transformers rotates all of its ``n`` tokens
  with the frequencies for length ``n``, the table rotates token ``p`` with those for ``p + 1``.
  Below the original context both are the unscaled RoPE, so the two only differ for prompts
  longer than it. Only a table runtime can do this; a runtime with one frequency vector refuses.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ropepatch.spec import RopeSpec

__all__ = [
    "CONTEXT",
    "PER_POSITION",
    "STATIC",
    "cos_sin_factor",
    "position_angles",
    "sincos_table",
    "table_policy",
    "unexpressible",
]

log = logging.getLogger("ropepatch")

STATIC = "static"
CONTEXT = "context"
PER_POSITION = "per-position"


def table_policy(spec: RopeSpec) -> str:
    """``static``, ``context`` or ``per-position``: how a spec becomes a fixed table (module docstring).

    Read from the method's own ``length_dependence`` (see :class:`ropepatch.methods.base.Method`).
    """
    if not spec.is_dynamic:
        return STATIC
    method = spec._method_obj
    dependence = getattr(method, "length_dependence", None) or ("curve" if method.dynamic else "static")
    if dependence == "switch":
        return CONTEXT
    return PER_POSITION


def cos_sin_factor(spec: RopeSpec, attention: float, *, head_dim: int | None, runtime_softmax: float = 1.0) -> float:
    """The factor a runtime must put on cos and sin so that logits come out as the spec says.

    ``spec.softmax_scale`` (DeepSeek's ``mscale_all_dim``) multiplies the logits; a runtime that only
    scales cos/sin gets the same logits from ``sqrt`` of it on q and k, provided the rotation covers
    the whole head. ``runtime_softmax`` is what the runtime already folds into its softmax scale.
    """
    extra = spec.softmax_scale / runtime_softmax
    if math.isclose(extra, 1.0, rel_tol=1e-12):
        return attention
    dim = spec.rotary_dim
    if head_dim is not None and dim is not None and dim < head_dim:
        log.warning(
            "ropepatch: %s asks for a softmax scale x%.6g that cannot be expressed through cos/sin of a partial "
            "rotary head (%d of %d dims); it is not applied",
            spec.method,
            extra,
            dim,
            head_dim,
        )
        return attention
    return attention * math.sqrt(extra)


def unexpressible(spec: RopeSpec) -> list[str]:
    """What of ``spec`` a sin/cos-table runtime cannot express (for a warning)."""
    problems = []
    if spec.needs_query_scaling:
        problems.append("query-only logn scaling (use_logn_attn)")
    return problems


def position_angles(
    spec: RopeSpec,
    rows: int,
    *,
    offset: int = 0,
    context: int | None = None,
    half_inv_freq: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """Rotation angles ``[rows, rotary_dim // 2]`` (float32) for positions ``0 .. rows-1`` and the cos/sin factor.

    ``offset`` shifts the position fed to the rotation (some architectures count from 1).
    ``context`` is the runtime's configured context (the ``context`` policy evaluates there; default
    ``rows``). The factor is a float, or a float32 tensor of one value per row for per-position specs
    whose factor moves with the length (dynamic YaRN). ``half_inv_freq`` rounds frequencies through
    fp16 first, for architectures whose reference implementation does (ExLlamaV2 ``rope_freq_half``).
    """
    import torch

    t = torch.arange(rows, dtype=torch.float32)
    if offset:
        t += offset
    policy = table_policy(spec)
    if policy != PER_POSITION:
        inv, attention = spec.frequencies((context or rows) if policy == CONTEXT else None)
        if half_inv_freq:
            inv = inv.half().float()
        return torch.outer(t, inv), attention

    # one frequency set per total length L = p + 1; consecutive lengths often share one (below the
    # original context, or between Qwen-1's powers of two), so equal neighbours are reused
    freq_rows: list[list[float]] = []
    factors: list[float] = []
    last: tuple[list[float], float] | None = None
    for length in range(1, rows + 1):
        inv_l, att_l = spec.compute(length)
        if last is not None and inv_l == last[0] and att_l == last[1]:
            inv_l = last[0]
        last = (inv_l, att_l)
        freq_rows.append(inv_l)
        factors.append(att_l)
    inv_t = torch.tensor(freq_rows, dtype=torch.float64).to(torch.float32)
    if half_inv_freq:
        inv_t = inv_t.half().float()
    angles = t[:, None] * inv_t
    if all(f == factors[0] for f in factors):
        return angles, factors[0]
    return angles, torch.tensor(factors, dtype=torch.float64).to(torch.float32)


def sincos_table(
    angles: torch.Tensor, factor: torch.Tensor | float, *, interleaved: bool, dtype: Any, device: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sin, cos)`` tables ``[1, 1, rows, rotary_dim]`` laid out as ExLlamaV2's kernels read them.

    NEOX style repeats the half-table (``cat``), GPT-J style interleaves it; cos and sin are
    multiplied by ``factor`` in float32 and then cast, as the runtime itself does.
    """
    import torch

    if device is not None:
        angles = angles.to(device)
    emb = torch.repeat_interleave(angles, 2, dim=-1) if interleaved else torch.cat((angles, angles), dim=-1)
    sin = emb.sin()[None, None, :, :]
    cos = emb.cos()[None, None, :, :]
    if isinstance(factor, float):
        if factor != 1.0:
            sin *= factor
            cos *= factor
    else:
        f = factor.to(sin.device)[None, None, :, None]
        sin *= f
        cos *= f
    return sin.to(dtype), cos.to(dtype)
