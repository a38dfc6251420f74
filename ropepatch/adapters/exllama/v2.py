"""ExLlamaV2 adapter: the model's sin/cos tables come from the detected spec.

ExLlamaV2 rotates q and k with fp16 sin/cos tables that each device context builds once, at load
(``prepare_sincos``: ``exllamav2.device.ExLlamaV2DeviceContext`` from 0.1.9,
``exllamav2.model.ExLlamaV2DeviceTensors`` before), and that its kernels and CUDA graphs read from
then on. The adapter lets the runtime build its tables, then replaces the table of the model's main
RoPE base (never the sliding-window base of Gemma-style models) with the spec's, before the first
forward. From 0.2.5 it also answers ``exllamav2.rope.get_rope_params``, which multimodal (M-RoPE)
embeddings call per request, so those agree with the tables.

What this fixes: methods ExLlamaV2 does not know (dynamic NTK, NTK-aware alpha from metadata,
part-NTK, NTK-by-parts, NTK-Margin/NTK-YaRN, dynamic YaRN; ``dynamic`` configs silently got
unscaled tables), and the ones it gets wrong: YaRN's correction range taken from ``max_seq_len``
instead of the original context and switched off when ``max_seq_len`` fits the original context,
YaRN parameters (beta, mscale, attention_factor) ignored, LongRoPE's cos/sin factor derived from
``max_seq_len``. ExLlamaV2's own knobs (``scale_pos_emb``, ``scale_alpha_value``) are not applied on
top of a spec that already describes the scaling; a log line says so. A model whose spec is plain
RoPE (nothing detected, nothing overridden) keeps ExLlamaV2's tables and knobs untouched.

Dynamic methods get a per-position table (see :mod:`ropepatch.adapters.exllama.tables`): exact for
token-by-token decoding, different from transformers for prompts longer than the original context
prefilled in one pass.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections import OrderedDict
from typing import Any

from ropepatch.adapters.base import Adapter, Capability
from ropepatch.adapters.exllama.tables import (
    CONTEXT,
    PER_POSITION,
    position_angles,
    sincos_table,
    table_policy,
    unexpressible,
)
from ropepatch.hookspecs import hookimpl
from ropepatch.patching import PatchSet

__all__ = ["ExLlamaV2Adapter"]

log = logging.getLogger("ropepatch")


class ExLlamaV2Adapter(Adapter):
    """Replaces ExLlamaV2's RoPE tables with the spec's (module docstring)."""

    name = "exllamav2"
    distribution = "exllamav2"
    # 0.1.0-0.1.8 keep the tables in model.py, 0.1.9+ in device.py; tested: see compat/MATRIX-exllama-webui.md
    floor = "0.1.0"
    tested_up_to = "0.3.2"
    trigger = "exllamav2"
    capabilities = (
        # the table builder: device.py from 0.1.9, model.py before
        Capability(
            "exllamav2",
            "device.ExLlamaV2DeviceContext.prepare_sincos",
            alternatives=("model.ExLlamaV2DeviceTensors.prepare_sincos",),
        ),
        Capability("exllamav2.rope", "get_rope_params", ("device", "cfg")),
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: OrderedDict[tuple[Any, ...], tuple[Any, Any]] = OrderedDict()

    # -- installation ---------------------------------------------------------------------
    def install(self, patches: PatchSet, state: Any) -> None:
        """Wrap the table builder (every version) and ``rope.get_rope_params`` (0.2.5+)."""
        import importlib

        owner = _table_owner()
        original = owner.prepare_sincos
        adapter = self

        @functools.wraps(original)
        def prepare_sincos(ctx: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(ctx, *args, **kwargs)
            adapter.rebuild(ctx, state)
            return result

        patches.set(owner, "prepare_sincos", prepare_sincos)

        try:
            rope = importlib.import_module("exllamav2.rope")
        except ImportError:  # before 0.2.5 the frequencies live inside prepare_sincos
            return
        native = rope.get_rope_params

        @functools.wraps(native)
        def get_rope_params(device: Any, cfg: Any, *args: Any, **kwargs: Any) -> Any:
            base = args[0] if args else kwargs.get("base", cfg.rotary_embedding_base)
            spec = adapter.spec_for_config(cfg, state) if base == cfg.rotary_embedding_base else None
            if spec is None or table_policy(spec) == PER_POSITION:
                return native(device, cfg, *args, **kwargs)
            width = int(cfg.head_dim * getattr(cfg, "partial_rotary_factor", 1.0))
            spec = adapter.fit_width(spec, width, cfg, state)
            if spec is None:
                return native(device, cfg, *args, **kwargs)
            context = cfg.max_seq_len if table_policy(spec) == CONTEXT else None
            inv, attention = spec.frequencies(context, device)
            if getattr(cfg.arch.lm, "rope_freq_half", False):
                inv = inv.half()
            return inv, attention

        patches.set(rope, "get_rope_params", get_rope_params)

    # -- the spec of a loaded config --------------------------------------------------------
    def spec_for_config(self, cfg: Any, state: Any) -> Any:
        """The spec ExLlamaV2 should use for ``cfg``, or ``None`` to keep its own RoPE."""
        model_dir = getattr(cfg, "model_dir", None)
        if not model_dir:
            return None
        return self.spec_for(state, model_dir, label=str(model_dir), keep_own="ExLlamaV2 keeps its own tables")

    def fit_width(self, spec: Any, width: int, cfg: Any, state: Any) -> Any:
        """``spec`` with the runtime's rotary width, or ``None`` (with a warning) when they disagree."""
        if spec.rotary_dim is None:
            return spec.replace(rotary_dim=width)
        if spec.rotary_dim != width:
            message = (
                f"ropepatch: {cfg.model_dir}: the spec rotates {spec.rotary_dim} dims but ExLlamaV2 rotates {width}; "
                "its tables are left as they are"
            )
            if state.strict:
                raise RuntimeError(message)
            self.say_once(("width", str(cfg.model_dir), str(width)), message, warn=True)
            return None
        return spec

    # -- tables ---------------------------------------------------------------------------
    def rebuild(self, ctx: Any, state: Any, *, in_place: bool = False) -> bool:
        """Replace the main-base table of one device context with the spec's; True when it did."""
        cfg = ctx.model.config
        tables = getattr(ctx, "sin", None)
        if tables is None:
            return False
        as_list = isinstance(tables, list)
        if as_list and not tables:
            return False
        sin0 = tables[0] if as_list else tables
        cos0 = ctx.cos[0] if as_list else ctx.cos
        if sin0.dim() != 4:
            return False  # RopeStyle.NONE placeholder: the architecture has no RoPE
        spec = self.spec_for_config(cfg, state)
        if spec is None:
            return False
        rows, width = int(sin0.shape[-2]), int(sin0.shape[-1])
        spec = self.fit_width(spec, width, cfg, state)
        if spec is None:
            return False
        arch = getattr(ctx, "archparams", None) or getattr(cfg.arch, "lm", None) or cfg.arch
        interleaved = getattr(arch.rope_style, "name", "") == "GPTJ"
        offset = int(getattr(cfg, "pos_id_index", 0) or 0)
        half = bool(getattr(arch, "rope_freq_half", False))
        angles, attention = self._angles(spec, rows, offset, int(cfg.max_seq_len), half)
        # attention: a float, or one value per row (dynamic YaRN). A spec's softmax_scale (DeepSeek's
        # mscale_all_dim) is for architectures that rescale their softmax; ExLlamaV2 has none of them.
        sin, cos = sincos_table(angles, attention, interleaved=interleaved, dtype=sin0.dtype, device=sin0.device)
        if in_place:
            sin0.copy_(sin)
            cos0.copy_(cos)
        elif as_list:
            ctx.sin[0], ctx.cos[0] = sin, cos
        else:
            ctx.sin, ctx.cos = sin, cos
        self._report(cfg, spec, rows)
        return True

    def _angles(self, spec: Any, rows: int, offset: int, context: int, half: bool) -> tuple[Any, Any]:
        # one model has a context per device (and one for a vision tower): compute once per spec
        key = (spec.to_json(), rows, offset, context if table_policy(spec) == CONTEXT else None, half)
        with self._lock:
            hit = self._tables.get(key)
            if hit is not None:
                self._tables.move_to_end(key)
                return hit
        value = position_angles(spec, rows, offset=offset, context=context, half_inv_freq=half)
        with self._lock:
            self._tables[key] = value
            while len(self._tables) > 2:
                self._tables.popitem(last=False)
        return value

    def _report(self, cfg: Any, spec: Any, rows: int) -> None:
        where = os.path.basename(os.path.normpath(str(cfg.model_dir)))
        policy = table_policy(spec)
        self.say_once(
            ("patched", str(cfg.model_dir), spec.to_json(), str(rows)),
            f"ropepatch: ExLlamaV2 {where}: RoPE tables ({rows} positions) from {spec.summary()} "
            f"[method from {spec.provenance.get('method', '?')}]",
        )
        own = getattr(cfg, "alt_rope_method", None) or "plain"
        self.changed(
            spec,
            model=str(cfg.model_dir),
            before=f"{own} RoPE tables (scale_pos_emb={getattr(cfg, 'scale_pos_emb', 1.0):g}, "
            f"scale_alpha_value={getattr(cfg, 'scale_alpha_value', 1.0):g}, theta={cfg.rotary_embedding_base:g})",
        )
        knobs = []
        for attr in ("scale_pos_emb", "scale_alpha_value"):
            value = getattr(cfg, attr, None)
            if value not in (None, 1, 1.0):
                knobs.append(f"{attr}={value:g}")
        if getattr(cfg, "alt_rope_method", None):
            knobs.append(f"its own {cfg.alt_rope_method} tables")
        if knobs:
            self.say_once(
                ("neutralised", str(cfg.model_dir), *knobs),
                f"ropepatch: ExLlamaV2 {where}: {', '.join(knobs)} not applied: the {spec.method} spec already "
                "describes this model's RoPE scaling (change it through ropepatch overrides instead)",
            )
        if policy == PER_POSITION:
            self.say_once(
                ("per-position", str(cfg.model_dir), spec.method),
                f"ropepatch: ExLlamaV2 {where}: {spec.method} is length-dependent; row p of the table uses the "
                "frequencies for length p+1 (exact for token-by-token decoding; a prompt longer than the original "
                "context prefilled in one pass differs from transformers, which rotates it all at its full length)",
            )
        for problem in unexpressible(spec):
            self.say_once(
                ("unexpressible", str(cfg.model_dir), problem),
                f"ropepatch: ExLlamaV2 {where}: {problem} cannot be expressed in sin/cos tables and is not applied",
                warn=True,
            )

    # -- models built before enable() -----------------------------------------------------
    def patch_model(self, model: Any, state: Any) -> bool:
        """Rewrite the tables of a loaded ``ExLlamaV2`` in place (CUDA graphs keep their pointers)."""
        if not type(model).__module__.startswith("exllamav2"):
            return False
        contexts = getattr(model, "device_context", None)
        if contexts is None:
            contexts = getattr(model, "device_tensors", None)
        if contexts is None or not hasattr(model, "config"):
            return False
        for ctx in contexts:
            if ctx is not None and getattr(ctx, "sin", None) is not None:
                self.rebuild(ctx, state, in_place=True)
        return True


def _table_owner() -> Any:
    """The class whose ``prepare_sincos`` builds the tables in the installed version."""
    import importlib

    try:
        return importlib.import_module("exllamav2.device").ExLlamaV2DeviceContext
    except (ImportError, AttributeError):
        return importlib.import_module("exllamav2.model").ExLlamaV2DeviceTensors


@hookimpl
def register_adapters(register: Any) -> None:
    register(ExLlamaV2Adapter())
