"""``enable(kernels=True)``: route a model family's ``apply_rotary_pos_emb`` through the fused kernel.

The wrapper (:func:`ropepatch.kernels.dispatch.wrap_apply_rotary_pos_emb`) sends CUDA tensors to the
Triton kernel and every other call to transformers' own function, so CPU models are unchanged. Only
modules whose function has transformers' ``(q, k, cos, sin, ...)`` form are wrapped; attention code
looks the function up as a module global at call time, so replacing the global is enough. Since
transformers 5.25 the global is a small torch Module wrapping the function (the `kernels` package's
hub hook); it is wrapped the same way, and every call the kernel does not take still goes through it.
"""

from __future__ import annotations

import inspect
import sys

from ropepatch.patching import PatchSet

__all__ = ["route_to_kernels"]

#: families whose tables pair (2i, 2i+1) across a full-width, interleaved table
INTERLEAVED = frozenset({"cohere", "cohere2"})
#: families where a table narrower than head_dim rotates the first dims and passes the rest
PARTIAL = frozenset({"gpt_neox", "phi", "persimmon", "stablelm", "phi3", "gpt_neox_japanese"})
#: families whose apply_rotary_pos_emb means something else (narrow tables, other signatures)
SKIP = frozenset({"glm", "glm4", "chatglm", "gptj", "codegen"})


def route_to_kernels(patches: PatchSet, model_cls: type) -> bool:
    """Wrap the ``apply_rotary_pos_emb`` of ``model_cls``'s modeling module (restorable); True if wrapped."""
    module = sys.modules.get(model_cls.__module__)
    fn = getattr(module, "apply_rotary_pos_emb", None)
    if module is None or fn is None or getattr(fn, "__ropepatch__", False):
        return False
    family = model_cls.__module__.rsplit(".", 1)[-1].removeprefix("modeling_")
    if family in SKIP:
        return False
    try:
        names = list(inspect.signature(fn).parameters)[:4]
        if names != ["q", "k", "cos", "sin"] and callable(getattr(fn, "forward", None)):
            # transformers >= 5.25 (through its `kernels` dependency) turns the function into a torch
            # Module whose forward has the function's signature; calling the module still runs it
            names = list(inspect.signature(fn.forward).parameters)[:4]
    except (TypeError, ValueError):
        return False
    if names != ["q", "k", "cos", "sin"]:
        return False
    from ropepatch.kernels.dispatch import wrap_apply_rotary_pos_emb

    wrapped = wrap_apply_rotary_pos_emb(fn, interleaved=family in INTERLEAVED, partial=family in PARTIAL)
    patches.set(module, "apply_rotary_pos_emb", wrapped)
    return True
