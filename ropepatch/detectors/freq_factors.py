"""Per-dimension frequency divisors (llama.cpp's ``rope_freqs`` tensor) read back as Llama 3.1's rule.

llama.cpp's converter bakes ``llama3`` scaling into one divisor per rotary frequency, computed in float32:
1 where the wavelength is below ``L0/high_freq_factor``, ``factor`` above ``L0/low_freq_factor``, and
``1/((1-smooth)/factor + smooth)`` between, with ``smooth = (L0/wavelength - low)/(high - low)``.

Reading it back: ``factor`` is the last divisor; in the ramp ``smooth`` follows from each divisor and is
linear in ``1/wavelength``, which gives the two band edges ``L0/low`` and ``L0/high`` (a least-squares line
through the ramp dims). The vector fixes only those two ratios, so ``low_freq_factor = 1`` (every published
Llama 3.x config) is assumed unless the file states the original context. A candidate is accepted only
when ropepatch's own ``llama3`` math gives back every divisor to float32 precision; otherwise the caller
keeps the vector as ``per-dim``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ropepatch.errors import RopeConfigError
from ropepatch.methods.base import default_inv_freq

__all__ = ["F32_TOLERANCE", "llama3_from_divisors"]

#: relative agreement required: llama.cpp computes the vector in float32 (measured: within 4 float32 ulps
#: of the float64 rule for Llama 3.1/3.2 shapes); 8 ulps of 2**-23 leaves room and nothing more
F32_TOLERANCE = 8 * 2.0**-23
#: Meta's reference hard-codes these; tried when the ramp has fewer than two dims to fit a line through
_PUBLISHED = (8192, 1.0, 4.0)


def llama3_from_divisors(
    divisors: Sequence[float], base: float, dim: int, original: int | None = None
) -> tuple[dict[str, Any], str] | None:
    """``({factor, low_freq_factor, high_freq_factor, original_max_position_embeddings}, note)`` when
    ``divisors`` is exactly the llama3 rule for this base and rotary dim, else None."""
    n = len(divisors)
    if n < 2 or dim != 2 * n or not base > 1:
        return None
    s = float(divisors[-1])
    if not s > 1 + F32_TOLERANCE:
        return None
    if any(r < 1 - F32_TOLERANCE or r > s * (1 + F32_TOLERANCE) for r in divisors):
        return None  # llama3 only divides, and never by more than its factor
    if any(b < a * (1 - F32_TOLERANCE) for a, b in zip(divisors[:-1], divisors[1:], strict=True)):
        return None  # the divisor grows with the wavelength
    wavelengths = [2 * math.pi / f for f in default_inv_freq(base, dim)]
    ramp = [i for i, r in enumerate(divisors) if not _close(r, 1.0) and not _close(r, s)]
    if len(ramp) >= 2:
        edges = _band_edges([wavelengths[i] for i in ramp], [divisors[i] for i in ramp], s)
        if edges is None:
            return None
        candidates = _candidates(*edges, original)
    else:
        # too few ramp dims to fit the band edges: the published constants (the file's context if stated)
        candidates = [(original or _PUBLISHED[0], _PUBLISHED[1], _PUBLISHED[2])]
    for L0, low, high in candidates:
        for factor in dict.fromkeys((s, round(s, 4))):
            if _reproduces(divisors, base, dim, factor, L0, low, high):
                params = {
                    "factor": factor,
                    "low_freq_factor": low,
                    "high_freq_factor": high,
                    "original_max_position_embeddings": L0,
                }
                how = "the file's original context" if original is not None else "low_freq_factor = 1"
                note = (
                    f"rope_freqs: {n} divisors = llama3 (factor {factor:g}, bands L0/low = {L0 / low:g}, "
                    f"L0/high = {L0 / high:g} tokens); the vector fixes only those two ratios, {how} fixes the rest"
                )
                return params, note
    return None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= F32_TOLERANCE * max(abs(a), abs(b))


def _band_edges(wavelengths: list[float], divisors: list[float], s: float) -> tuple[float, float] | None:
    """``(L0/low, L0/high)`` from the ramp: ``smooth(1/wavelength)`` fitted by a least-squares line."""
    xs = [1.0 / w for w in wavelengths]
    ys = [(1.0 / r - 1.0 / s) / (1.0 - 1.0 / s) for r in divisors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    icpt = my - slope * mx
    # smooth = (u - u_lo)/(u_hi - u_lo) with u = 1/wavelength: slope = 1/(u_hi - u_lo), icpt = -u_lo * slope
    if not (slope > 0 and icpt < 0):
        return None
    return slope / -icpt, slope / (1.0 - icpt)


def _candidates(w_lo: float, w_hi: float, original: int | None) -> list[tuple[int, float, float]]:
    """``(L0, low, high)`` to verify, the roundest first: fitted edges carry float32 noise (~1e-6)."""
    out: list[tuple[int, float, float]] = []
    if original is not None:
        contexts = [original]
    else:
        contexts = list(dict.fromkeys([round(w_lo), _PUBLISHED[0]]))
    for L0 in contexts:
        if L0 <= 0:
            continue
        for digits in (0, 1, 2, 3, 4, None):
            low = _round(L0 / w_lo, digits)
            high = _round(L0 / w_hi, digits)
            if low > 0 and high > low:
                out.append((int(L0), low, high))
    return list(dict.fromkeys(out))


def _round(x: float, digits: int | None) -> float:
    return x if digits is None else float(round(x, digits))


def _reproduces(
    divisors: Sequence[float], base: float, dim: int, factor: float, L0: int, low: float, high: float
) -> bool:
    """True when ropepatch's llama3 gives back every divisor (plain inv_freq / llama3 inv_freq)."""
    from ropepatch.spec import RopeSpec

    try:
        spec = RopeSpec(
            method="llama3",
            rope_theta=base,
            rotary_dim=dim,
            factor=factor,
            original_max_position_embeddings=L0,
            params={"low_freq_factor": low, "high_freq_factor": high},
        )
        scaled, _ = spec.compute(None)
    except RopeConfigError:
        return False
    plain = default_inv_freq(base, dim)
    return all(_close(p / q, r) for p, q, r in zip(plain, scaled, divisors, strict=True))
