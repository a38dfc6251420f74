"""ropepatch's methods as transformers rope types: the names, the init function, the validators.

A method transformers lacks (or computes differently) is registered in ``ROPE_INIT_FUNCTIONS`` under
``ropepatch_<method>``; the config's rope dict carries the resolved spec under the ``"ropepatch"`` key,
so the one init function serves every type and survives ``copy.deepcopy`` of the config. Length-
dependent methods get ``dynamic`` in their name: transformers' own ``@dynamic_rope_update`` (or the
inline update of 4.43-4.50) then calls the init function again with the current length.

The init function is meta-safe: it never calls ``.item()`` on a meta tensor and returns a float
attention factor, as ``from_pretrained`` builds models under ``torch.device("meta")``.
"""

from __future__ import annotations

import functools
import json
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from ropepatch.errors import RopeConfigError
from ropepatch.patching import PatchSet
from ropepatch.spec import RopeSpec

__all__ = [
    "EMBED_KEY",
    "PREFIX",
    "init_fn",
    "install_registry",
    "is_ropepatch_type",
    "rope_dict_of",
    "spec_from_rope_dict",
    "type_key",
]

PREFIX = "ropepatch_"
#: key of the rope dict that holds ``{"spec": spec.to_dict(), "original": <rope dict before the rewrite>}``
EMBED_KEY = "ropepatch"

_cache_lock = threading.Lock()
_spec_cache: dict[str, RopeSpec] = {}


def type_key(spec: RopeSpec) -> str:
    """The rope type ropepatch registers for ``spec``'s method (``dynamic`` in it when length-dependent)."""
    name = spec.method.replace("-", "_")
    if spec.is_dynamic and "dynamic" not in name:
        # transformers decides per forward whether to re-call the init fn by this substring
        name = f"dynamic_{name}"
    return PREFIX + name


def is_ropepatch_type(rope_type: Any) -> bool:
    """True for a rope type string ropepatch registered."""
    return isinstance(rope_type, str) and rope_type.startswith(PREFIX)


def spec_from_rope_dict(rope: Mapping[str, Any]) -> RopeSpec:
    """The spec embedded in a rope dict ropepatch rewrote (cached: configs are read per forward)."""
    embed = rope.get(EMBED_KEY) if isinstance(rope, Mapping) else None
    if not isinstance(embed, Mapping) or not isinstance(embed.get("spec"), Mapping):
        raise RopeConfigError(
            f"rope type {rope.get('rope_type')!r} is ropepatch's, but the config carries no ropepatch spec; "
            "was it edited by hand? Load the original checkpoint with ropepatch.enable() instead",
            key="rope_parameters",
        )
    text = json.dumps(embed["spec"], sort_keys=True)
    spec = _spec_cache.get(text)
    if spec is None:
        spec = RopeSpec.from_dict(embed["spec"])
        with _cache_lock:
            _spec_cache[text] = spec
    return spec


def rope_dict_of(config: Any, layer_type: str | None = None) -> Mapping[str, Any] | None:
    """The config's rope dict (``rope_parameters`` in v5, ``rope_scaling`` before), per layer type if nested."""
    rope = getattr(config, "rope_parameters", None) if "rope_parameters" in _fields(config) else None
    if rope is None:
        rope = getattr(config, "rope_scaling", None)
    if isinstance(rope, Mapping) and layer_type is not None and isinstance(rope.get(layer_type), Mapping):
        return rope[layer_type]
    return rope if isinstance(rope, Mapping) else None


def _fields(config: Any) -> Any:
    fields = getattr(type(config), "__dataclass_fields__", None)
    if fields is not None:
        return fields
    return getattr(config, "__dict__", {})


def init_fn(config: Any, device: Any = None, seq_len: Any = None, layer_type: str | None = None, **_: Any) -> Any:
    """transformers' init-function contract for every ropepatch type: ``(inv_freq, attention_scaling)``.

    Signature-compatible with 4.43-4.53 (``**rope_kwargs``), 4.54-4.57 and 5.x (``layer_type``).
    ``seq_len`` is the current total length for dynamic types (a 0-d tensor in 5.x), ``None`` at init.
    """
    import torch

    rope = rope_dict_of(config, layer_type)
    if rope is None:
        raise RopeConfigError("a ropepatch rope type was requested for a config without a rope dict")
    spec = spec_from_rope_dict(rope)
    length = None
    if seq_len is not None:
        if isinstance(seq_len, torch.Tensor):
            if seq_len.device.type == "meta":
                # no values exist on meta: shape-correct placeholder, recomputed on a real device
                inv, attention = spec.frequencies(None)
                return torch.empty_like(inv, device="meta"), attention
            length = int(seq_len)
        else:
            length = int(seq_len)
    inv, attention = spec.frequencies(length)
    if device is not None:
        inv = inv.to(device)
    return inv, float(attention)


def _validator_v4(config: Any, ignore_keys: Any = None) -> None:
    """4.43-4.57 ``ROPE_VALIDATION_FUNCTIONS`` entry: the embedded spec must rebuild (it validates itself)."""
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None)
    if not isinstance(rope, Mapping):
        raise RopeConfigError("a ropepatch rope type was requested for a config without a rope dict")
    spec_from_rope_dict(rope)


def _validator_v5(self: Any, rope_parameters: Any, ignore_keys: Any = None) -> None:
    """5.x ``RotaryEmbeddingConfigMixin._validate_<type>_rope_parameters`` for ropepatch types."""
    spec_from_rope_dict(rope_parameters)


def all_type_keys() -> list[str]:
    """A rope type for every registered method without an exact transformers equivalent, and for all of them."""
    from ropepatch.registry import get_registry

    keys = []
    for method in get_registry().iter_methods():
        name = method.name.replace("-", "_")
        if method.dynamic and "dynamic" not in name:
            name = f"dynamic_{name}"
        keys.append(PREFIX + name)
    return keys


#: rotary modules built with a ropepatch dynamic type: they look their type up in
#: ROPE_INIT_FUNCTIONS on every length change, so disable() keeps the entry while they live
_live_modules: weakref.WeakSet[Any] = weakref.WeakSet()


def track(module: Any) -> None:
    """Remember a module whose rope type ropepatch registered and which re-reads it per forward."""
    _live_modules.add(module)


def in_use(key: str) -> bool:
    """True while a live tracked module has rope type ``key`` (per layer type too)."""
    for module in list(_live_modules):
        rope_type = getattr(module, "rope_type", None)
        if rope_type == key or (isinstance(rope_type, dict) and key in rope_type.values()):
            return True
    return False


def install_registry(patches: PatchSet, rope_utils: Any) -> None:
    """Register every ropepatch type with ``transformers.modeling_rope_utils`` (restorable)."""
    registry = getattr(rope_utils, "ROPE_INIT_FUNCTIONS", None)
    if registry is None:
        return  # before 4.43: per-model classes only (.legacy)
    validators = getattr(rope_utils, "ROPE_VALIDATION_FUNCTIONS", None)
    mixin = getattr(rope_utils, "RotaryEmbeddingConfigMixin", None)
    for key in all_type_keys():
        # never "default": that would replace every plain model's frequencies (runtimes.md)
        patches.set_item(registry, key, init_fn, keep_if=functools.partial(in_use, key))
        if validators is not None:
            patches.set_item(validators, key, _validator_v4)
        if mixin is not None:
            patches.set(mixin, f"_validate_{key}_rope_parameters", _validator_v5)
