"""From a transformers config to a plan: the spec, and the rope type that computes it exactly.

The rule (per config, cached): keep the config as it is when transformers already computes the spec
from it; else write transformers' own type for the method when its numbers agree (checked by
running transformers' init function on a copy of the config, so version quirks such as 4.43-4.55
YaRN are caught); else write a ``ropepatch_*`` type (see :mod:`.registry`). Methods
that need more than cos/sin scaling are refused with a :class:`RopeConfigError` unless the model
applies the rest itself.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ropepatch.adapters.transformers.registry import EMBED_KEY, is_ropepatch_type, type_key
from ropepatch.errors import RopeConfigError
from ropepatch.forksafe import ForkSafeLock
from ropepatch.markers import Record, made_here
from ropepatch.spec import RopeSpec

__all__ = ["Plan", "apply_plan", "forget", "native_summary", "plan_for", "rope_attr", "uses_rope"]

log = logging.getLogger("ropepatch")

#: model types whose attention multiplies its softmax scale by mscale(factor, mscale_all_dim)^2 itself
SOFTMAX_SCALING_MODELS = frozenset({"deepseek_v2", "deepseek_v3", "kimi_k2", "mistral4", "longcat_flash"})

#: config keys that say a model uses RoPE at all (others, e.g. BERT, are left alone)
_ROPE_HINTS = (
    "rope_parameters",
    "rope_scaling",
    "rope_theta",
    "rotary_emb_base",
    "rotary_dim",
    "rotary_pct",
    "partial_rotary_factor",
    "use_dynamic_ntk",
    "qk_rope_head_dim",
    "original_max_position_embeddings",
)
#: transformers' own type keys a rewrite may carry, per type
_NATIVE_KEYS = {
    "linear": (),
    "dynamic": (),
    "yarn": ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"),
    "llama3": ("low_freq_factor", "high_freq_factor"),
    "longrope": ("short_factor", "long_factor", "attention_factor"),
}
_NATIVE_NEEDS_ORIGINAL = {"yarn", "llama3", "longrope"}


@dataclass
class Plan:
    """What ropepatch does for one config."""

    spec: RopeSpec
    #: the rope type the rotary module must end up with (``"default"`` for plain)
    rope_type: str
    #: nested layer type the spec describes (Gemma 3: ``"full_attention"``), or None for a flat dict
    layer: str | None = None
    #: the config already computes the spec: nothing to write
    unchanged: bool = False
    #: the new rope dict (the layer's for nested configs), or None
    rewrite: dict[str, Any] | None = None
    #: for ropepatch dynamic types: the length up to which the frequencies equal the initial ones
    threshold: int = 0
    #: the attention factor at init, and whether it changes with the length
    initial_attention: float = 1.0
    attention_varies: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ours(self) -> bool:
        """True when a ropepatch type computes the frequencies."""
        return is_ropepatch_type(self.rope_type)


_lock = ForkSafeLock(reentrant=True)
_plans: dict[int, tuple[weakref.ref, Plan | None, Any]] = {}


def forget(config: Any = None) -> None:
    """Drop the cached plan of ``config`` (all plans when None), e.g. after settings changed."""
    with _lock:
        if config is None:
            _plans.clear()
        else:
            _plans.pop(id(config), None)


def cached_plan(config: Any) -> tuple[bool, Plan | None]:
    """``(known, plan)`` from the cache, without resolving."""
    with _lock:
        hit = _plans.get(id(config))
    if hit is not None and hit[0]() is config:
        return True, hit[1]
    return False, None


def plan_for(config: Any, state: Any) -> Plan | None:
    """The plan for ``config`` under ``state``'s overrides (cached per config object and settings)."""
    settings = state.settings()
    with _lock:
        hit = _plans.get(id(config))
        if hit is not None and hit[0]() is config and hit[2] == settings:
            return hit[1]
    plan = _resolve(config, state)
    with _lock:
        key = id(config)
        try:
            ref = weakref.ref(config, functools.partial(_forget_key, _plans, key))
        except TypeError:
            return plan
        _plans[key] = (ref, plan, settings)
    return plan


def uses_rope(data: Mapping[str, Any]) -> bool:
    """True when a config dict says its model uses RoPE (or carries RoPE metadata)."""
    if data.get("alibi") is True or data.get("position_embedding_type") in ("absolute", "alibi", "learned"):
        return False
    if any(data.get(k) is not None for k in _ROPE_HINTS):
        return True
    text = data.get("text_config")
    return isinstance(text, Mapping) and any(text.get(k) is not None for k in _ROPE_HINTS)


def rope_attr(config: Any) -> str | None:
    """The attribute rotary modules read: ``rope_parameters`` (v5), ``rope_scaling`` (v4), or None."""
    cls_attr = getattr(type(config), "rope_scaling", None)
    if isinstance(cls_attr, property):  # v5: rope_scaling is an alias of rope_parameters
        fields = getattr(type(config), "__dataclass_fields__", {})
        if "rope_parameters" in fields or "rope_parameters" in vars(config):
            return "rope_parameters"
        return None
    if "rope_scaling" in vars(config) or "rope_scaling" in getattr(type(config), "__dataclass_fields__", {}):
        return "rope_scaling"
    return None


#: per config object: its rope dicts as first loaded, before any rewrite (native rewrites carry no
#: embedded original, so a second patch_model would otherwise start from the first one's result)
_originals: dict[int, tuple[weakref.ref[Any], dict[str, Any]]] = {}


def _forget_key(table: dict[int, Any], key: int, _ref: Any) -> None:
    """weakref callback: drop a dead config's entry."""
    table.pop(key, None)


def _remember_original(config: Any, attr: str) -> None:
    key = id(config)
    with _lock:
        hit = _originals.get(key)
        if hit is not None and hit[0]() is config:
            if attr not in hit[1]:
                hit[1][attr] = copy.deepcopy(getattr(config, attr, None))
            return
        try:
            ref = weakref.ref(config, functools.partial(_forget_key, _originals, key))
        except TypeError:
            return
        _originals[key] = (ref, {attr: copy.deepcopy(getattr(config, attr, None))})


def first_loaded(config: Any) -> dict[str, Any]:
    """The rope dicts of ``config`` as first loaded, for those ropepatch rewrote in this process."""
    with _lock:
        hit = _originals.get(id(config))
    return dict(hit[1]) if hit is not None and hit[0]() is config else {}


def _config_data(config: Any) -> dict[str, Any]:
    """The config as loaded: rope dicts ropepatch rewrote are read as they were before."""
    from ropepatch.adapters.transformers.config import _MISSING, _original_of

    try:
        data = config.to_dict()
    except Exception:  # noqa: BLE001 - a half-built config: fall back to its attributes
        data = {k: v for k, v in vars(config).items() if not k.startswith("__")}
    first = first_loaded(config)
    for key in ("rope_parameters", "rope_scaling"):
        if key in first:
            data[key] = copy.deepcopy(first[key])
            continue
        restored = _original_of(data.get(key))
        if restored is not _MISSING:
            data[key] = restored
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    if name and not data.get("_name_or_path"):
        data["_name_or_path"] = name
    data.setdefault("model_type", getattr(config, "model_type", None))
    return data


def native_summary(config: Any) -> str:
    """What transformers alone would build from ``config`` as loaded, in words (for the change line)."""
    data = _config_data(config)
    rope = data.get("rope_parameters") or data.get("rope_scaling")
    if isinstance(rope, Mapping) and rope and all(isinstance(v, Mapping) for v in rope.values()):
        rope = rope.get("full_attention") or next(iter(rope.values()))
    kind, factor = "default", None
    if isinstance(rope, Mapping):
        kind = str(rope.get("rope_type") or rope.get("type") or "default")
        factor = rope.get("factor")
    theta = (rope or {}).get("rope_theta") if isinstance(rope, Mapping) else None
    theta = theta if theta is not None else data.get("rope_theta")
    words = (
        "plain RoPE" if kind == "default" else f"{kind}" + (f" x{factor:g}" if isinstance(factor, (int, float)) else "")
    )
    context = data.get("max_position_embeddings")
    extra = [f"theta={theta:g}" if isinstance(theta, (int, float)) else None, f"context {context}" if context else None]
    return " ".join([words, *[e for e in extra if e]])


def _resolve(config: Any, state: Any) -> Plan | None:
    data = _config_data(config)
    overrides = any(not layer.is_empty() and layer.applies_to(_names(data)) for layer in state.layers())
    if data.get("alibi") is True or data.get("position_embedding_type") in ("absolute", "alibi", "learned"):
        return None  # no RoPE in this model
    hinted = uses_rope(data) or overrides
    try:
        spec = state.spec_for(data)
    except RopeConfigError:
        if hinted:
            raise
        return None  # no RoPE metadata and nothing ropepatch can read: not a RoPE model to us
    if not hinted and spec.method == "default":
        return None  # e.g. GPT-2, or RefinedWeb remote code with nothing known about it
    attr = rope_attr(config)
    layer, current = _current_rope(config, attr)
    remote = bool(data.get("auto_map")) and type(config).__module__.startswith("transformers_modules")
    if spec.needs_query_scaling:
        if remote and "use_logn_attn" in data and not overrides:
            return None  # Qwen-1's own modelling code applies its dynamic NTK and logn: it is the reference
        raise RopeConfigError(
            f"{spec.method} with use_logn_attn scales queries by log_L0(position); transformers' "
            f"{type(config).__name__} models have no hook for that, and ropepatch refuses to apply the "
            "frequencies alone. Pass use_logn_attn=False to accept plain dynamic NTK, or load with Qwen's own code",
            key="use_logn_attn",
        )
    plan = _choose(config, attr, layer, current, spec)
    if plan is None:
        return None
    _check_extras(config, data, plan)
    return plan


def _names(data: Mapping[str, Any]) -> list[str]:
    name = data.get("_name_or_path") or data.get("name_or_path")
    return [name] if isinstance(name, str) and name else []


def _current_rope(config: Any, attr: str | None) -> tuple[str | None, dict[str, Any] | None]:
    rope = getattr(config, attr, None) if attr else None
    if not isinstance(rope, Mapping):
        return None, None
    if rope and all(isinstance(v, Mapping) or v is None for v in rope.values()):
        nested = {k: v for k, v in rope.items() if isinstance(v, Mapping)}
        if not nested:
            return None, None
        scaled = [k for k, v in nested.items() if (v.get("rope_type") or v.get("type") or "default") != "default"]
        layer = scaled[0] if scaled else ("full_attention" if "full_attention" in nested else next(iter(nested)))
        return layer, dict(nested[layer])
    return None, dict(rope)


def _current_type(current: Mapping[str, Any] | None) -> str:
    if not current:
        return "default"
    return str(current.get("rope_type") or current.get("type") or "default")


def _config_theta(config: Any, current: Mapping[str, Any] | None) -> float:
    if current and current.get("rope_theta") is not None:
        return float(current["rope_theta"])
    theta = vars(config).get("rope_theta")
    return float(theta) if isinstance(theta, (int, float)) else 10000.0


def _choose(config: Any, attr: str | None, layer: str | None, current: dict | None, spec: RopeSpec) -> Plan | None:
    ctype = _current_type(current)
    if is_ropepatch_type(ctype):
        # a config ropepatch already rewrote (a copied config, a second model from the same config)
        from ropepatch.adapters.transformers.registry import spec_from_rope_dict

        embedded = spec_from_rope_dict(current)  # type: ignore[arg-type]
        if _numbers(embedded) == _numbers(spec):
            return _finish(Plan(embedded, ctype, layer, unchanged=True))
        # other settings now (patch_model overrides): start again from the dict as loaded
        original = current[EMBED_KEY].get("original")  # type: ignore[index]
        if layer is not None and isinstance(original, Mapping):
            original = original.get(layer)
        current = dict(original) if isinstance(original, Mapping) else None
        ctype = _current_type(current)
    theta = _config_theta(config, current)
    if spec.method == "default":
        if ctype in ("default", "mrope") and math.isclose(spec.rope_theta, theta, rel_tol=1e-9):
            return None  # plain RoPE exactly as transformers computes it: nothing to do
    rope_utils = sys.modules.get("transformers.modeling_rope_utils")
    registry = getattr(rope_utils, "ROPE_INIT_FUNCTIONS", None)
    if ctype != "default" and _agrees(config, attr, layer, current, ctype, spec, registry):
        return _finish(Plan(spec, ctype, layer, unchanged=True))
    native = spec._method_obj.transformers_type
    if attr is not None and native is not None and (native == "default" or (registry and native in registry)):
        candidate = _native_dict(spec, native, current, attr)
        if _agrees(config, attr, layer, candidate, native, spec, registry):
            return _finish(Plan(spec, native, layer, rewrite=candidate))
    key = type_key(spec)
    return _finish(Plan(spec, key, layer, rewrite=_ours_dict(spec, key, current, attr, config)))


def _numbers(spec: RopeSpec) -> tuple[Any, ...]:
    params = tuple(sorted((k, repr(v)) for k, v in spec.method_params.items()))
    return (spec.method, spec.rope_theta, spec.rotary_dim, spec.effective_factor, spec.effective_original, params)


def _finish(plan: Plan) -> Plan:
    spec = plan.spec
    if plan.ours and spec.is_dynamic:
        base, _ = spec.compute(None)
        L0 = spec.effective_original or spec.max_position_embeddings
        # transformers recomputes only above its cached length and resets below it: give it the length
        # up to which the method's frequencies do not move (0: they move at every length)
        plan.threshold = int(L0) if L0 and spec.compute(int(L0))[0] == base else 0
    try:
        plan.initial_attention = spec.attention_factor(None)
        if spec.is_dynamic:
            far = (spec.effective_original or spec.max_position_embeddings or 4096) * 64
            plan.attention_varies = not math.isclose(spec.attention_factor(far), plan.initial_attention, rel_tol=1e-12)
    except RopeConfigError:
        pass
    return plan


def _native_dict(spec: RopeSpec, native: str, current: Mapping[str, Any] | None, attr: str) -> dict[str, Any]:
    out: dict[str, Any] = {"rope_type": native, "rope_theta": spec.rope_theta}
    if attr == "rope_scaling":
        out["type"] = native
        out.pop("rope_theta")  # v4 keeps rope_theta top-level
    if current and current.get("partial_rotary_factor") is not None:
        out["partial_rotary_factor"] = current["partial_rotary_factor"]
    if native == "default":
        return out
    if spec.effective_factor is not None:
        out["factor"] = spec.effective_factor
    if native in _NATIVE_NEEDS_ORIGINAL and spec.effective_original is not None:
        out["original_max_position_embeddings"] = spec.effective_original
    params = spec.method_params
    for key in _NATIVE_KEYS.get(native, ()):
        value = params.get(key)
        if value is None or (key == "truncate" and value is True):
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _ours_dict(
    spec: RopeSpec, key: str, current: Mapping[str, Any] | None, attr: str | None, config: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"rope_type": key, "rope_theta": spec.rope_theta}
    if attr == "rope_scaling":
        out["type"] = key
        out.pop("rope_theta")
    if current and current.get("partial_rotary_factor") is not None:
        out["partial_rotary_factor"] = current["partial_rotary_factor"]
    # some modelling code reads these whenever rope_type != "default" (DeepSeek's softmax scale)
    out["factor"] = spec.effective_factor if spec.effective_factor is not None else 1.0
    if spec.effective_original is not None:
        out["original_max_position_embeddings"] = spec.effective_original
    params = spec.method_params
    if spec.softmax_scale != 1.0 and params.get("mscale_all_dim"):
        out["mscale_all_dim"] = params["mscale_all_dim"]
        out["mscale"] = params.get("mscale")
    out[EMBED_KEY] = Record(spec=spec.to_dict())  # trusted by type, not by key (ropepatch.markers)
    return out


def _agrees(
    config: Any,
    attr: str | None,
    layer: str | None,
    rope: Mapping[str, Any] | None,
    rtype: str,
    spec: RopeSpec,
    registry: Mapping[str, Any] | None,
) -> bool:
    """True when transformers computes ``spec`` from ``rope`` (run on a copy of the config)."""
    if attr is None or rope is None:
        return False
    if registry is None:
        return _legacy_agrees(config, rope, rtype, spec)
    if rtype == "default":
        return spec.method == "default" and math.isclose(spec.rope_theta, _config_theta(config, rope), rel_tol=1e-9)
    fn = registry.get(rtype)
    if fn is None or is_ropepatch_type(rtype):
        return False
    import torch

    lengths: list[int | None] = [None]
    if rtype in ("dynamic", "longrope") or spec.is_dynamic:
        L0 = int(spec.effective_original or spec.max_position_embeddings or 4096)
        maxpos = int(getattr(config, "max_position_embeddings", 0) or L0)
        lengths += sorted({L0, L0 + 1, maxpos + 1, 2 * L0 + 3, 8 * maxpos})
        if rtype == "dynamic" and L0 != maxpos and spec.compute(L0 + 1)[0] != spec.compute(None)[0]:
            return False  # transformers' dynamic grows only past max_position_embeddings
    try:
        probe = copy.copy(config)
        value = copy.deepcopy(dict(rope))
        if layer is not None:
            whole = copy.deepcopy(dict(getattr(config, attr)))
            whole[layer] = value
            value = whole
        probe.__dict__[attr] = value
        kwargs = {"layer_type": layer} if layer is not None and _takes_layer_type(fn) else {}
        with torch.device("cpu"):
            for L in lengths:
                ours, ours_att = spec.frequencies(L)
                theirs, theirs_att = (
                    fn(probe, "cpu", seq_len=L, **kwargs) if L is not None else fn(probe, "cpu", **kwargs)
                )
                theirs = theirs.to("cpu", torch.float32)
                if theirs.shape != ours.shape or not torch.allclose(theirs, ours, rtol=1e-5, atol=0.0):
                    return False
                if not math.isclose(float(theirs_att), ours_att, rel_tol=1e-6):
                    return False
    except Exception as exc:  # noqa: BLE001 - transformers cannot compute it: not an agreement
        log.debug("ropepatch: transformers' %s does not compute %s: %s", rtype, spec.method, exc)
        return False
    return True


def _takes_layer_type(fn: Any) -> bool:
    try:
        return "layer_type" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _legacy_agrees(config: Any, rope: Mapping[str, Any], rtype: str, spec: RopeSpec) -> bool:
    """Before 4.43: the per-model classes compute plain, linear and clamped dynamic NTK (L0 = max)."""
    theta = _config_theta(config, None)
    if not math.isclose(spec.rope_theta, theta, rel_tol=1e-9) or spec.attention_factor(None) != 1.0:
        return False
    factor = rope.get("factor")
    if spec.method == "linear" and rtype == "linear":
        return factor == spec.effective_factor
    if spec.method == "dynamic" and rtype == "dynamic":
        maxpos = getattr(config, "max_position_embeddings", None)
        return factor == spec.effective_factor and (spec.effective_original or maxpos) == maxpos
    return False


def _check_extras(config: Any, data: Mapping[str, Any], plan: Plan) -> None:
    """Refuse what cos/sin cannot carry, unless the model applies the rest itself."""
    spec = plan.spec
    mtype = str(data.get("model_type") or "")
    if spec.softmax_scale != 1.0 and mtype not in SOFTMAX_SCALING_MODELS:
        raise RopeConfigError(
            f"{spec.method} with mscale_all_dim multiplies the softmax scale by {spec.softmax_scale:.6g} over the "
            f"whole head; transformers' {mtype or type(config).__name__} attention does not, and ropepatch refuses "
            "to apply only the cos/sin part. Use a DeepSeek-family model class, or drop mscale/mscale_all_dim",
            key="mscale_all_dim",
        )
    partial = spec.rotary_dim is not None and spec.head_dim is not None and spec.rotary_dim < spec.head_dim
    if (
        plan.ours
        and partial
        and (plan.initial_attention != 1.0 or plan.attention_varies)
        and mtype not in SOFTMAX_SCALING_MODELS
    ):
        raise RopeConfigError(
            f"{spec.method}'s temperature scales q and k over the whole head, but this {mtype or 'model'} rotates "
            f"only {spec.rotary_dim} of {spec.head_dim} dims and transformers applies cos/sin factors to the "
            "rotated slice only; ropepatch refuses a half-applied method. Use a method without an attention "
            "factor (e.g. ntk-margin instead of ntk-yarn) or pass attention_factor=1.0",
            key="partial_rotary_factor",
        )


def _same(spec: RopeSpec, other: RopeSpec | None) -> bool:
    return other is not None and _numbers(spec) == _numbers(other)


def _holds(current: Mapping[str, Any], rewrite: Mapping[str, Any]) -> bool:
    """True when ``current`` already carries every value of a native rewrite.

    The type alone is not enough: an override of the checkpoint's own method (yarn x8 over the
    checkpoint's yarn x4) keeps the type and changes the values.
    """
    return all(current.get(k) == v for k, v in rewrite.items())


def _embedded(rope: Mapping[str, Any]) -> RopeSpec | None:
    from ropepatch.adapters.transformers.registry import spec_from_rope_dict

    try:
        return spec_from_rope_dict(rope)
    except RopeConfigError:
        return None


def apply_plan(config: Any, plan: Plan) -> None:
    """Write the plan's rope dict into ``config`` (keeping the original for serialisation)."""
    if plan.rewrite is None:
        return
    attr = rope_attr(config)
    if attr is None:
        if not plan.ours:
            return
        # a config class without a rope dict (Mistral 4.57, remote code): ropepatch's type still needs one
        attr = (
            "rope_parameters" if isinstance(getattr(type(config), "rope_scaling", None), property) else "rope_scaling"
        )
    _, current = _current_rope(config, attr)
    if (
        current is not None
        and _current_type(current) == plan.rope_type
        and (_same(plan.spec, _embedded(current)) if plan.ours else _holds(current, plan.rewrite))
    ):
        return  # already written (nested models call this once per PreTrainedModel)
    _remember_original(config, attr)
    original = copy.deepcopy(getattr(config, attr, None))
    if plan.ours and isinstance(current, Mapping) and made_here(current.get(EMBED_KEY)):
        original = copy.deepcopy(current[EMBED_KEY].get("original"))  # keep the dict as first loaded
    new = copy.deepcopy(plan.rewrite)
    if plan.layer is not None:
        whole = copy.deepcopy(dict(getattr(config, attr)))
        whole[plan.layer] = new
        value: Any = whole
    else:
        value = new
    if plan.ours:
        # what to_dict() writes back: a saved checkpoint must load without ropepatch (native rewrites
        # are valid transformers configs and are saved as they are)
        new[EMBED_KEY]["original"] = original
    # bypass setters: v5's rope_scaling setter warns and re-standardises; the dict is complete already
    config.__dict__[attr] = value
