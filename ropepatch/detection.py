"""``detect()``: metadata -> detectors -> overrides -> a validated :class:`RopeSpec`.

Precedence, highest first: explicit keyword arguments > the ``ROPEPATCH`` environment variable >
the known-checkpoint table > the checkpoint's metadata. The spec's provenance names the winner of
every value.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from ropepatch.detectors.common import read_common
from ropepatch.errors import RopeConfigError, RopepatchWarning
from ropepatch.metadata.sources import load_view
from ropepatch.metadata.view import ConfigView, Finding
from ropepatch.overrides import Override, env_overrides, override_from_mapping
from ropepatch.registry import get_registry
from ropepatch.spec import RopeSpec

__all__ = ["detect", "detect_view", "resolve"]

_FIELDS = (
    "rope_theta",
    "rotary_dim",
    "head_dim",
    "factor",
    "original_max_position_embeddings",
    "max_position_embeddings",
)


def detect(
    source: Any,
    *,
    use_env: bool = True,
    per_model: Mapping[str, Mapping[str, Any]] | None = None,
    emit_warnings: bool = True,
    **overrides: Any,
) -> RopeSpec:
    """Read ``source``'s RoPE metadata into a validated :class:`RopeSpec`.

    ``source`` is a checkpoint folder, a config.json or GGUF path, a dict, or a transformers config.
    Keyword overrides (``method``, ``factor``, ``alpha``, ``original_max_position_embeddings``,
    ``target_context``, any method parameter) beat ``$ROPEPATCH``, which beats the known-checkpoint
    table, which beats the metadata. ``per_model`` maps model-name globs to overrides.
    """
    view = load_view(source)
    layers: list[Override] = []
    if use_env:
        layers.extend(env_overrides())
    if per_model:
        if not isinstance(per_model, Mapping):
            raise RopeConfigError(f"per_model must map model-name globs to overrides, got {type(per_model).__name__}")
        for pattern, mapping in per_model.items():
            layers.append(override_from_mapping(mapping, "per-model mapping", pattern=pattern))
    if overrides:
        layers.append(override_from_mapping(overrides, "explicit"))
    spec = resolve(view, layers)
    if emit_warnings:
        for message in spec.warnings:
            warnings.warn(message, RopepatchWarning, stacklevel=2)
    return spec


def detect_view(view: ConfigView) -> Finding:
    """The winning detector's finding for ``view`` (first result wins)."""
    finding = get_registry().pm.hook.detect_rope(view=view)
    if finding is None:  # only if someone blocked the fallback detector
        finding = Finding("default", detector="none", provenance={"method": "no detector answered"})
    return finding


def resolve(view: ConfigView, layers: Iterable[Override] = ()) -> RopeSpec:
    """Combine the metadata's finding with override layers (lowest precedence first)."""
    values, provenance = read_common(view)
    finding = detect_view(view)
    values.update(finding.values)
    provenance.update(finding.provenance)
    method = finding.method
    params = dict(finding.params)
    warns = list(finding.warnings)
    notes = list(finding.notes)
    target: tuple[int, str] | None = None
    method_named_by_user = False
    overridden: set[str] = set()  # what the layers set: the structured record adapters decide on

    for layer in layers:
        if layer.is_empty() or not layer.applies_to(view.names):
            continue
        label = layer.origin + (f" [{layer.pattern}]" if layer.pattern else "")
        if layer.method is not None:
            if layer.method != _known_method(method):
                # parameters of the detected method mean nothing to the new one
                params = {}
                notes.append(f"method {method!r} from metadata replaced by {layer.method!r} ({label})")
            method = layer.method
            provenance["method"] = label
            method_named_by_user = True
            overridden.add("method")
        for key, value in layer.values.items():
            values[key] = value
            provenance[key] = label
            overridden.add(key)
        for key, value in layer.params.items():
            params[key] = value
            provenance[key] = label
            overridden.add(key)
        if layer.target_context is not None:
            target = (layer.target_context, label)

    if target is not None:
        before = (method, dict(values))
        method, values, notes = _apply_target(view, method, values, provenance, notes, target, method_named_by_user)
        if (method, values) != before:
            overridden.update(("method", "factor", "original_max_position_embeddings", "max_position_embeddings"))

    for key in list(provenance):
        if key not in values and key not in params and key != "method":
            provenance.pop(key)
    overridden &= {*values, *params, "method"}
    spec_values = {k: values[k] for k in _FIELDS if values.get(k) is not None}
    names = view.names
    return RopeSpec(
        method=method,
        params=params,
        provenance=provenance,
        warnings=tuple(dict.fromkeys(warns)),
        notes=tuple(dict.fromkeys(notes)),
        source=view.path,
        model=names[0] if names else None,
        overridden=frozenset(overridden),
        **spec_values,
    )


def _known_method(name: str) -> str | None:
    """The canonical name of ``name``, or None when no method has it (an override may replace it)."""
    try:
        return str(get_registry().method(name).name)
    except RopeConfigError:
        return None


def _apply_target(
    view: ConfigView,
    method: str,
    values: dict[str, Any],
    provenance: dict[str, str],
    notes: list[str],
    target: tuple[int, str],
    method_named_by_user: bool,
) -> tuple[str, dict[str, Any], list[str]]:
    n, label = target
    canonical = get_registry().method(method, source=view.path, key=provenance.get("method") or "method").name
    if canonical != "default" and not method_named_by_user:
        notes.append(
            f"target_context={n} ignored: the checkpoint already carries {canonical} scaling "
            "(name a method to replace it)"
        )
        return method, values, notes
    original = values.get("original_max_position_embeddings") or values.get("max_position_embeddings")
    if original is None:
        raise RopeConfigError(
            "target_context needs the checkpoint's original context (max_position_embeddings), which the "
            "metadata does not give; pass original_max_position_embeddings=...",
            path=view.path,
            key="max_position_embeddings",
        )
    if n <= original:
        notes.append(f"target_context={n} fits the original context {original}: no scaling needed")
        return method, values, notes
    chosen = method if method_named_by_user and canonical != "default" else "yarn"
    if canonical == "default" and method_named_by_user:
        chosen = "yarn"
    values = dict(values)
    values["factor"] = n / original
    values["original_max_position_embeddings"] = int(original)
    values["max_position_embeddings"] = int(n)
    provenance["factor"] = f"{label}: target_context {n} / original {original}"
    provenance["original_max_position_embeddings"] = provenance.get(
        "original_max_position_embeddings"
    ) or provenance.get("max_position_embeddings", label)
    provenance["max_position_embeddings"] = f"{label}: target_context"
    provenance["method"] = f"{label}: target_context {n} > original {original}"
    notes.append(f"extended from {original} to {n} tokens with {chosen} (factor {n / original:g})")
    return chosen, values, notes
