"""Fused rotary kernels: one Triton launch rotates q and k, with a plain PyTorch path beside it.

Importing this package imports neither torch nor triton; :mod:`ropepatch.kernels.dispatch` (the entry
points) loads torch on first use and triton only when a CUDA tensor asks for the kernel.

Modules:

* :mod:`ropepatch.kernels.reference` - the PyTorch path (CPU, no Triton) and the oracle of the tests.
* :mod:`ropepatch.kernels.triton_rope` - the Triton kernel and its host wrapper.
* :mod:`ropepatch.kernels.ops` - the custom ops ``ropepatch::rotary`` (autograd: rotation by -theta)
  and ``ropepatch::rotary_`` (in place), registered when the entry points are first used, so
  ``torch.compile(fullgraph=True)`` traces through every entry point (torch >= 2.4).
* :mod:`ropepatch.kernels.dispatch` - the public entry points (``apply_rotary``,
  ``apply_rotary_table_free``, ``apply_rotary_cached``, ``RotaryCache``, ``wrap_apply_rotary_pos_emb``);
  on torch < 2.4 they use an autograd Function instead of the ops (same values, graph breaks).

The switch :func:`set_enabled` is what ``ropepatch.enable(kernels=True)`` flips: while it is off
(the default) a wrapped ``apply_rotary_pos_emb`` calls transformers' own function for every tensor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ropepatch.kernels.dispatch import (
        RotaryCache,
        apply_rotary,
        apply_rotary_cached,
        apply_rotary_table_free,
        select_backend,
        wrap_apply_rotary_pos_emb,
    )

__all__ = [
    "RotaryCache",
    "apply_rotary",
    "apply_rotary_cached",
    "apply_rotary_table_free",
    "is_enabled",
    "routes_cpu",
    "select_backend",
    "set_enabled",
    "triton_status",
    "wrap_apply_rotary_pos_emb",
]

_enabled = False
_route_cpu = False
_triton_status: tuple[bool, str] | None = None

_LAZY = {
    name: ("ropepatch.kernels.dispatch", name)
    for name in (
        "RotaryCache",
        "apply_rotary",
        "apply_rotary_cached",
        "apply_rotary_table_free",
        "select_backend",
        "wrap_apply_rotary_pos_emb",
    )
}


def set_enabled(flag: bool, *, cpu: bool = False) -> None:
    """Route CUDA tensors of wrapped ``apply_rotary_pos_emb`` functions to the Triton kernel (or stop).

    ``ropepatch.enable(kernels=True)`` calls ``set_enabled(True)``; ``ropepatch.disable()`` calls
    ``set_enabled(False)``. CPU tensors never go to the kernel. By default they keep transformers'
    own function (bit-identical); ``cpu=True`` sends them through the same custom op as CUDA tensors,
    running its PyTorch implementation (float32 math) - a way to test or ``torch.compile`` the
    kernel route of a model without a GPU.
    """
    global _enabled, _route_cpu
    _enabled = bool(flag)
    _route_cpu = bool(flag) and bool(cpu)


def is_enabled() -> bool:
    """True while wrapped ``apply_rotary_pos_emb`` functions route CUDA tensors to the kernel."""
    return _enabled


def routes_cpu() -> bool:
    """True while wrapped functions also send CPU tensors through the op (``set_enabled(True, cpu=True)``)."""
    return _route_cpu


def triton_status() -> tuple[bool, str]:
    """``(True, version)`` when triton imports here, else ``(False, why)``; imports triton once."""
    global _triton_status
    if _triton_status is None:
        try:
            import triton
        except Exception as exc:  # ImportError, or a broken install raising anything at import
            _triton_status = (False, f"triton cannot be imported: {type(exc).__name__}: {exc}")
        else:
            _triton_status = (True, str(getattr(triton, "__version__", "unknown")))
    return _triton_status


def __getattr__(name: str) -> Any:
    # PEP 562: torch loads only when an entry point is first used
    from ropepatch._lazy import load_lazy

    return load_lazy(globals(), _LAZY, "ropepatch.kernels", name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
