"""TGI adapter: every flash model's rotary layer, built from the checkpoint's real RoPE spec.

Every TGI flash model builds its rotary layer with the classmethod
``PositionRotaryEmbedding.static(config, dim, base, device)`` (``layers/rotary.py`` since TGI
2.0.3; ``utils/layers.py`` in 1.x). The adapter replaces that classmethod: for a checkpoint that
needs anything but plain RoPE at the caller's base, it returns an instance of a subclass of the
class it was called on (``cls``: ``GPTJRotary``/``CohereRotary`` keep their interleaved
``forward``) that overrides only ``_update_cos_sin_cache``. The table comes from
``spec.frequencies`` with the attention factor folded into cos and sin, and has
``max(seqlen, MAX_TOTAL_TOKENS)`` rows: TGI's warm-up asks for ``max_total_tokens`` before it
captures CUDA graphs, so the table is built once and never reallocated under a graph.

This corrects TGI's silent bugs under ropepatch: ``linear`` is parsed and then ignored (since
2.0.3, commit a2573713), YaRN ignores ``attention_factor`` and hard-codes ``beta_fast=32,
beta_slow=1``. Methods whose frequencies depend on the length are evaluated once at the table's
length, as TGI's own grow-only ``dynamic`` ends up after warm-up. Multimodal sections (mrope)
stay TGI's. TGI's launcher flags ``--rope-scaling/--rope-factor`` (env ``ROPE_SCALING``,
``ROPE_FACTOR``) are honoured as metadata; ``$ROPEPATCH`` beats them.

TGI has no plugin mechanism: start it with ``ropepatch run -- text-generation-launcher ...`` (or
the ``.pth`` hook) so each shard enables ropepatch; the adapter never imports TGI itself.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from ropepatch.adapters.base import Adapter, Capability, refuse_beyond_tables
from ropepatch.errors import RopeConfigError
from ropepatch.hookspecs import hookimpl
from ropepatch.patching import PatchSet

__all__ = ["TgiAdapter", "TgiLegacyAdapter", "plan_static", "tgi_rotary_class"]

log = logging.getLogger("ropepatch")

_THETA_KEYS = ("rope_theta", "rotary_emb_base", "rotary_base", "rope_base")
_DIM_KEYS = (
    "qk_rope_head_dim",
    "rotary_dim",
    "rotary_emb_dim",
    "partial_rotary_factor",
    "rotary_pct",
    "rotary_emb_fraction",
)


class TgiAdapter(Adapter):
    """TGI 2.0.3 and later (``layers/rotary.py``)."""

    name = "tgi"
    distribution = "text-generation-server"
    # layers/rotary.py layout: TGI 2.0.3 - 3.3.7. TGI 2.2 - 3.3.7 all report the distribution
    # version "2.0.5.dev0" (server/pyproject.toml stopped being bumped), 2.0.3 reports 2.0.2.
    # Executed on CPU against v3.3.7's source (compat/tgi); earlier 2.x read in source.
    floor = "2.0.2"
    tested_up_to = "2.0.5"
    trigger = "text_generation_server.layers.rotary"
    capabilities = (Capability(trigger, "PositionRotaryEmbedding.static", ("config", "dim", "base", "device")),)

    def install(self, patches: PatchSet, state: Any) -> None:
        import sys

        _patch_static(sys.modules[self.trigger], patches, state, self)

    def problem(self, version: Any = None) -> str | None:
        problem = super().problem(version)
        version = version or self.version()
        if problem is None and self.layout_until is not None and version is not None:
            from packaging.version import Version

            if Version(version.base_version) >= Version(self.layout_until):
                return f"{self.distribution} {version} has the layers/rotary.py layout (the 'tgi' adapter's)"
        return problem

    #: the first version with another layout (the legacy adapter's upper edge is a layout, not a test bound)
    layout_until: str | None = None


class TgiLegacyAdapter(TgiAdapter):
    """TGI 1.x (``utils/layers.py``; the class exists only when flash-attn's rotary kernels import)."""

    name = "tgi-1x"
    # read in v1.0.3 / v1.1.0 source, not executed
    floor = "1.0.3"
    tested_up_to = "2.0.2"
    layout_until = "2.0.3"
    trigger = "text_generation_server.utils.layers"
    capabilities = (Capability(trigger, "PositionRotaryEmbedding.static", ("config", "dim", "base", "device")),)


def _patch_static(module: ModuleType, patches: PatchSet, state: Any, adapter: Adapter) -> None:
    base_cls = getattr(module, "PositionRotaryEmbedding", None)
    if base_cls is None:
        raise RuntimeError(
            f"{module.__name__} has no PositionRotaryEmbedding (TGI's flash rotary kernels did not import)"
        )
    descriptor = base_cls.__dict__.get("static")
    if not isinstance(descriptor, classmethod):
        raise RuntimeError(f"{module.__name__}.PositionRotaryEmbedding.static is not a classmethod")
    original = descriptor.__func__
    rope_config = getattr(module, "_get_rope_config", None)
    logged: set[tuple[str, int]] = set()

    def static(cls: type, config: Any, dim: int, base: float, device: Any) -> Any:
        if not adapter.is_live(state):  # disabled meanwhile (restore() puts TGI's own back)
            return original(cls, config, dim, base, device)
        tgi_rope_scaling = rope_config(config) if rope_config else None
        try:
            plan = plan_static(state, config, dim, base, tgi_rope_scaling=tgi_rope_scaling)
        except RopeConfigError as exc:
            if state.strict:
                raise
            message = f"ropepatch: TGI keeps its own rotary layer for this model: {exc}"
            adapter.say_once(("refused", message), message, warn=True)
            plan = None
        if plan is None or not _plain_init(cls, base_cls):
            return original(cls, config, dim, base, device)
        spec, rows = plan
        table_cls = tgi_rotary_class(cls)
        inv_freq, _ = spec.frequencies(rows if spec.is_dynamic else None, device)
        layer = table_cls(inv_freq, None)  # PositionRotaryEmbedding.__init__(inv_freq, scaling_factor)
        layer.ropepatch_spec = spec
        layer.ropepatch_rows = rows
        if (spec.to_json(), rows) not in logged:  # once per distinct table, not once per layer
            logged.add((spec.to_json(), rows))
            log.info("ropepatch: TGI rotary layer %s, %d rows", spec.summary(), rows)
        name = getattr(config, "_name_or_path", None) or _served_model_id()
        kind = (tgi_rope_scaling or {}).get("rope_type") or (tgi_rope_scaling or {}).get("type")
        adapter.changed(spec, model=name or "the served model", before=f"{kind or 'plain'} RoPE at base {base:g}")
        return layer

    static.__wrapped__ = original  # type: ignore[attr-defined]
    static.__doc__ = original.__doc__
    patches.set(base_cls, "static", classmethod(static))


def _plain_init(cls: type, base_cls: type) -> bool:
    """True when ``cls`` builds like ``PositionRotaryEmbedding(inv_freq, scaling_factor)``."""
    for klass in cls.__mro__:
        if klass is base_cls:
            return True
        if "__init__" in klass.__dict__:
            log.debug("ropepatch: %s has its own __init__; TGI's static() kept", cls.__name__)
            return False
    return False


def plan_static(
    state: Any, config: Any, dim: int, base: float, *, tgi_rope_scaling: Mapping[str, Any] | None = None
) -> tuple[Any, int] | None:
    """The spec and table rows for one ``static()`` call, or ``None`` when TGI's own layer is right.

    ``tgi_rope_scaling`` is what TGI itself would use (its ``_get_rope_config``: the launcher's
    ``ROPE_SCALING``/``ROPE_FACTOR`` over the config). The caller's ``base`` is kept unless the
    metadata is silent about the base and the known-checkpoint table, or an override, gives one
    (FalconLite2: TGI's Falcon config fills in 10000, the checkpoint was trained at 1e6).
    """
    from ropepatch.detection import resolve
    from ropepatch.metadata.view import ConfigView

    data, names = _config_data(config)
    if tgi_rope_scaling is not None:
        data.pop("rope_parameters", None)
        data["rope_scaling"] = dict(tgi_rope_scaling)
    rd = data.get("rope_parameters") or data.get("rope_scaling") or {}
    if isinstance(rd, Mapping):
        kind = str(rd.get("rope_type") or rd.get("type") or "default").lower()
        if kind == "mrope" or rd.get("mrope_section") is not None:
            return None  # multimodal sections: TGI's own layer
    for key in _DIM_KEYS:
        data.pop(key, None)
    data["rotary_dim"] = int(dim)
    view = ConfigView(data=data, kind="transformers", label=f"TGI {type(config).__name__}", names=names)
    layers = state.layers()
    spec = resolve(view, layers)
    applying = [layer for layer in layers if not layer.is_empty() and layer.applies_to(view.names)]
    theta_overridden = any("rope_theta" in layer.values for layer in applying)
    has_theta = any(data.get(k) is not None for k in _THETA_KEYS) or (isinstance(rd, Mapping) and rd.get("rope_theta"))
    from_default = str(spec.provenance.get("rope_theta", "")).startswith("default")
    if not theta_overridden and (has_theta or from_default) and spec.rope_theta != float(base):
        # TGI passes the base each layer really uses (Gemma 3 local layers, per-arch defaults)
        spec = spec.replace(rope_theta=float(base))
    if not applying and spec.method == "default" and spec.rope_theta == float(base):
        return None  # plain RoPE at TGI's base: nothing to correct
    refuse_beyond_tables(spec, "TGI's rotary layer")
    return spec, table_rows(spec, config)


def table_rows(spec: Any, config: Any = None, environ: Mapping[str, str] | None = None) -> int:
    """Rows to build: TGI's ``MAX_TOTAL_TOKENS`` (set per shard by its launcher), else the spec's context."""
    env = os.environ if environ is None else environ
    try:
        total = int(env.get("MAX_TOTAL_TOKENS", "0") or 0)
    except ValueError:
        total = 0
    if total > 0:
        return total
    context = spec.effective_context
    original = spec.effective_original or spec.max_position_embeddings
    if context is None and spec.effective_factor is not None and original is not None:
        context = int(round(spec.effective_factor * original))
    fallback = getattr(config, "max_position_embeddings", None) if config is not None else None
    return int(context or spec.max_position_embeddings or fallback or 4096)


def _config_data(config: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The config TGI passed, as a dict, minus a base its config class invented; and model names."""
    if isinstance(config, Mapping):
        data = dict(config)
    else:
        data = dict(config.to_dict())
    name = getattr(config, "_name_or_path", None) or data.get("_name_or_path") or _served_model_id()
    names: tuple[str, ...] = ()
    if name:
        data["_name_or_path"] = str(name)
        names = (str(name), str(name).rstrip("/").rsplit("/", 1)[-1])
    raw = _checkpoint_config(str(name)) if name else None
    if raw is not None and not _states_theta(raw):
        # config classes fill in a base when config.json has none (TGI's RWConfig, transformers'
        # rope_parameters); the detectors must see the checkpoint's silence to apply what they
        # know about it (the known-checkpoint table)
        for key in _THETA_KEYS:
            data.pop(key, None)
        for key in ("rope_parameters", "rope_scaling"):
            rd = data.get(key)
            if isinstance(rd, Mapping):
                data[key] = {k: v for k, v in rd.items() if k != "rope_theta"}
    return data, names


def _served_model_id() -> str | None:
    """The model id of a TGI shard (``text-generation-server serve MODEL_ID ...``), when the config lacks it."""
    import sys

    argv = sys.argv
    if len(argv) > 2 and argv[1] == "serve" and os.path.basename(argv[0]).startswith("text-generation-server"):
        return argv[2]
    return None


def _states_theta(raw: Mapping[str, Any]) -> bool:
    if any(raw.get(k) is not None for k in _THETA_KEYS):
        return True
    return any(
        isinstance(raw.get(k), Mapping) and raw[k].get("rope_theta") is not None
        for k in ("rope_parameters", "rope_scaling")
    )


def _checkpoint_config(name: str) -> dict[str, Any] | None:
    """The checkpoint's own config.json (a local folder, or the Hugging Face cache), never downloading."""
    path: Path | None = Path(name) / "config.json"
    if path is not None and not path.is_file():
        path = None
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(name, "config.json", revision=os.environ.get("REVISION") or None)
            if isinstance(found, str):
                path = Path(found)
        except Exception:  # noqa: BLE001 - no hub library, a name that is not a repo id, ...
            path = None
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


_classes: dict[type, type] = {}


def tgi_rotary_class(cls: type) -> type:
    """A subclass of ``cls`` (TGI's rotary class, or GPT-J's/Cohere's) whose cos/sin cache comes from a spec.

    Only ``_update_cos_sin_cache(dtype, device, seqlen)`` changes; ``get_cos_sin`` and ``forward``
    (TGI's kernels) are inherited. Instances carry ``ropepatch_spec`` and ``ropepatch_rows``.
    """
    sub = _classes.get(cls)
    if sub is not None:
        return sub

    def _update_cos_sin_cache(self: Any, dtype: Any, device: Any, seqlen: int) -> None:
        from ropepatch.adapters.tables import cos_sin_table

        rows = max(int(seqlen), int(self.ropepatch_rows))
        cached = self._cos_cached
        if cached is not None and rows <= self._seq_len_cached and cached.device == device and cached.dtype == dtype:
            return
        cos, sin, inv_freq = cos_sin_table(self.ropepatch_spec, rows, device)
        self.inv_freq = inv_freq
        self._cos_cached = cos.to(dtype)
        self._sin_cached = sin.to(dtype)
        self._seq_len_cached = rows

    sub = type(
        f"Ropepatch{cls.__name__}",
        (cls,),
        {"_update_cos_sin_cache": _update_cos_sin_cache, "__ropepatch__": True, "__module__": __name__},
    )
    _classes[cls] = sub
    return sub


@hookimpl
def register_adapters(register: Any) -> None:
    register(TgiAdapter())
    register(TgiLegacyAdapter())
