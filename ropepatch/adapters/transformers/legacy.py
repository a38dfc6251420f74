"""transformers 4.36-4.47 per-model rotary classes: validators that reject, ``_init_rope`` that raises.

Before the rope registry (Llama 4.43, most families 4.45-4.48), each config class validated
``rope_scaling`` itself (``_rope_scaling_validation``: only ``{type, factor}``, type linear or
dynamic) and each attention class picked its rotary class in ``_init_rope`` (``ValueError`` for
anything else). ropepatch lets through every ``rope_scaling`` it can resolve, and builds the plain
class where the spec is not one transformers computes; :mod:`.modules` then converts it.
"""

from __future__ import annotations

import functools
import sys
import threading
from typing import Any

from ropepatch.adapters.transformers.plan import cached_plan
from ropepatch.adapters.transformers.registry import is_ropepatch_type
from ropepatch.errors import RopeConfigError
from ropepatch.patching import PatchSet, is_patched

__all__ = ["VALIDATED_CONFIG_MODULES", "patch_config_validators", "patch_init_rope"]

#: config modules whose class validated rope_scaling itself in some tested version
VALIDATED_CONFIG_MODULES = tuple(
    f"transformers.models.{m}.configuration_{m}"
    for m in (
        "llama",
        "falcon",
        "gpt_neox",
        "persimmon",
        "phi",
        "fuyu",
        "stablelm",
        "phi3",
        "olmo",
        "olmo2",
        "chameleon",
    )
)

_lock = threading.Lock()


def patch_config_validators(patches: PatchSet, module: Any, current_state: Any) -> None:
    """Wrap every ``_rope_scaling_validation`` defined in ``module`` (a configuration module)."""
    for value in list(vars(module).values()):
        if not isinstance(value, type) or "_rope_scaling_validation" not in value.__dict__:
            continue
        original = value.__dict__["_rope_scaling_validation"]
        if is_patched(original):
            continue
        patches.set(value, "_rope_scaling_validation", _tolerant_validation(original, current_state))


def _tolerant_validation(original: Any, current_state: Any) -> Any:
    @functools.wraps(original)
    def _rope_scaling_validation(self: Any) -> None:
        try:
            return original(self)
        except (ValueError, KeyError, TypeError) as exc:
            rope = getattr(self, "rope_scaling", None)
            kind = (rope.get("rope_type") or rope.get("type")) if isinstance(rope, dict) else None
            if is_ropepatch_type(kind):
                return None
            state = current_state()
            if state is None:
                raise
            data = {k: v for k, v in vars(self).items() if not k.startswith("_")}
            data.setdefault("model_type", getattr(self, "model_type", None))
            try:
                state.spec_for(data)
            except RopeConfigError:
                raise exc from None
            return None  # ropepatch resolves it; the model is built through ropepatch

    return _rope_scaling_validation


def patch_init_rope(patches: PatchSet, model_cls: type) -> None:
    """Wrap ``_init_rope`` of the attention classes in ``model_cls``'s modelling module (once each)."""
    module = sys.modules.get(model_cls.__module__)
    if module is None:
        return
    with _lock:
        for value in list(vars(module).values()):
            if not isinstance(value, type) or "_init_rope" not in value.__dict__:
                continue
            original = value.__dict__["_init_rope"]
            if is_patched(original):
                continue
            patches.set(value, "_init_rope", _plain_unless_native(original))


def _plain_unless_native(original: Any) -> Any:
    @functools.wraps(original)
    def _init_rope(self: Any) -> None:
        config = self.config
        known, plan = cached_plan(config)
        if not known or plan is None or plan.unchanged:
            return original(self)
        # build the model's plain rotary class; ropepatch converts it when the model is finished
        saved = config.rope_scaling
        config.__dict__["rope_scaling"] = None
        try:
            return original(self)
        finally:
            config.__dict__["rope_scaling"] = saved

    return _init_rope
