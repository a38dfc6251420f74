"""text-generation-webui integration: everything behind ``plugins/text-generation-webui/ropepatch/script.py``.

The extension script only wires these functions to the webui; the logic lives here so it can be
tested without a webui checkout:

* :class:`OverrideStore`: per-model overrides (method, factor, alpha, original context) saved as JSON
  under the webui's ``user_data`` folder, handed to :func:`ropepatch.enable` as a ``per_model``
  mapping so they apply to that model and no other.
* :func:`setup`: enable ropepatch and, because a ``--model`` given on the command line is loaded
  before extensions run, reload that model once so it is built patched.
* :func:`panel_data` / :func:`panel_markdown`: what the UI panel shows for the loaded model (method,
  factor, original and effective context, where each value came from, the overrides in force).
* :func:`build_panel`: the gradio panel (the RoPE controls the webui removed in v4.1).
* :func:`api_status`: the same facts as JSON for ``GET /v1/internal/ropepatch`` (and a check that a
  loaded transformers model really rotates with the spec's frequencies).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropepatch.atomic import atomic_open
from ropepatch.errors import RopeConfigError
from ropepatch.forksafe import ForkSafeLock

__all__ = [
    "OVERRIDE_FIELDS",
    "OverrideStore",
    "PanelContext",
    "api_status",
    "build_panel",
    "enable_with_store",
    "literal_pattern",
    "panel_data",
    "panel_markdown",
    "reload_model",
    "setup",
    "verify_model",
]

log = logging.getLogger("ropepatch")

#: what the panel lets a user override, in the order it shows them
OVERRIDE_FIELDS = ("method", "factor", "alpha", "original_max_position_embeddings")
#: the method dropdown entry that means "whatever the checkpoint says"
FROM_CHECKPOINT = "(from checkpoint)"


def literal_pattern(name: str) -> str:
    """A glob that matches exactly ``name`` (``[``, ``*`` and ``?`` in model names are literal)."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in name)


def clean_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """Keep the set fields: a method other than the checkpoint's, positive numbers; validate them."""
    from ropepatch.overrides import override_from_mapping

    out: dict[str, Any] = {}
    for key in OVERRIDE_FIELDS:
        value = values.get(key)
        if value in (None, "", FROM_CHECKPOINT):
            continue
        if key != "method":
            if isinstance(value, str):
                value = float(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RopeConfigError(f"{key} must be a number, got {value!r}", key=key)
            if value <= 0:
                continue  # 0 in a number box means "not set"
            if key == "original_max_position_embeddings":
                if float(value) != int(value):
                    raise RopeConfigError(f"{key} must be a whole number, got {value!r}", key=key)
                value = int(value)
            else:
                value = float(value)
        out[key] = value
    override_from_mapping(out, "webui panel")  # unknown methods and bad values fail here, before saving
    return out


class OverrideStore:
    """Per-model overrides in one JSON file: ``{"model name": {"method": "yarn", "factor": 4.0}}``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = ForkSafeLock()

    def all(self) -> dict[str, dict[str, Any]]:
        """Every model's overrides (an unreadable file counts as empty, with a warning)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ropepatch: ignoring unreadable overrides file %s: %s", self.path, exc)
            return {}
        if not isinstance(data, dict):
            log.warning("ropepatch: ignoring overrides file %s: not a JSON object", self.path)
            return {}
        return {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}

    def get(self, model: str) -> dict[str, Any]:
        """The overrides saved for ``model`` (empty when none)."""
        return self.all().get(model, {})

    def set(self, model: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and save ``model``'s overrides (empty values clear it); return what was saved."""
        cleaned = clean_overrides(values)
        with self._lock:
            data = self.all()
            if cleaned:
                data[model] = cleaned
            else:
                data.pop(model, None)
            self._write(data)
        return cleaned

    def clear(self, model: str) -> None:
        """Forget ``model``'s overrides."""
        self.set(model, {})

    def per_model(self) -> dict[str, dict[str, Any]]:
        """The ``per_model`` mapping for :func:`ropepatch.enable` (exact model names as globs)."""
        return {literal_pattern(name): values for name, values in self.all().items() if values}

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a private temporary file renamed over the name: readers never see a half-written file,
        # and a symlink planted at the store's name is replaced, its target never written
        with atomic_open(self.path, "w", perms=0o600) as f:
            json.dump(data, f, indent=2, sort_keys=True)


def enable_with_store(store: OverrideStore, **kwargs: Any) -> None:
    """``ropepatch.enable()`` with the store's per-model overrides (again after every change)."""
    import ropepatch

    ropepatch.enable(per_model=store.per_model(), **kwargs)


# -- reloading the model the webui loaded before the extension ran ---------------------------
def reload_model(shared: Any, models: Any) -> bool:
    """Unload and load ``shared.model_name`` again with the webui's own functions; False if none is loaded."""
    name = getattr(shared, "model_name", None)
    if getattr(shared, "model", None) is None or name in (None, "", "None"):
        return False
    import inspect

    unload = models.unload_model
    if "keep_model_name" in inspect.signature(unload).parameters:
        unload(keep_model_name=True)
    else:  # webui before keep_model_name existed: unload forgets the name
        unload()
        shared.model_name = name
    shared.model, shared.tokenizer = models.load_model(name)
    return True


def setup(store: OverrideStore, shared: Any, models: Any) -> bool:
    """Enable ropepatch with the store's overrides and reload a model loaded before this ran."""
    enable_with_store(store)
    if getattr(shared, "model", None) is None:
        return False
    log.info("ropepatch: reloading %s so that it is built with its detected RoPE scaling", shared.model_name)
    return reload_model(shared, models)


# -- what the panel shows ----------------------------------------------------------------------
def panel_data(
    model_path: str | os.PathLike[str] | None, model_name: str | None, store: OverrideStore
) -> dict[str, Any]:
    """The spec ropepatch uses for a webui model, with provenance and overrides, as plain data."""
    from ropepatch import runtime

    out: dict[str, Any] = {"model": model_name, "overrides": store.get(model_name) if model_name else {}}
    state = runtime.current()
    out["enabled"] = state is not None
    out["runtimes"] = runtime.status()
    if not model_name or model_name == "None" or model_path is None:
        out["error"] = "no model loaded"
        return out
    try:
        if state is not None:
            spec = state.spec_for(model_path)
        else:
            from ropepatch.detection import detect

            spec = detect(model_path, per_model=store.per_model(), emit_warnings=False)
    except RopeConfigError as exc:
        out["error"] = str(exc)
        return out
    alpha = spec.method_params.get("alpha")
    out.update(
        method=spec.method,
        factor=spec.effective_factor,
        alpha=alpha,
        original_context=spec.effective_original,
        effective_context=spec.effective_context,
        max_position_embeddings=spec.max_position_embeddings,
        rope_theta=spec.rope_theta,
        rotary_dim=spec.rotary_dim,
        dynamic=spec.is_dynamic,
        summary=spec.summary(),
        provenance=dict(spec.provenance),
        warnings=list(spec.warnings),
        notes=list(spec.notes),
    )
    return out


def panel_markdown(data: Mapping[str, Any]) -> str:
    """The panel's text for :func:`panel_data` output."""
    if data.get("error"):
        return f"**ropepatch** - {data.get('model') or 'no model'}: {data['error']}"
    prov = data.get("provenance", {})

    def line(label: str, value: Any, key: str) -> str:
        shown = "-" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))
        source = prov.get(key)
        return f"| {label} | {shown} | {source or ''} |"

    context = data.get("effective_context")
    rows = [
        f"**ropepatch** - `{data['model']}`" + ("" if data.get("enabled") else " (ropepatch is not enabled)"),
        "",
        "| | value | from |",
        "|---|---|---|",
        line("method", data.get("method"), "method"),
        line("factor", data.get("factor"), "factor"),
        line("alpha", data.get("alpha"), "alpha"),
        line("original context", data.get("original_context"), "original_max_position_embeddings"),
        line(
            "effective context", context if context is not None else "grows with the input", "max_position_embeddings"
        ),
        line("rope_theta", data.get("rope_theta"), "rope_theta"),
    ]
    if data.get("overrides"):
        rows += ["", "Overrides saved for this model: " + ", ".join(f"{k}={v}" for k, v in data["overrides"].items())]
    for w in data.get("warnings", []):
        rows += ["", f"Warning: {w}"]
    for n in data.get("notes", []):
        rows += ["", f"Note: {n}"]
    return "\n".join(rows)


# -- checking a loaded model -------------------------------------------------------------------
def verify_model(model: Any, spec: Any) -> dict[str, Any]:
    """Compare a loaded transformers model's rotary frequencies with the spec's (initial state).

    Looks for modules holding an ``inv_freq`` buffer (transformers' rotary embeddings); returns
    ``{"checked": n, "matches": bool, "max_rel_error": x, "attention_scaling": [...]}``, or
    ``{"checked": 0}`` when the model has none (other runtimes keep their RoPE elsewhere).
    """
    modules = getattr(model, "modules", None)
    if not callable(modules):
        return {"checked": 0}
    inv, attention = spec.frequencies(None)
    worst = 0.0
    factors = []
    checked = 0
    for module in modules():
        freq = getattr(module, "inv_freq", None)
        if freq is None or not hasattr(freq, "shape") or tuple(freq.shape) != tuple(inv.shape):
            continue
        checked += 1
        got = freq.detach().double().cpu()
        worst = max(worst, float(((got - inv.double()).abs() / inv.double()).max()))
        factors.append(float(getattr(module, "attention_scaling", 1.0)))
    if not checked:
        return {"checked": 0}
    factor_ok = all(math.isclose(f, attention, rel_tol=1e-6) for f in factors)
    return {
        "checked": checked,
        "matches": worst <= 1e-5 and factor_ok,
        "max_rel_error": worst,
        "attention_scaling": factors,
        "expected_attention_scaling": attention,
    }


def api_status(model_path: str | None, model_name: str | None, model: Any, store: OverrideStore) -> dict[str, Any]:
    """``GET /v1/internal/ropepatch``: enabled, installed adapters, the spec, and the loaded-model check."""
    data = panel_data(model_path, model_name, store)
    if model is not None and "error" not in data:
        from ropepatch import runtime

        state = runtime.current()
        if state is not None and model_path is not None:
            data["verify"] = verify_model(model, state.spec_for(model_path))
    return data


# -- the gradio panel --------------------------------------------------------------------------
@dataclass
class PanelContext:
    """What the panel needs from its host: the store, the current model, and a reload."""

    store: OverrideStore
    current_model: Callable[[], tuple[str | None, str | None]]  # (name, path)
    reload: Callable[[], bool]


def _methods() -> list[str]:
    from ropepatch.registry import get_registry

    return [FROM_CHECKPOINT, *sorted(get_registry().methods)]


def panel_values(ctx: PanelContext) -> tuple[Any, ...]:
    """``(markdown, method, factor, alpha, original)`` for the current model's panel."""
    name, path = ctx.current_model()
    data = panel_data(path, name, ctx.store)
    saved = data.get("overrides", {})
    return (
        panel_markdown(data),
        saved.get("method", FROM_CHECKPOINT),
        saved.get("factor"),
        saved.get("alpha"),
        saved.get("original_max_position_embeddings"),
    )


def save_overrides(
    ctx: PanelContext, method: Any, factor: Any, alpha: Any, original: Any, reload: bool = True
) -> tuple[Any, ...]:
    """Validate and save the panel's overrides for the current model, re-enable, reload; new panel values."""
    name, path = ctx.current_model()
    if not name or name == "None":
        return ("**ropepatch**: load a model first; overrides are saved per model.", method, factor, alpha, original)
    values = {"method": method, "factor": factor, "alpha": alpha, "original_max_position_embeddings": original}
    previous = ctx.store.get(name)
    try:
        saved = ctx.store.set(name, values)
        enable_with_store(ctx.store)
        if path is not None:
            from ropepatch import runtime

            state = runtime.current()
            if state is not None:
                state.spec_for(path)  # the combination must make a valid spec (e.g. ntk needs alpha)
    except (RopeConfigError, ValueError) as exc:
        ctx.store.set(name, previous)  # keep what worked
        enable_with_store(ctx.store)
        return (f"**ropepatch**: not saved: {exc}", method, factor, alpha, original)
    reloaded = ctx.reload() if reload else False
    out = panel_values(ctx)
    note = f"\n\nSaved {saved or 'no overrides'} for `{name}`" + ("; model reloaded." if reloaded else ".")
    return (out[0] + note, *out[1:])


def clear_overrides(ctx: PanelContext) -> tuple[Any, ...]:
    """Forget the current model's overrides, re-enable and reload."""
    return save_overrides(ctx, FROM_CHECKPOINT, None, None, None)


def build_panel(gr: Any, ctx: PanelContext) -> dict[str, Any]:
    """Build the RoPE panel inside the current gradio Blocks context; return its components."""
    with gr.Accordion("RoPE scaling (ropepatch)", open=False):
        info = gr.Markdown(value=lambda: panel_values(ctx)[0])
        with gr.Row():
            method = gr.Dropdown(choices=_methods(), value=FROM_CHECKPOINT, label="method")
            factor = gr.Number(value=None, label="factor (0 = from checkpoint)")
            alpha = gr.Number(value=None, label="NTK alpha (0 = from checkpoint)")
            original = gr.Number(value=None, label="original context (0 = from checkpoint)", precision=0)
        with gr.Row():
            save = gr.Button("Save for this model and reload", variant="primary")
            clear = gr.Button("Clear this model's overrides")
            refresh = gr.Button("Refresh")
    outputs = [info, method, factor, alpha, original]
    save.click(
        lambda m, f, a, o: save_overrides(ctx, m, f, a, o),
        inputs=[method, factor, alpha, original],
        outputs=outputs,
        api_name="ropepatch_save",
    )
    clear.click(lambda: clear_overrides(ctx), inputs=None, outputs=outputs, api_name="ropepatch_clear")
    refresh.click(lambda: panel_values(ctx), inputs=None, outputs=outputs, api_name="ropepatch_refresh")
    return {
        "info": info,
        "method": method,
        "factor": factor,
        "alpha": alpha,
        "original": original,
        "save": save,
        "clear": clear,
        "refresh": refresh,
    }
