"""Which rotary layers ropepatch builds for vLLM, from what, and at which context (no vLLM import).

vLLM's ``get_rope`` is an if/elif over ``rope_type``. ropepatch takes over a call when the
checkpoint (or an override) asks for something vLLM does not compute as the reference does:

* a method vLLM does not know (``ntk-yarn``, ``part-ntk``, ``dynamic-yarn``, ...);
* ``dynamic`` (transformers' dynamic NTK): vLLM ≥ 0.2x's ``DynamicNTKScalingRotaryEmbedding``
  defaults ``max_trained_positions`` to the cache length, so it never scales, and sizes its
  cache below ``max_model_len``;
* metadata only ropepatch's detectors read (a top-level ``original_max_position_embeddings``,
  the known-checkpoint table);
* any ``ROPEPATCH`` / ``enable()`` override that applies to the model.

Everything else (default, linear, yarn, llama3, longrope, vLLM's own ``ntk``, multimodal
sections) stays with vLLM.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ropepatch.detection import resolve
from ropepatch.metadata.view import ConfigView
from ropepatch.overrides import Override
from ropepatch.registry import canonical_name, get_registry
from ropepatch.spec import RopeSpec

__all__ = ["NATIVE_TYPES", "Plan", "config_view", "plan_rope", "rope_parameter_sets", "serving_context"]

#: rope types vLLM computes the way ropepatch's references do (canonical spelling). ``ntk`` is
#: vLLM's own formula, not ropepatch's fixed-alpha NTK: a config that says ``ntk`` in vLLM means it.
NATIVE_TYPES = frozenset({"default", "linear", "yarn", "deepseek-yarn", "llama3", "longrope", "su", "ntk"})

# rope parameters that select another kind of layer (multimodal sections, Fourier RoPE)
_OTHER_LAYER_KEYS = ("mrope_section", "use_fope", "xdrope_section")
# keys that would make the view's rotary dim differ from the one vLLM asked for
_DIM_KEYS = (
    "qk_rope_head_dim",
    "rotary_dim",
    "rotary_emb_dim",
    "partial_rotary_factor",
    "rotary_pct",
    "rotary_emb_fraction",
)


@dataclass(frozen=True)
class Plan:
    """What to do with one ``get_rope`` call: ``spec`` is None when vLLM keeps it."""

    spec: RopeSpec | None
    reason: str


def config_view(
    rope_parameters: Mapping[str, Any] | None,
    *,
    head_size: int | None,
    rotary_dim: int | None,
    max_position: int | None,
    hf_config: Any = None,
) -> ConfigView:
    """A metadata view of one rotary layer: the model's config with this layer's rope parameters.

    The rest of the config is kept for the detectors (model names for the known-checkpoint table,
    top-level ``original_max_position_embeddings``); the dimensions are the ones vLLM asked for.
    """
    data: dict[str, Any] = {}
    if hf_config is not None:
        to_dict = getattr(hf_config, "to_dict", None)
        data = dict(to_dict()) if callable(to_dict) else dict(hf_config)
        name = getattr(hf_config, "_name_or_path", None) or getattr(hf_config, "name_or_path", None)
        if name and not data.get("_name_or_path"):
            data["_name_or_path"] = name
        text = data.get("text_config")
        if isinstance(text, Mapping) and not data.get("rope_parameters") and not data.get("rope_scaling"):
            data = {**text, "_name_or_path": data.get("_name_or_path")}  # vLLM builds the text model
    data.pop("rope_scaling", None)
    for key in _DIM_KEYS:
        data.pop(key, None)
    data["rope_parameters"] = dict(rope_parameters or {})
    if head_size is not None:
        data["head_dim"] = int(head_size)
    if rotary_dim is not None:
        data["rotary_dim"] = int(rotary_dim)
    if max_position is not None:
        data["max_position_embeddings"] = int(max_position)
    names = tuple(str(data[k]) for k in ("_name_or_path",) if data.get(k))
    return ConfigView(data=data, kind="transformers", label="vLLM model config", names=names)


def _raw_type(rope_parameters: Mapping[str, Any]) -> str:
    return canonical_name(rope_parameters.get("rope_type") or rope_parameters.get("type") or "default")


def plan_rope(view: ConfigView, layers: Iterable[Override]) -> Plan:
    """Decide whether ropepatch builds this rotary layer, and with which spec.

    Raises :class:`RopeConfigError` when the metadata names a ropepatch method with bad values, or
    when the method needs more than a cos/sin table (query scaling, a softmax rescale).
    """
    layers = list(layers)
    rp = view.data.get("rope_parameters") or {}
    raw = _raw_type(rp)
    if any(rp.get(k) for k in _OTHER_LAYER_KEYS):
        return Plan(None, "multimodal or Fourier rotary layer: vLLM's own")
    overridden = any(not layer.is_empty() and layer.applies_to(view.names) for layer in layers)
    registry = get_registry()
    if raw not in registry.aliases and raw != "default" and not overridden:
        return Plan(None, f"rope_type {raw!r} is not a ropepatch method: vLLM's own")
    if raw == "dynamic" and rp.get("alpha") is not None and not overridden:
        return Plan(None, "dynamic with alpha is fixed NTK-alpha, which vLLM computes exactly")
    spec = resolve(view, layers)
    if not overridden:
        native = raw in NATIVE_TYPES and spec.method == registry.method(raw).name
        if raw == "ntk":
            native = True  # vLLM's ntk formula; ropepatch's detector reads it as fixed-alpha NTK
        theta = float(rp.get("rope_theta", 10000.0))
        if native and abs(spec.rope_theta - theta) <= 1e-9 * theta:
            return Plan(None, f"vLLM computes {raw!r} as the reference does")
    _check_table_only(spec)
    why = "override" if overridden else f"metadata says {spec.method}"
    return Plan(spec, why)


def _check_table_only(spec: RopeSpec) -> None:
    from ropepatch.adapters.base import refuse_beyond_tables

    refuse_beyond_tables(
        spec, "vLLM's rotary layer", "; vLLM's deepseek_yarn type does the softmax scale for DeepSeek models"
    )


def serving_context(spec: RopeSpec) -> int | None:
    """The longest sequence the model is meant to serve under ``spec`` (vLLM's derived max_model_len).

    The spec's effective context; for methods whose context grows with the input, ``factor ×
    original`` where both are known (what transformers' ``dynamic`` convention means), else the
    metadata's ``max_position_embeddings``.
    """
    ctx = spec.effective_context
    original = spec.effective_original or spec.max_position_embeddings
    if ctx is None and spec.effective_factor is not None and original is not None:
        ctx = int(round(spec.effective_factor * original))
    if ctx is None:
        ctx = spec.max_position_embeddings
    return ctx


def rope_parameter_sets(hf_config: Any) -> list[dict[str, Any]]:
    """The config's rope parameter dicts: one, or one per layer type when nested (Gemma 3)."""
    rp = getattr(hf_config, "rope_parameters", None)
    if rp is None:
        rp = getattr(hf_config, "rope_scaling", None)
    if not isinstance(rp, Mapping) or not rp:
        return []
    if all(isinstance(v, Mapping) for v in rp.values()):
        return [dict(v) for v in rp.values() if v]
    return [dict(rp)]
