"""Which scalings an evaluation compares: labels mapped to ropepatch overrides.

``--methods default,linear,ntk,dynamic,yarn`` names methods; each becomes the overrides that extend
the model from its original context ``L0`` to the longest evaluated length ``T``:

* ``default``: plain RoPE, whatever the checkpoint says;
* ``auto``: no override at all, i.e. what ropepatch detects in the checkpoint;
* a static method (``linear``, ``ntk``, ``yarn``, ...): ``factor = T / L0`` (NTK's alpha too);
* a dynamic method: the factor it needs is its own (``dynamic``: 2, transformers' documented
  example and InternLM2.5's shipped value; the others do not use one), since it adapts to the
  current length by itself.

``--variant LABEL=METHOD:key=value,...`` adds any other combination in ``$ROPEPATCH`` syntax.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ropepatch.errors import RopeConfigError

__all__ = ["Variant", "applied_spec", "parse_variant", "variants_for"]

#: the factor given to dynamic methods that take one, when the user names none
DYNAMIC_FACTOR = 2.0


@dataclass(frozen=True)
class Variant:
    """One line of the comparison: a label and the ropepatch overrides that produce it."""

    label: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """The overrides in ``$ROPEPATCH``-like syntax, for tables and logs."""
        if not self.overrides:
            return "(as detected)"
        o = dict(self.overrides)
        method = o.pop("method", "")
        body = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in o.items())
        return f"{method}:{body}" if method and body else method or body


def applied_spec(spec: Any) -> dict[str, Any]:
    """What a row measured, from the spec applied to the model: method, factor and original -> effective
    context, plus ``label``, the one-line form tables, CSV rows and plot legends show
    (``yarn x4, 4096 -> 16384``; ``dynamic x2, 4096 -> grows with input``; ``default, 4096``;
    ``linear x4, ? -> 16384`` when the original context is unknown)."""
    method = str(spec.method)
    factor = spec.effective_factor if method != "default" else None
    original = spec.effective_original
    context = spec.effective_context
    label = method + (f" x{factor:g}" if factor is not None else "")
    if context is None and spec.is_dynamic:
        span = f"{original} -> grows with input" if original else "grows with input"
    elif original and context and original != context:
        span = f"{original} -> {context}"
    elif original is None and context and method != "default":
        span = f"? -> {context}"  # scaled, but the metadata does not say from which context
    else:
        span = str(context or original or spec.max_position_embeddings or "context unknown")
    return {
        "method": method,
        "factor": factor,
        "original_context": original,
        "effective_context": context,
        "label": f"{label}, {span}",
    }


def _method(name: str) -> Any:
    from ropepatch.registry import get_registry

    return get_registry().method(name, source="--methods", key="method")


def variants_for(names: Iterable[str], *, original: int, target: int, factor: float | None = None) -> list[Variant]:
    """Variants for method names (see the module docstring). ``factor`` overrides every factor."""
    out: list[Variant] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name == "auto":
            out.append(Variant("auto", {}))
            continue
        method = _method(name)
        canon = method.name
        if canon == "default":
            out.append(Variant(name, {"method": "default"}))
            continue
        if canon == "longrope":
            raise RopeConfigError(
                "longrope needs the per-dimension factors a LongRoPE checkpoint ships; evaluate it with "
                "'auto' on such a checkpoint, or with --variant LABEL=longrope:short_factor=[...],long_factor=[...]",
                key="method",
            )
        o: dict[str, Any] = {"method": canon, "original_max_position_embeddings": int(original)}
        if method.dynamic:
            if method.uses_factor != "unused":
                o["factor"] = float(factor if factor is not None else DYNAMIC_FACTOR)
        else:
            s = float(factor if factor is not None else max(1.0, target / original))
            o["factor"] = s
            o["max_position_embeddings"] = int(round(s * original))
        out.append(Variant(name, o))
    labels = [v.label for v in out]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise RopeConfigError(f"method listed twice: {', '.join(dupes)}", key="method")
    return out


def parse_variant(text: str) -> Variant:
    """``LABEL=METHOD:key=value,...`` (``$ROPEPATCH`` syntax after the ``=``) -> :class:`Variant`."""
    from ropepatch.overrides import parse_overrides

    label, sep, body = text.partition("=")
    if not sep or not label.strip() or ":" in label or not body.strip():
        raise RopeConfigError(f"--variant expects LABEL=METHOD[:key=value,...], got {text!r}", key="variant")
    layers = parse_overrides(body, origin=f"--variant {label.strip()}")
    if len(layers) != 1 or layers[0].pattern is not None:
        raise RopeConfigError(f"--variant takes one entry without a model pattern, got {body!r}", key="variant")
    layer = layers[0]
    o: dict[str, Any] = {}
    if layer.method is not None:
        o["method"] = layer.method
    o.update(layer.values)
    o.update(layer.params)
    if layer.target_context is not None:
        o["target_context"] = layer.target_context
    return Variant(label.strip(), o)


def merge_variants(base: Sequence[Variant], extra: Sequence[Variant]) -> list[Variant]:
    """``base`` then ``extra``; a label may appear once."""
    out = list(base)
    seen = {v.label for v in out}
    for v in extra:
        if v.label in seen:
            raise RopeConfigError(f"variant label {v.label!r} is already used", key="variant")
        seen.add(v.label)
        out.append(v)
    return out
