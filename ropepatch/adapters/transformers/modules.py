"""Built rotary modules: finishing the registry ones, converting the others in place.

*Registry modules* (transformers >= 4.43: ``rope_type``, ``config``, ``inv_freq``, ``original_inv_freq``)
were built from the rewritten config and already hold the spec's frequencies. ropepatch's dynamic
types still need two things transformers gets wrong for them: the length up to which their
frequencies do not move (transformers assumes ``max_position_embeddings``), and the attention
factor on reset (transformers restores ``inv_freq`` only; per-layer-type modules never read the
updated factor at all). A forward pre-hook sets it right. ``patch_model`` converts registry modules
of models built before ``enable()`` by setting their type and recomputing their buffers.

*Other modules* (per-model classes of 4.36-4.47, remote code such as Falcon RefinedWeb) get the
spec's ``inv_freq`` written in (caches rebuilt), the attention factor as a multiplier of the
module's outputs (cos/sin, or the rotated q/k of a full-rotary remote module), and for dynamic
methods a pre-hook that follows the length as transformers' dynamic update does. A pre-hook also
re-writes ``inv_freq`` whenever the buffer was replaced (transformers 5 fills non-persistent buffers
of remote code with uninitialised memory after ``from_pretrained``) or left on the meta device.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

from ropepatch.adapters.transformers.plan import Plan
from ropepatch.adapters.transformers.registry import track
from ropepatch.errors import RopeConfigError

__all__ = ["convert_one", "fix_modules", "is_registry_module", "rotary_modules"]

log = logging.getLogger("ropepatch")

#: legacy classes transformers built from rope_scaling itself (their forward applies the scaling)
_NATIVE_SCALING_CLASS = re.compile(
    r"(Linear|Dynamic|Scaled|Scaling|LongRoPE|Su|Yarn)\w*RotaryEmbedding|RotaryEmbedding\w*(Linear|Dynamic|Scaled|Scaling)"
)
_STATE = "_ropepatch_rotary"


def rotary_modules(root: Any) -> Iterator[Any]:
    """Rotary embedding modules under ``root`` whose nearest transformers model is ``root`` itself."""
    from transformers import PreTrainedModel

    stack = list(root.children())
    while stack:
        module = stack.pop()
        if isinstance(module, PreTrainedModel):
            continue  # an inner model: its own post_init handles it
        if "Rotary" in type(module).__name__ and _has_inv_freq(module):
            yield module
            continue
        stack.extend(module.children())


def _has_inv_freq(module: Any) -> bool:
    import torch

    if isinstance(getattr(module, "inv_freq", None), torch.Tensor):
        return True
    types = getattr(module, "layer_types", None) or ()
    return any(isinstance(getattr(module, f"{t}_inv_freq", None), torch.Tensor) for t in types)


def is_registry_module(module: Any) -> bool:
    """True for rotary modules built from a config through ``ROPE_INIT_FUNCTIONS``."""
    return hasattr(module, "rope_type") and getattr(module, "config", None) is not None


def fix_modules(model: Any, plan: Plan, *, convert: bool) -> int:
    """Finish or convert the rotary modules of ``model``; ``convert`` also retypes registry modules
    built from another rope type (``patch_model``). Returns how many modules were touched."""
    n = 0
    for module in rotary_modules(model):
        if getattr(module, _STATE, None) is not None and getattr(module, _STATE).plan is plan:
            continue
        if is_registry_module(module):
            current = _module_type(module, plan.layer)
            if current != plan.rope_type:
                if not convert and current is not None and not plan.ours:
                    # built by a class that reads the config differently; leave transformers' result
                    log.debug(
                        "ropepatch: %s has rope type %s, plan says %s", type(module).__name__, current, plan.rope_type
                    )
                _retype(module, plan)
            _finish_registry(module, plan)
        else:
            if plan.unchanged and _NATIVE_SCALING_CLASS.search(type(module).__name__):
                continue  # transformers built its own scaling class from a config it computes right
            _convert_legacy(module, plan)
        n += 1
    return n


def convert_one(module: Any, plan: Plan) -> None:
    """Convert one freshly built rotary module (remote code) unless it was already."""
    state = getattr(module, _STATE, None)
    if state is not None and state.plan is plan:
        return
    if is_registry_module(module):
        _finish_registry(module, plan)
    else:
        _convert_legacy(module, plan)


def _module_type(module: Any, layer: str | None) -> str | None:
    rope_type = module.rope_type
    if isinstance(rope_type, dict):
        return rope_type.get(layer) if layer is not None else None
    return rope_type


# -- registry modules ---------------------------------------------------------------------
def _registry_fn(module: Any, rope_type: str) -> Any:
    utils = sys.modules.get("transformers.modeling_rope_utils")
    registry = getattr(utils, "ROPE_INIT_FUNCTIONS", {})
    if rope_type in registry:
        return registry[rope_type]
    if rope_type == "default":
        fn = getattr(module, "compute_default_rope_parameters", None)
        if fn is not None:
            return fn
    raise RopeConfigError(f"transformers has no rope type {rope_type!r} for {type(module).__name__}")


def _retype(module: Any, plan: Plan) -> None:
    """Give a registry module built from another type the plan's type and frequencies (patch_model)."""
    import torch

    fn = _registry_fn(module, plan.rope_type)
    layer = plan.layer if isinstance(module.rope_type, dict) else None
    kwargs = {"layer_type": layer} if layer is not None else {}
    prefix = f"{layer}_" if layer is not None else ""
    old = getattr(module, f"{prefix}inv_freq")
    with torch.device("cpu"):
        try:
            inv, attention = fn(module.config, "cpu", **kwargs)
        except TypeError:
            # 5.x per-model compute_default_rope_parameters(config, **kwargs) takes no positional device
            inv, attention = fn(module.config, device="cpu", **kwargs)
    device = old.device if old.device.type != "meta" else None
    inv = inv.to(device) if device is not None else inv
    module.register_buffer(f"{prefix}inv_freq", inv, persistent=False)
    if hasattr(module, f"{prefix}original_inv_freq"):
        module.register_buffer(f"{prefix}original_inv_freq", inv.clone(), persistent=False)
    setattr(module, f"{prefix}attention_scaling" if layer else "attention_scaling", float(attention))
    if layer is not None:
        module.rope_type[layer] = plan.rope_type
    else:
        module.rope_type = plan.rope_type
    if hasattr(module, "rope_init_fn"):
        module.rope_init_fn = fn  # 4.43-4.57 call the stored function on dynamic updates
    maxpos = getattr(module.config, "max_position_embeddings", None)
    if maxpos is not None and hasattr(module, "max_seq_len_cached"):
        setattr(module, f"{prefix}max_seq_len_cached" if layer else "max_seq_len_cached", maxpos)
        module.original_max_seq_len = maxpos


def _finish_registry(module: Any, plan: Plan) -> None:
    setattr(module, _STATE, _State(plan, kind="registry"))
    if not (plan.ours and plan.spec.is_dynamic):
        return
    track(module)  # disable() keeps its rope type registered while the module lives
    layer = plan.layer if isinstance(module.rope_type, dict) else None
    prefix = f"{layer}_" if layer is not None else ""
    setattr(module, f"{prefix}max_seq_len_cached" if layer else "max_seq_len_cached", plan.threshold)
    module.original_max_seq_len = plan.threshold
    if plan.attention_varies or layer is not None:
        module.register_forward_pre_hook(_registry_pre_hook, with_kwargs=True)


def _registry_pre_hook(module: Any, args: tuple, kwargs: dict) -> None:
    """Set the attention factor that transformers' dynamic update leaves stale (reset, layer types)."""
    state: _State = getattr(module, _STATE)
    plan = state.plan
    positions = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
    layer = kwargs.get("layer_type", args[2] if len(args) > 2 else None)
    if positions is None or (layer is not None and layer != plan.layer):
        return
    if positions.device.type == "meta":
        return
    length = int(positions.max()) + 1
    prefix = f"{layer}_" if layer is not None else ""
    cached = int(getattr(module, f"{prefix}max_seq_len_cached", module.max_seq_len_cached))
    original = int(module.original_max_seq_len)
    if length > cached:
        attention = plan.spec.attention_factor(length)
    elif length < original and cached > original:
        attention = plan.initial_attention
    else:
        return
    setattr(module, f"{prefix}attention_scaling" if layer is not None else "attention_scaling", attention)


# -- per-model (legacy) and remote-code modules -----------------------------------------------
class _State:
    """What ropepatch keeps on a converted module."""

    def __init__(self, plan: Plan, kind: str) -> None:
        self.plan = plan
        self.kind = kind
        self.length = plan.threshold  # the length the current frequencies were computed for
        self.scale = plan.initial_attention
        self.written: Any = None  # the inv_freq tensor ropepatch wrote last


def _forward_kind(module: Any) -> str:
    try:
        params = inspect.signature(type(module).forward).parameters
    except (TypeError, ValueError):
        return "opaque"
    if "position_ids" in params:
        return "positions"
    if "seq_len" in params and hasattr(module, "_set_cos_sin_cache"):
        return "cache"
    return "opaque"


def _convert_legacy(module: Any, plan: Plan) -> None:
    spec = plan.spec
    kind = _forward_kind(module)
    n = module.inv_freq.numel()
    want = (spec.rotary_dim or 0) // 2
    if want != n:
        raise RopeConfigError(
            f"{type(module).__name__} rotates {2 * n} dims but the spec says rotary_dim={spec.rotary_dim}; "
            "pass rotary_dim=... if the metadata is wrong",
            key="rotary_dim",
        )
    if spec.is_dynamic and kind == "opaque":
        raise RopeConfigError(
            f"{spec.method} changes with the sequence length, but {type(module).__module__}.{type(module).__name__} "
            "does not say the length it computes for (no position_ids or seq_len argument); ropepatch refuses a "
            "method it can only apply at the initial length. Use a static method for this model",
            key="method",
        )
    state = _State(plan, kind)
    setattr(module, _STATE, state)
    _write(module, state, None)
    # also re-writes inv_freq when loading replaced the buffer (v5 remote code) or left it on meta
    module.register_forward_pre_hook(_legacy_pre_hook, with_kwargs=True)
    if plan.initial_attention != 1.0 or plan.attention_varies:
        module.register_forward_hook(_scale_outputs)


def _write(module: Any, state: _State, device: Any) -> None:
    """Write the frequencies for ``state.length`` (initial when at or below the threshold)."""
    import torch

    plan = state.plan
    length = state.length if state.length > plan.threshold else None
    old = module.inv_freq
    target = device if device is not None else (old.device if old.device.type != "meta" else None)
    with torch.device("cpu"):
        inv, attention = plan.spec.frequencies(length)
    inv = inv.to(target) if target is not None else inv.to("meta")
    module.register_buffer("inv_freq", inv, persistent=False)
    state.written = module.inv_freq
    state.scale = attention
    if inv.device.type == "meta":
        return
    if state.kind == "cache":
        cached = getattr(module, "cos_cached", None)
        dtype = cached.dtype if isinstance(cached, torch.Tensor) else torch.get_default_dtype()
        size = max(int(getattr(module, "max_seq_len_cached", 0) or 0), state.length)
        module._set_cos_sin_cache(seq_len=size, device=inv.device, dtype=dtype)
    elif hasattr(module, "seq_len_cached"):
        module.seq_len_cached = None  # remote RefinedWeb-style caches: rebuilt on the next call


def _legacy_pre_hook(module: Any, args: tuple, kwargs: dict) -> None:
    state: _State = getattr(module, _STATE)
    plan = state.plan
    x = args[0] if args and hasattr(args[0], "device") else None
    device = x.device if x is not None else None
    if device is not None and device.type == "meta":
        return
    if module.inv_freq is not state.written or module.inv_freq.device.type == "meta":
        _write(module, state, device)
    if not plan.spec.is_dynamic:
        return
    length = _length(state.kind, args, kwargs)
    if length is None:
        return
    if length > max(state.length, plan.threshold):
        state.length = length
        _write(module, state, module.inv_freq.device)
    elif length <= plan.threshold < state.length:
        state.length = plan.threshold
        _write(module, state, module.inv_freq.device)


def _length(kind: str, args: tuple, kwargs: dict) -> int | None:
    if kind == "positions":
        positions = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
        return int(positions.max()) + 1 if positions is not None else None
    seq_len = kwargs.get("seq_len", args[1] if len(args) > 1 else None)
    return int(seq_len) if seq_len is not None else None


def _scale_outputs(module: Any, args: tuple, output: Any) -> Any:
    scale = getattr(module, _STATE).scale
    if scale == 1.0:
        return None
    if isinstance(output, tuple):
        return tuple(o * scale for o in output)
    return output * scale
