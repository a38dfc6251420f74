"""ExLlamaV3 adapter: every ``RoPE`` module gets the detected spec's frequencies and cos/sin factor.

ExLlamaV3 describes a layer's RoPE with ``exllamav3.util.rope.RopeSettings`` (read from config.json
by ``Config.read_rope_settings_default``) and builds a ``RoPE`` module from it when a layer loads.
The module holds one ``inv_freq`` vector and an ``attn_factor``; its kernel computes sin/cos from
them per token, and CUDA graphs capture both. The adapter wraps ``RoPE.__init__`` in place (layers
bind the class with ``from ..util.rope import RoPE``, so the class itself must change): the runtime
initialises the module as usual (falling back to its plain RoPE for types it does not know, such
as ``dynamic``), then ``inv_freq`` and ``attn_factor`` are replaced with the spec's. Everything else
the runtime set up stays: M-RoPE sections, Llama-4 query temperature, rotate dims.

Which settings are patched: those the architecture read from the model's config (tagged by a
wrapper around ``read_rope_settings_default``). Settings the architecture pins to plain RoPE
(``override_type="default"``: sliding-window layers of OLMo-3 and Laguna) or builds from an empty
dict (Gemma-3 local layers) keep the runtime's RoPE. A model whose spec is plain RoPE with nothing
overridden is left entirely to the runtime.

Fixed here: methods ExLlamaV3 rejects (``Unknown rope_type``: dynamic, NTK, part-NTK, NTK-by-parts,
NTK-Margin/NTK-YaRN), and YaRN's factor, which ExLlamaV3 recomputes as
``max_position_embeddings / original`` whenever the original context is given (a Qwen-style config
with max 32768, factor 4, original 32768 gets factor 1 and no temperature). ExLlamaV3 has no scale or
alpha knobs of its own to neutralise.

Dynamic methods are refused with an error naming the way out: one frequency vector per module cannot
follow the sequence length, and the kernel's per-position angle-table mode serves one batch row
only. LongRoPE picks its factor set for ``override_max_position_embeddings`` (Phi-3's
``Config.override_dynamic_seq_len``) or ``max_position_embeddings``, as ExLlamaV3 does itself.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import threading
from typing import Any

from ropepatch.adapters.base import Adapter, Capability
from ropepatch.adapters.exllama.tables import (
    CONTEXT,
    PER_POSITION,
    cos_sin_factor,
    table_policy,
    unexpressible,
)
from ropepatch.errors import RopeConfigError
from ropepatch.hookspecs import hookimpl
from ropepatch.patching import PatchSet

__all__ = ["ExLlamaV3Adapter", "settings_view"]

log = logging.getLogger("ropepatch")

#: where the tag set by the ``read_rope_settings_default`` wrapper lives on a RopeSettings
_TAG = "_ropepatch_origin"
#: rope types ExLlamaV3 itself computes (1.0 - 1.6); other types make ``RoPE.__init__`` raise
_NATIVE_TYPES = frozenset({"default", "mrope", "proportional", "llama3", "linear", "yarn", "longrope", "su"})


@dataclasses.dataclass(frozen=True)
class _Origin:
    directory: str
    whole_config: bool  # the settings were read from the model's own config dict (not a sub-dict)


def settings_view(settings: Any, origin: Any = None) -> Any:
    """A :class:`~ropepatch.metadata.view.ConfigView` of a ``RopeSettings`` (the runtime's view of one layer)."""
    from ropepatch.metadata.sources import names_from_path
    from ropepatch.metadata.view import ConfigView

    data: dict[str, Any] = {
        "rope_theta": settings.rope_theta,
        "head_dim": settings.head_dim,
        "partial_rotary_factor": settings.partial_rotary_factor,
    }
    for key in ("rope_scaling", "rotary_dim", "max_position_embeddings", "original_max_position_embeddings"):
        value = getattr(settings, key, None)
        if value is not None:
            data[key] = value
    if origin is None:
        return ConfigView(data=data, kind="dict", label="exllamav3 RopeSettings")
    path = os.path.join(origin.directory, "config.json")
    from pathlib import Path

    data["_name_or_path"] = origin.directory
    names = tuple(dict.fromkeys([origin.directory, *names_from_path(Path(origin.directory))]))
    return ConfigView(data=data, path=path, kind="config.json", label="config.json", names=names)


def _rope_type(settings: Any) -> str | None:
    kind = getattr(settings, "override_type", None)
    if not kind and settings.rope_scaling:
        kind = settings.rope_scaling.get("rope_type", settings.rope_scaling.get("type"))
    return str(kind).lower() if kind else None


class ExLlamaV3Adapter(Adapter):
    """Gives ExLlamaV3's RoPE modules the spec's frequencies (module docstring)."""

    name = "exllamav3"
    distribution = "exllamav3"
    floor = "1.0"
    tested_up_to = "1.6.5"
    trigger = "exllamav3"
    capabilities = (
        Capability("exllamav3.util.rope", "RoPE.__init__", ("device", "rope_settings")),
        Capability("exllamav3.model.config", "Config.read_rope_settings_default"),
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()

    # -- installation ---------------------------------------------------------------------
    def install(self, patches: PatchSet, state: Any) -> None:
        """Wrap ``RoPE.__init__`` and tag settings read by ``Config.read_rope_settings_default``."""
        import importlib

        rope_mod = importlib.import_module("exllamav3.util.rope")
        config_mod = importlib.import_module("exllamav3.model.config")
        adapter = self

        read = config_mod.Config.read_rope_settings_default
        signature = inspect.signature(read)

        @functools.wraps(read)
        def read_rope_settings_default(config: Any, *args: Any, **kwargs: Any) -> Any:
            settings = read(config, *args, **kwargs)
            try:
                bound = signature.bind(config, *args, **kwargs)
                config_dict = bound.arguments.get("config_dict")
                directory = getattr(config, "directory", None)
                if directory and (config_dict is None or config_dict):
                    object.__setattr__(settings, _TAG, _Origin(str(directory), config_dict is None))
                elif directory:
                    object.__setattr__(settings, _TAG, None)  # built from an empty dict: not the model's RoPE
            except (TypeError, AttributeError):
                pass
            return settings

        patches.set(config_mod.Config, "read_rope_settings_default", read_rope_settings_default)

        rope_cls = rope_mod.RoPE
        init = rope_cls.__init__

        @functools.wraps(init)
        def __init__(module: Any, device: Any, rope_settings: Any, *args: Any, **kwargs: Any) -> None:
            spec = adapter.spec_for_settings(rope_settings, state)
            if spec is None:
                init(module, device, rope_settings, *args, **kwargs)
                return
            if table_policy(spec) == PER_POSITION:
                raise RopeConfigError(adapter.refusal(spec, rope_settings), path=spec.source)
            kind = _rope_type(rope_settings)
            if kind is None or kind in _NATIVE_TYPES:
                try:
                    init(module, device, rope_settings, *args, **kwargs)
                except (ValueError, AssertionError, KeyError, TypeError):
                    adapter._plain_init(init, module, device, rope_settings, *args, **kwargs)
            else:
                adapter._plain_init(init, module, device, rope_settings, *args, **kwargs)
            adapter.apply(module, spec, rope_settings, state, rope_mod)

        patches.set(rope_cls, "__init__", __init__)

    @staticmethod
    def _plain_init(init: Any, module: Any, device: Any, settings: Any, *args: Any, **kwargs: Any) -> None:
        # let the runtime set the module up as plain RoPE (inv_freq gets replaced right after)
        init(module, device, dataclasses.replace(settings, override_type="default"), *args, **kwargs)
        module.rope_settings = settings

    # -- the spec of one RopeSettings ---------------------------------------------------------
    def spec_for_settings(self, settings: Any, state: Any) -> Any:
        """The spec for a layer's ``RopeSettings``, or ``None`` to keep ExLlamaV3's RoPE."""
        style = getattr(settings.rope_style, "name", str(settings.rope_style))
        if style == "NONE":
            return None
        if getattr(settings, "override_type", None) and str(settings.override_type).lower() == "default":
            return None  # the architecture pins this layer to plain RoPE (sliding-window layers)
        origin = settings.__dict__.get(_TAG, False)
        if origin is None:
            return None  # built from an empty dict (Gemma-3 local layers): not the checkpoint's RoPE
        label = origin.directory if origin else "an ExLlamaV3 model"
        try:
            if origin and origin.whole_config:
                spec = state.spec_for(origin.directory)
            else:
                spec = state.spec_for(settings_view(settings, origin or None))
        except RopeConfigError as exc:
            kind = _rope_type(settings)
            if state.strict or kind is None or kind not in _NATIVE_TYPES:
                raise
            self.say_once(
                ("unreadable", label, str(exc)),
                f"ropepatch: cannot read the RoPE of {label}: {exc}; ExLlamaV3 keeps its own {kind} RoPE",
                warn=True,
            )
            return None
        if self.leaves_alone(spec):
            return None
        for message in spec.warnings:
            self.say_once(("spec-warning", label, message), f"ropepatch: {message}", warn=True)
        if (
            origin
            and origin.whole_config
            and abs(spec.rope_theta - float(settings.rope_theta)) > 1e-6 * spec.rope_theta
        ):
            return None  # another RoPE family of the same model (a local/global base): not described by the spec
        return spec

    def refusal(self, spec: Any, settings: Any) -> str:
        """The error text for a length-dependent spec."""
        return (
            f"ropepatch: ExLlamaV3 cannot run {spec.method} RoPE scaling: it rotates with one frequency vector per "
            "layer, computed once at load, so frequencies that follow the sequence length cannot be expressed "
            "(its per-position angle-table mode serves a single batch row). Load the model with a static method "
            f"instead, e.g. ROPEPATCH='ntk:alpha={max(2.0, spec.effective_factor or 2.0):g}' or "
            f"ROPEPATCH='yarn:factor={spec.effective_factor or 2.0:g}' (check what the checkpoint was trained with), "
            "use the ExLlamaV2 or transformers loader, or run it unscaled within its original context with "
            "ROPEPATCH='default'."
        )

    def apply(self, module: Any, spec: Any, settings: Any, state: Any, rope_mod: Any) -> None:
        """Give an initialised ``RoPE`` module the spec's ``inv_freq`` and ``attn_factor``."""
        import torch

        width = settings.rotary_dim or int(settings.head_dim * settings.partial_rotary_factor)
        if spec.rotary_dim is None:
            spec = spec.replace(rotary_dim=width)
        elif spec.rotary_dim != width:
            message = (
                f"ropepatch: the spec rotates {spec.rotary_dim} dims but ExLlamaV3 rotates {width}; "
                "this layer keeps ExLlamaV3's RoPE"
            )
            if state.strict:
                raise RuntimeError(message)
            self.say_once(("width", str(spec.source), str(width)), message, warn=True)
            return
        context = None
        if table_policy(spec) == CONTEXT:
            context = settings.override_max_position_embeddings or settings.max_position_embeddings
        inv, attention = spec.frequencies(context)
        fold = getattr(rope_mod, "yarn_sm_scale_fold", None)
        if getattr(settings, "yarn_mscale_ratio", False) and fold is not None:
            # a DeepSeek-family architecture: it folds mscale_all_dim^2 from the config into its softmax
            # scale; cos/sin make up any difference to the spec's (an overridden factor)
            attention = cos_sin_factor(
                spec, attention, head_dim=settings.head_dim, runtime_softmax=float(fold(settings.rope_scaling))
            )
        old = getattr(module, "inv_freq", None)
        inv = inv.to(device=old.device if isinstance(old, torch.Tensor) else module.device).contiguous()
        if isinstance(old, torch.Tensor) and old.shape == inv.shape and old.dtype == inv.dtype:
            old.copy_(inv)  # keep the tensor CUDA graphs may have captured
        else:
            module.inv_freq = inv
        module.attn_factor = attention
        module.cached_sin = module.cached_cos = None
        module.cached_sincos_max = 0
        self._report(spec, settings)

    def _report(self, spec: Any, settings: Any) -> None:
        where = os.path.basename(os.path.dirname(spec.source)) if spec.source else "model"
        self.changed(
            spec,
            model=os.path.dirname(spec.source) if spec.source else "an ExLlamaV3 model",
            before=f"{_rope_type(settings) or 'default'} RoPE (theta={float(settings.rope_theta):g})",
        )
        self.say_once(
            ("patched", spec.to_json()),
            f"ropepatch: ExLlamaV3 {where}: RoPE from {spec.summary()} [method from {spec.provenance.get('method', '?')}]",
        )
        for problem in unexpressible(spec):
            self.say_once(
                ("unexpressible", spec.to_json(), problem),
                f"ropepatch: ExLlamaV3 {where}: {problem} is not applied",
                warn=True,
            )

    # -- models built before enable() -----------------------------------------------------
    def patch_model(self, model: Any, state: Any) -> bool:
        """Re-derive every ``RoPE`` module of a loaded ExLlamaV3 model (call it before the first forward)."""
        if not type(model).__module__.startswith("exllamav3"):
            return False
        import importlib

        rope_mod = importlib.import_module("exllamav3.util.rope")
        seen: set[int] = set()
        stack = [model]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            rope = getattr(node, "rope", None)
            if isinstance(rope, rope_mod.RoPE):
                spec = self.spec_for_settings(rope.rope_settings, state)
                if spec is not None:
                    if table_policy(spec) == PER_POSITION:
                        raise RopeConfigError(self.refusal(spec, rope.rope_settings), path=spec.source)
                    self.apply(rope, spec, rope.rope_settings, state, rope_mod)
            stack.extend(m for m in getattr(node, "modules", None) or [] if m is not None)
        return True


@hookimpl
def register_adapters(register: Any) -> None:
    register(ExLlamaV3Adapter())
