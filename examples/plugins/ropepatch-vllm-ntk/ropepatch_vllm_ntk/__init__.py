"""A third-party ropepatch plugin that adds one scaling method.

vLLM's ``ntk`` rope type is not bloc97's NTK-aware formula (ropepatch's ``ntk``): it scales the base
by ``s`` and the frequencies by ``s^(-2/d)``. Registering it lets ropepatch read checkpoints that
name it and apply it in every runtime ropepatch patches.
"""

from __future__ import annotations

from ropepatch import Method, Prepared, hookimpl, require_dim


class VllmNTK(Method):
    name = "vllm-ntk"
    aliases = ("ntk-mixed",)
    formula = "inv_freq[i] = (b*s)^(-2i/d) / s^(2/d)"
    uses_factor = "required"

    def compute(self, spec, prepared: Prepared, seq_len):
        d = require_dim(spec)
        s = prepared.factor
        base = spec.rope_theta * s
        return [base ** (-(2 * i) / d) / s ** (2 / d) for i in range(d // 2)], 1.0


@hookimpl
def register_methods(register):
    register(VllmNTK())
