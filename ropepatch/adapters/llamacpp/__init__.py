"""llama-cpp-python adapter: ``llama_cpp.Llama(model_path=...)`` gets the GGUF's resolved RoPE scaling.

llama.cpp reads RoPE scaling from its GGUF keys or from context parameters; a GGUF converted without
its scaling keys (a YaRN model written as plain RoPE, a SuperHOT model whose factor lives in its name)
runs with the wrong positions. With ropepatch enabled, ``Llama.__init__`` (which ``Llama.from_pretrained``
also calls) reads the GGUF header, resolves the spec with the usual precedence (``enable()``'s overrides
and per-model mappings > ``$ROPEPATCH`` > known checkpoints > the GGUF's keys) and passes the
constructor arguments :mod:`ropepatch.llamacpp` translates it to (``rope_scaling_type``,
``rope_freq_base``, ``rope_freq_scale``, ``yarn_*``, and a ``kv_overrides`` entry for an attention
factor). Arguments the caller gave explicitly win, key by key (``kv_overrides`` are merged, the
caller's keys first). ``n_ctx`` stays the caller's: the effective context is logged, not allocated.

A method llama.cpp cannot run (dynamic NTK, part-NTK, Qwen-1 log-n, ...) is refused by name with the
closest method it can run: a warning and the GGUF's own settings, or (``strict=True``) the error.
``disable()`` restores ``Llama.__init__``.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

from ropepatch.adapters.base import Adapter, Capability
from ropepatch.errors import RopeConfigError
from ropepatch.hookspecs import hookimpl
from ropepatch.patching import PatchSet

__all__ = ["LlamaCppAdapter"]

log = logging.getLogger("ropepatch")

#: the constructor arguments the translation may set
ROPE_ARGUMENTS = (
    "rope_scaling_type",
    "rope_freq_base",
    "rope_freq_scale",
    "yarn_ext_factor",
    "yarn_attn_factor",
    "yarn_beta_fast",
    "yarn_beta_slow",
    "yarn_orig_ctx",
)


class LlamaCppAdapter(Adapter):
    """``llama_cpp.Llama``'s constructor, for GGUF files."""

    name = "llama-cpp-python"
    distribution = "llama_cpp_python"
    # Executed against 0.3.36 (compat/llamacpp). Older releases have the same constructor but vendor a
    # llama.cpp that derived YaRN's attn_factor before ggml-org/llama.cpp#17945; not verified, not patched.
    floor = "0.3.36"
    tested_up_to = "0.3.36"
    trigger = "llama_cpp.llama"
    capabilities = (Capability(trigger, "Llama.__init__", ("model_path", "kv_overrides", *ROPE_ARGUMENTS)),)

    def install(self, patches: PatchSet, state: Any) -> None:
        import sys

        llama_cls = sys.modules[self.trigger].Llama
        original = llama_cls.__init__
        signature = inspect.signature(original)
        adapter = self

        @functools.wraps(original)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            if adapter.is_live(state):
                kwargs = adapter.arguments(state, signature, self, args, kwargs)
            original(self, *args, **kwargs)

        patches.set(llama_cls, "__init__", __init__)

    def arguments(
        self, state: Any, signature: inspect.Signature, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """``kwargs`` with the spec's arguments added where the caller gave none."""
        try:
            bound = signature.bind_partial(obj, *args, **kwargs).arguments
        except TypeError:
            return kwargs  # let Llama raise its own error
        path = bound.get("model_path")
        if not isinstance(path, str) or not path:
            return kwargs
        spec = self.spec_for(state, path, label=path, keep_own="llama.cpp keeps the GGUF's own RoPE settings")
        if spec is None:
            return kwargs
        from ropepatch.llamacpp import settings_for_gguf

        try:
            settings, facts = settings_for_gguf(path, spec)
        except RopeConfigError as exc:
            if state.strict:
                raise
            self.say_once(
                ("refused", path, str(exc)),
                f"ropepatch: {exc}; llama.cpp keeps the GGUF's own RoPE settings",
                warn=True,
            )
            return kwargs
        wanted = settings.llama_kwargs(facts.arch, context=False)
        out = dict(kwargs)
        kept = []
        for key, value in wanted.items():
            if key == "kv_overrides":
                given = bound.get("kv_overrides") or {}
                merged = {**value, **given}
                out["kv_overrides"] = merged
                kept += [k for k in value if k in given]
                continue
            if key in bound:
                kept.append(key)
                continue
            out[key] = value
        before = "the GGUF's own RoPE settings"
        self.changed(spec, model=path, before=before)
        message = f"ropepatch: {path}: {settings.describe()}"
        if kept:
            message += f"; kept the caller's {', '.join(kept)}"
        if settings.context:
            message += f"; effective context {settings.context} (pass n_ctx to use it)"
        self.say_once(("applied", path, spec.to_json()), message)
        return out


@hookimpl
def register_adapters(register: Any) -> None:
    register(LlamaCppAdapter())
