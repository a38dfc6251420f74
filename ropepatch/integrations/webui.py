"""text-generation-webui integration: everything behind ``plugins/text-generation-webui/ropepatch/script.py``.

The extension script only wires these functions to the webui; the logic lives here so it can be
tested without a webui checkout:

* :class:`OverrideStore`: per-model overrides (method, factor, alpha, original context) saved as JSON
  under the webui's ``user_data`` folder, handed to :func:`ropepatch.enable` as a ``per_model``
  mapping so they apply to that model and no other.
* :func:`setup`: enable ropepatch. A ``--model`` given on the command line is loaded before
  extensions run; it is reloaded only when that first load did not get the scaling (ropepatch was
  not enabled at start-up and the loaded model's rotary frequencies differ from the spec), and at
  most once per process. Started under ``ropepatch run -- python server.py ...`` (or with the
  ``.pth`` hook), the model is built right the first time and loaded once.
* :func:`install_llamacpp_loader`: the llama.cpp loader starts ``llama-server`` with a command line
  built in ``modules/llama_cpp_server.py``; the spec's flags (:mod:`ropepatch.llamacpp`) join the
  webui's ``extra_flags`` for that start, the user's own flags winning. What llama.cpp cannot run is
  said in the log and the panel, and the GGUF's own settings stay.
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
import threading
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
    "install_llamacpp_loader",
    "llamacpp_loader_flags",
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
        out: dict[str, dict[str, Any]] = {}
        for name, values in self.all().items():
            if not values:
                continue
            out[literal_pattern(name)] = values
            if name.endswith(".gguf"):
                # the webui names a GGUF model by its file name; a GGUF path is known by its stem
                out.setdefault(literal_pattern(name[: -len(".gguf")]), values)
        return out

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


#: set once the start-up model has been dealt with: the webui re-runs an extension's setup() when it
#: rebuilds the interface (a user extension is imported again as a new module), and a second reload
#: there would load the model yet again
_startup_done = threading.Event()


def setup(store: OverrideStore, shared: Any, models: Any) -> bool:
    """Enable ropepatch with the store's overrides; reload a model loaded before this ran, only if it needs it.

    Returns True when it reloaded. No reload when ropepatch was already enabled while the model was
    built (``ropepatch run`` / the ``.pth`` hook), when the loaded model already rotates with its spec,
    or when this already ran in this process.
    """
    from ropepatch import runtime

    enabled_at_start = runtime.current() is not None
    enable_with_store(store)
    if getattr(shared, "model", None) is None or _startup_done.is_set():
        _startup_done.set()
        return False
    _startup_done.set()
    name = getattr(shared, "model_name", None)
    if enabled_at_start and type(shared.model).__name__ != "LlamaServer":
        log.info("ropepatch: %s was built with ropepatch enabled at start-up; not reloading it", name)
        return False
    reason = startup_reload_reason(shared, store)
    if reason is None:
        log.info("ropepatch: %s already runs with its RoPE spec; not reloading it", name)
        return False
    log.info(
        "ropepatch: reloading %s once: %s (start the webui with `ropepatch run -- python server.py ...` to build it "
        "right the first time)",
        name,
        reason,
    )
    return reload_model(shared, models)


def startup_reload_reason(shared: Any, store: OverrideStore) -> str | None:
    """Why the model the webui loaded before the extension ran must be loaded again, or None."""
    from ropepatch import runtime

    name = getattr(shared, "model_name", None)
    args = getattr(shared, "args", None)
    path = _model_path(args, name)
    state = runtime.current()
    if state is None or path is None:
        return "ropepatch cannot tell which checkpoint it is"
    try:
        spec = state.spec_for(path)
    except RopeConfigError as exc:
        log.warning("ropepatch: %s: %s", name, exc)
        return None  # nothing ropepatch could apply: a reload would change nothing
    if spec.method == "default" and not spec.overridden:
        return None
    model = getattr(shared, "model", None)
    if type(model).__name__ == "LlamaServer":
        if str(name) in llamacpp_notes:
            return None  # started through install_llamacpp_loader's hook
        # the server was started before the loader hook existed: its command line lacks the flags
        return "llama-server was started without the RoPE flags"
    check = verify_model(model, spec)
    if check.get("checked") and check.get("matches"):
        return None
    return "it was built before ropepatch was enabled"


def _model_path(args: Any, name: Any) -> str | None:
    if not name or name == "None":
        return None
    model_dir = getattr(args, "model_dir", None) or "user_data/models"
    return str(Path(model_dir) / str(name))


# -- the llama.cpp loader --------------------------------------------------------------------
#: per model name: what the llama.cpp loader did (flags added, or why it could not), for the panel
llamacpp_notes: dict[str, str] = {}
_loader_lock = ForkSafeLock()
_loader_installed: set[int] = set()


def llamacpp_loader_flags(model_path: str, extra_flags: str | None) -> tuple[str | None, str]:
    """``(new extra_flags or None, note)`` for starting llama-server on ``model_path`` under the current state.

    The user's ``extra_flags`` come first and win over the spec's flags (checked flag by flag); the
    result keeps the webui's format (literal ``--flag value`` or legacy ``flag=value,...``). ``None``
    means "leave extra_flags as they are" (nothing to add, ropepatch off, or llama.cpp cannot run the spec).
    """
    import shlex

    from ropepatch import runtime
    from ropepatch.launcher.llamacpp import llamacpp_command
    from ropepatch.llamacpp import LlamaCppUnsupported

    state = runtime.current()
    if state is None:
        return None, "ropepatch is not enabled"
    text = (extra_flags or "").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    legacy = bool(text) and not text.startswith("-")
    given = _legacy_to_argv(text) if legacy else shlex.split(text)
    try:
        spec = state.spec_for(model_path)
        # the webui passes --ctx-size itself: -c from here would silently replace the user's setting
        result = llamacpp_command(["llama-server", "-m", model_path, *given], {}, spec=spec, context=False)
    except LlamaCppUnsupported as exc:
        return (
            None,
            f"the llama.cpp loader cannot apply this model's RoPE: {exc}; llama.cpp uses the GGUF's own settings",
        )
    except RopeConfigError as exc:
        return None, f"cannot read this model's RoPE: {exc}"
    note = result.report().removeprefix("ropepatch: ")
    if not result.added:
        return None, note
    pairs = [(result.added[i], result.added[i + 1]) for i in range(0, len(result.added), 2)]
    if legacy:
        addition = ",".join(f"{flag.lstrip('-')}={value}" for flag, value in pairs)
        return f"{text},{addition}", note
    addition = " ".join(f"{flag} {shlex.quote(value)}" for flag, value in pairs)
    return (f"{text} {addition}".strip()), note


def _legacy_to_argv(text: str) -> list[str]:
    """The webui's legacy ``flag=value,flag2`` extra_flags as argv (its own expansion rules)."""
    out: list[str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        flag, sep, value = item.partition("=")
        flag = flag.strip()
        dashes = "-" if len(flag) <= 3 and flag not in {"rpc", "fit", "pos", "ppl"} else "--"
        out.append(dashes + flag)
        if sep:
            out.append(value.strip())
    return out


def install_llamacpp_loader(shared: Any, llama_cpp_server: Any) -> bool:
    """Make the webui's llama.cpp loader start llama-server with the spec's flags; False if not possible.

    Wraps ``LlamaServer._start_server``: for that call only, ``shared.args.extra_flags`` also carries the
    flags, so the webui's own command builder puts them on the command line. Installed once per class.
    """
    cls = getattr(llama_cpp_server, "LlamaServer", None)
    original = getattr(cls, "_start_server", None)
    if cls is None or original is None:
        log.warning("ropepatch: this webui's llama.cpp loader has no LlamaServer._start_server; RoPE flags not applied")
        return False
    with _loader_lock:
        if id(cls) in _loader_installed or getattr(original, "__ropepatch__", False):
            return True
        _loader_installed.add(id(cls))

    def _start_server(self: Any) -> Any:
        args = getattr(shared, "args", None)
        path = str(getattr(self, "model_path", "") or "")
        if args is None or not path:
            return original(self)
        before = getattr(args, "extra_flags", None)
        flags, note = llamacpp_loader_flags(path, before)
        name = getattr(shared, "model_name", None) or Path(path).name
        llamacpp_notes[str(name)] = note
        if "cannot" in note:
            log.warning("ropepatch: %s", note)
        else:
            log.info("ropepatch: llama.cpp loader: %s", note)
        if flags is None:
            return original(self)
        args.extra_flags = flags
        try:
            return original(self)
        finally:
            args.extra_flags = before

    _start_server.__ropepatch__ = True  # type: ignore[attr-defined]
    _start_server.__wrapped__ = original  # type: ignore[attr-defined]
    cls._start_server = _start_server
    return True


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
    if str(model_name) in llamacpp_notes:
        out["llamacpp"] = llamacpp_notes[str(model_name)]
    elif _is_gguf_model(model_path):
        out["llamacpp"] = _llamacpp_preview(model_path, spec)
    return out


def _is_gguf_model(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return p.suffix == ".gguf" or (p.is_dir() and any(p.glob("*.gguf")))


def _llamacpp_preview(path: str | os.PathLike[str], spec: Any) -> str:
    """What the llama.cpp loader will pass for this GGUF (before it has started one)."""
    from ropepatch.llamacpp import LlamaCppUnsupported, settings_for_gguf

    p = Path(path)
    if p.is_dir():
        p = sorted(p.glob("*.gguf"))[0]
    try:
        settings, facts = settings_for_gguf(p, spec)
    except LlamaCppUnsupported as exc:
        return f"cannot apply this RoPE: {exc}"
    except RopeConfigError as exc:
        return f"cannot read this model's RoPE: {exc}"
    return "will pass " + " ".join(settings.flags(facts.arch, context=False))


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
    if data.get("llamacpp"):
        rows += ["", f"llama.cpp loader: {data['llamacpp']}"]
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
