"""Plain RoPE and linear position interpolation (PI / SuperHOT)."""

from __future__ import annotations

from typing import Any

from ropepatch.hookspecs import hookimpl
from ropepatch.methods.base import Method, Prepared, default_inv_freq, require_dim


class Default(Method):
    name = "default"
    aliases = ("none", "rope", "baked-theta")
    formula = "inv_freq[i] = b^(-2i/d)"
    transformers_type = "default"

    def compute(self, spec: Any, prepared: Prepared, seq_len: int | None) -> tuple[list[float], float]:
        return default_inv_freq(spec.rope_theta, require_dim(spec)), 1.0


class Linear(Method):
    name = "linear"
    aliases = ("pi", "position-interpolation", "superhot", "compress-pos-emb")
    formula = "inv_freq[i] = b^(-2i/d) / s   (positions m -> m/s)"
    uses_factor = "required"
    uses_original = "optional"
    transformers_type = "linear"

    def compute(self, spec: Any, prepared: Prepared, seq_len: int | None) -> tuple[list[float], float]:
        s = prepared.s
        return [f / s for f in default_inv_freq(spec.rope_theta, require_dim(spec))], 1.0

    def effective_context(self, spec: Any, prepared: Prepared) -> int | None:
        if prepared.original_max_position_embeddings is None:
            return spec.max_position_embeddings
        return super().effective_context(spec, prepared)


@hookimpl
def register_methods(register: Any) -> None:
    register(Default())
    register(Linear())
