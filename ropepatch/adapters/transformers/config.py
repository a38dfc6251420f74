"""Config-side patches: loading checkpoints transformers rejects, and saving what was loaded.

* ``standardize_rope_params`` (v5): a legacy Phi-3 ``"su"`` dict gets the top-level
  ``original_max_position_embeddings`` copied in, so Phi-3-style configs load (5.x raises a KeyError).
* ``to_dict``: a rope dict ropepatch rewrote to one of its own types serialises as the original, so a
  model saved while ropepatch is enabled still loads without it.
* strict ``__class_validators__`` (v5 Phi-3 family): ``validate_rope`` captured at class creation
  rejects every type but ``longrope``; for ropepatch types the generic validator runs instead.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

from ropepatch.adapters.transformers.registry import EMBED_KEY, is_ropepatch_type
from ropepatch.forksafe import ForkSafeLock
from ropepatch.markers import made_here
from ropepatch.patching import PatchSet, is_patched

__all__ = ["install_config_patches", "install_strict_validators"]

_MISSING: Any = object()
_lock = ForkSafeLock()


def _original_of(value: Any) -> Any:
    """The rope dict as loaded when ``value`` is one ropepatch rewrote in this process, else ``_MISSING``.

    Only :class:`~ropepatch.markers.Record` embeds count: the same key read from a config.json is
    the checkpoint's data and is saved as it was loaded. A nested (per layer type) dict keeps one
    record per rewritten layer; the record's original is followed until it holds no record of ours,
    so a second rewritten layer cannot bring the first one's rewrite back.
    """
    restored = _embedded_original(value)
    for _ in range(8):  # one step per rewritten layer type; real configs have two or three
        deeper = _embedded_original(restored)
        if deeper is _MISSING:
            break
        restored = deeper
    return restored


def _embedded_original(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return _MISSING
    embed = value.get(EMBED_KEY)
    if made_here(embed) and "original" in embed:
        return embed["original"]
    for sub in value.values():
        if isinstance(sub, Mapping) and made_here(sub.get(EMBED_KEY)) and "original" in sub[EMBED_KEY]:
            return sub[EMBED_KEY]["original"]
    return _MISSING


def install_config_patches(patches: PatchSet, configuration_utils: Any) -> None:
    """Wrap ``PreTrainedConfig.to_dict`` (any version)."""
    cls = getattr(configuration_utils, "PreTrainedConfig", None) or configuration_utils.PretrainedConfig
    original = cls.__dict__["to_dict"]

    @functools.wraps(original)
    def to_dict(self: Any) -> dict[str, Any]:
        from ropepatch.adapters.transformers.plan import first_loaded

        out = original(self)
        # what save_pretrained writes is the config as loaded: a rewrite to transformers' own type (an
        # override of the checkpoint's factor, say) is remembered per config object in this process
        first = first_loaded(self)
        for key in ("rope_parameters", "rope_scaling"):
            if key in first and key in out:
                out[key] = copy.deepcopy(first[key])
                continue
            restored = _original_of(out.get(key))
            if restored is not _MISSING:
                out[key] = restored
        return out

    patches.set(cls, "to_dict", to_dict)


def install_rope_config_patches(patches: PatchSet, rope_utils: Any) -> None:
    """Wrap v5's ``RotaryEmbeddingConfigMixin.standardize_rope_params`` for legacy ``su`` dicts."""
    mixin = getattr(rope_utils, "RotaryEmbeddingConfigMixin", None)
    if mixin is None or "standardize_rope_params" not in mixin.__dict__:
        return
    original = mixin.__dict__["standardize_rope_params"]

    @functools.wraps(original)
    def standardize_rope_params(self: Any) -> None:
        rope = getattr(self, "rope_parameters", None)
        if isinstance(rope, dict):
            kind = rope.get("rope_type") or rope.get("type")
            top = vars(self).get("original_max_position_embeddings")
            if kind == "su" and "original_max_position_embeddings" not in rope and isinstance(top, int):
                # Phi-3 keeps it top-level; "su" is LongRoPE, which requires it in the dict
                rope["original_max_position_embeddings"] = top
        return original(self)

    patches.set(mixin, "standardize_rope_params", standardize_rope_params)


def install_strict_validators(patches: PatchSet, config_cls: type, current_state: Any = None) -> None:
    """Let ropepatch's types, and types ropepatch resolves, through a class's captured ``validate_rope``."""
    from transformers.modeling_rope_utils import RotaryEmbeddingConfigMixin

    generic = RotaryEmbeddingConfigMixin.validate_rope
    with _lock:
        for cls in config_cls.__mro__:
            validators = cls.__dict__.get("__class_validators__")
            if not isinstance(validators, list) or any(is_patched(v) for v in validators):
                continue
            if not any(getattr(v, "__name__", "") == "validate_rope" and v is not generic for v in validators):
                continue
            patches.set(cls, "__class_validators__", [_tolerant(v, generic, current_state) for v in validators])


def patch_strict_module(patches: PatchSet, module: Any, current_state: Any) -> None:
    """``install_strict_validators`` for every config class defined in ``module``."""
    for value in list(vars(module).values()):
        if isinstance(value, type) and value.__module__ == module.__name__ and "__class_validators__" in value.__dict__:
            install_strict_validators(patches, value, current_state)


def install_from_dict(patches: PatchSet, configuration_utils: Any, current_state: Any) -> None:
    """Make every config class loaded through ``from_dict`` tolerant before it validates."""
    cls = getattr(configuration_utils, "PreTrainedConfig", None) or configuration_utils.PretrainedConfig
    original = cls.__dict__["from_dict"]
    func = original.__func__

    @functools.wraps(func)
    def from_dict(klass: Any, *args: Any, **kwargs: Any) -> Any:
        if "__class_validators__" in vars(klass) or hasattr(klass, "__class_validators__"):
            try:
                install_strict_validators(patches, klass, current_state)
            except Exception:  # noqa: BLE001 - loading must go on; transformers will say what is wrong
                pass
        return func(klass, *args, **kwargs)

    patches.set(cls, "from_dict", classmethod(from_dict))


def _tolerant(validator: Any, generic: Any, current_state: Any = None) -> Any:
    if getattr(validator, "__name__", "") != "validate_rope" or validator is generic:
        return validator

    @functools.wraps(validator)
    def validate_rope(self: Any) -> None:
        rope = getattr(self, "rope_parameters", None)
        kinds = []
        if isinstance(rope, Mapping):
            kinds.append(rope.get("rope_type"))
            kinds.extend(v.get("rope_type") for v in rope.values() if isinstance(v, Mapping))
        if any(is_ropepatch_type(k) for k in kinds):
            return generic(self)  # the model-specific check only knows transformers' own types
        try:
            return validator(self)
        except ValueError:
            state = current_state() if current_state is not None else None
            if state is None:
                raise
            try:
                state.spec_for(self)  # a method ropepatch knows: the model will be built through it
            except Exception:  # noqa: BLE001 - not ours either: transformers' error stands
                raise
            return generic(self)

    validate_rope.__ropepatch__ = True  # type: ignore[attr-defined]
    return validate_rope
