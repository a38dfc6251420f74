"""The transformers adapter: models built by ``from_pretrained``, ``from_config`` and pipelines get
the rotary embedding their checkpoint's metadata (and ropepatch's overrides) describe.

Patch points, each installed when its module is first imported (``import transformers`` stays lazy)
and restored exactly by ``ropepatch.disable()``:

=========================================  ===================================================
``modeling_rope_utils``                    ropepatch types in ``ROPE_INIT_FUNCTIONS`` and the
                                           validators (:mod:`.registry`); v5 ``su`` fix
``configuration_utils``                    ``to_dict`` writes configs back as loaded
``modeling_utils.PreTrainedModel``         ``__init__``: plan the config and rewrite its rope dict
                                           before any module reads it; ``post_init``: finish or
                                           convert the built rotary modules
``dynamic_module_utils``                   ``get_class_in_module``: remote-code rotary classes
``modeling_gguf_pytorch_utils``            ``load_gguf_checkpoint``: keep ``rope.scaling.*``
``models.*.configuration_*`` (<= 4.57)     ``_rope_scaling_validation`` accepts what ropepatch resolves
``models.*.modeling_*`` (<= 4.47)          ``_init_rope`` builds the plain class for ropepatch specs
``models.*.modeling_*`` (``kernels=True``)  ``apply_rotary_pos_emb`` -> fused kernel for CUDA tensors
=========================================  ===================================================
"""

from __future__ import annotations

import copy
import functools
import logging
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from ropepatch.adapters.base import Adapter, Capability
from ropepatch.hookspecs import hookimpl
from ropepatch.patching import PatchSet, build_finished, build_started, builds_in_flight, patch_lock

__all__ = ["TransformersAdapter", "register_adapters"]

log = logging.getLogger("ropepatch")

#: the oldest and newest versions the compatibility matrix (compat/MATRIX.md) runs
FLOOR, TESTED_UP_TO = "4.36", "5.25"

# the lock every deferred patch runs under: a model build patching its class (kernels, <= 4.47
# _init_rope) never interleaves with a patch point being installed or undone
_lock = patch_lock

STRICT_CONFIG_MODULES = tuple(
    f"transformers.models.{m}.configuration_{m}" for m in ("phi3", "phimoe", "phi4_multimodal", "deepseek_v4")
)


def _current() -> Any:
    from ropepatch.runtime import current

    return current()


class TransformersAdapter(Adapter):
    """Patches Hugging Face transformers from 4.36 on (see the module docstring for the patch points)."""

    name = "transformers"
    distribution = "transformers"
    floor = FLOOR
    tested_up_to = TESTED_UP_TO
    trigger = "transformers"
    capabilities = (
        Capability("transformers.modeling_rope_utils", "ROPE_INIT_FUNCTIONS"),
        Capability("transformers.configuration_utils", "PretrainedConfig.to_dict"),
        Capability("transformers.modeling_utils", "PreTrainedModel.__init__", ("config",)),
        Capability("transformers.modeling_utils", "PreTrainedModel.post_init"),
        Capability("transformers.dynamic_module_utils", "get_class_in_module"),
        Capability("transformers.modeling_gguf_pytorch_utils", "load_gguf_checkpoint"),
    )

    def install(self, patches: PatchSet, state: Any) -> None:
        """Install every patch point now or when its module is imported."""
        from ropepatch.adapters.transformers.config import (
            install_config_patches,
            install_from_dict,
            install_rope_config_patches,
            patch_strict_module,
        )
        from ropepatch.adapters.transformers.legacy import VALIDATED_CONFIG_MODULES, patch_config_validators
        from ropepatch.adapters.transformers.plan import forget
        from ropepatch.adapters.transformers.registry import install_registry
        from ropepatch.adapters.transformers.remote import install_gguf, install_remote

        forget()  # plans made under earlier settings

        def rope_utils(p: PatchSet, m: Any) -> None:
            install_registry(p, m)
            install_rope_config_patches(p, m)

        points: list[tuple[str, Callable[[PatchSet, Any], None]]] = [
            ("transformers.modeling_rope_utils", rope_utils),
            ("transformers.configuration_utils", install_config_patches),
            ("transformers.configuration_utils", lambda p, m: install_from_dict(p, m, _current)),
            ("transformers.modeling_utils", lambda p, m: _install_model_hooks(p, m)),
            ("transformers.dynamic_module_utils", lambda p, m: install_remote(p, m, _convert_remote)),
            ("transformers.modeling_gguf_pytorch_utils", install_gguf),
        ]
        points += [(name, lambda p, m: patch_config_validators(p, m, _current)) for name in VALIDATED_CONFIG_MODULES]
        # v5 strict classes whose captured validate_rope rejects all but transformers' own types
        points += [(name, lambda p, m: patch_strict_module(p, m, _current)) for name in STRICT_CONFIG_MODULES]
        for name, fn in points:
            self.defer(patches, state, name, functools.partial(_point, fn, patches))

    def patch_model(self, model: Any, state: Any) -> bool:
        """Fix a transformers model built before ``enable()``; False for anything else."""
        modeling_utils = sys.modules.get("transformers.modeling_utils")
        if modeling_utils is None or not isinstance(model, modeling_utils.PreTrainedModel):
            return False
        temporary = _temporary_registry(state)
        try:
            _convert_model(model, state, modeling_utils)
        finally:
            if temporary is not None:
                # without enable(): leave no registry entries behind, but those a live dynamic
                # model still looks up (see PatchSet.set_item keep_if)
                temporary.restore()
        return True


def _point(fn: Callable[[PatchSet, Any], None], patches: PatchSet, module: Any) -> None:
    fn(patches, module)


def _convert_model(model: Any, runtime: Any, modeling_utils: Any) -> None:
    from ropepatch.adapters.transformers.modules import fix_modules, is_remote
    from ropepatch.adapters.transformers.plan import apply_plan, forget, plan_for

    models = [m for m in model.modules() if isinstance(m, modeling_utils.PreTrainedModel)]
    for sub in reversed(models):  # innermost first: each owns the rotary modules below it
        forget(sub.config)
        plan = plan_for(sub.config, runtime)
        if plan is None:
            continue
        if not is_remote(sub):
            apply_plan(sub.config, plan)  # remote code keeps reading the config it understands
        fix_modules(sub, plan, convert=True)
        _built(sub, plan, runtime)


def _temporary_registry(state: Any) -> PatchSet | None:
    """patch_model without enable(): ropepatch's types registered for the duration of the call."""
    if "transformers" in getattr(state, "installed", {}):
        return None
    rope_utils = sys.modules.get("transformers.modeling_rope_utils")
    if rope_utils is None:
        return None
    from ropepatch.adapters.transformers.registry import install_registry

    patches = PatchSet("transformers (patch_model)")
    install_registry(patches, rope_utils)
    return patches


#: per model class: (original __init__, original post_init, our __init__, our post_init); every
#: enable() installs the same two wrappers as shared patches, so a wrapper kept for a build in
#: flight is taken over by the next enable() rather than wrapped again
_hooks: dict[type, tuple[Any, Any, Any, Any]] = {}


def _install_model_hooks(patches: PatchSet, modeling_utils: Any) -> None:
    cls = modeling_utils.PreTrainedModel
    init, post_init = _model_hooks(cls)
    # both stay past disable() while a build that started before it has not reached post_init
    patches.share(cls, "__init__", init, keep_if=builds_in_flight)
    patches.share(cls, "post_init", post_init, keep_if=builds_in_flight)


def _model_hooks(cls: type) -> tuple[Any, Any]:
    current_init, current_post = cls.__dict__["__init__"], cls.__dict__["post_init"]
    with _lock:
        hit = _hooks.get(cls)
        if hit is not None and current_init in (hit[0], hit[2]) and current_post in (hit[1], hit[3]):
            return hit[2], hit[3]
    configuration_utils = sys.modules["transformers.configuration_utils"]
    config_cls = getattr(configuration_utils, "PreTrainedConfig", None) or configuration_utils.PretrainedConfig
    original_init, original_post_init = current_init, current_post

    @functools.wraps(original_init)
    def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        state = _build_state(self)
        patches = getattr(state, "installed", {}).get(TransformersAdapter.name) if state is not None else None
        if patches is not None and isinstance(config, config_cls):
            # until post_init, this build may look ropepatch's registry entries up even if
            # disable() runs meanwhile: they stay until it finishes (or its object dies)
            build_started(self)
            _prepare(patches, self, config, state)
        original_init(self, config, *args, **kwargs)

    @functools.wraps(original_post_init)
    def post_init(self: Any) -> None:
        try:
            original_post_init(self)
            # a build that began before enable() is converted here: its entries must stay too
            # (tracked before the state is read, so a disable() after the read cannot drop them)
            build_started(self)
            state = _build_state(self, finishing=True)
            # an enable() whose transformers patches are not in yet (another thread is installing them) counts as off
            ready = state is not None and getattr(state, "installed", {}).get(TransformersAdapter.name) is not None
            if ready and isinstance(getattr(self, "config", None), config_cls):
                _finish(self, state)
        finally:
            _build_done(self)
            build_finished(self)

    with _lock:
        _hooks[cls] = (original_init, original_post_init, __init__, post_init)
    return __init__, post_init


_builds = threading.local()


def _build_state(model: Any, *, finishing: bool = False) -> Any:
    """The settings a build uses from its first ``__init__`` to its last ``post_init``, even if enable() changes them.

    The outermost model of a build (``LlamaForCausalLM`` around ``LlamaModel``) takes a snapshot of
    the enable state; the models built inside it, in the same thread, use the same snapshot. A build
    whose outer object died (an exception) is dropped from the stack the next time.
    """
    stack = getattr(_builds, "stack", None)
    if stack is None:
        stack = _builds.stack = []
    while stack and stack[-1][0]() is None:
        stack.pop()
    if stack:
        return stack[-1][1]
    if finishing:
        return _current()
    state = _current()
    if state is None:
        return None
    snapshot = copy.copy(state)  # enable() replaces the override lists, never edits them in place
    try:
        stack.append((weakref.ref(model), snapshot))
    except TypeError:
        return state
    return snapshot


def _live(patches: Any) -> bool:
    live = _current()
    return live is not None and getattr(live, "installed", {}).get(TransformersAdapter.name) is patches


def _remote_building() -> Any:
    from ropepatch.adapters.transformers.remote import building

    return building


def _build_done(model: Any) -> None:
    stack = getattr(_builds, "stack", None)
    if stack and stack[-1][0]() is model:
        stack.pop()


def _prepare(patches: PatchSet, model: Any, config: Any, state: Any) -> None:
    from ropepatch.adapters.transformers.legacy import patch_init_rope
    from ropepatch.adapters.transformers.modules import is_remote
    from ropepatch.adapters.transformers.plan import apply_plan, plan_for
    from ropepatch.adapters.transformers.remote import building

    building.config = config
    if state.kernels:
        from ropepatch.adapters.transformers.kernels import route_to_kernels

        with _lock:
            route_to_kernels(patches, type(model))
    plan = plan_for(config, state)  # a RopeConfigError here is a refusal: it must reach the user
    if plan is None:
        return
    with _lock:
        if not _live(patches):
            # disabled (or re-enabled) meanwhile: its patch set is restored, add nothing to it, and
            # build this model plain (post_init must not find a plan that was never applied)
            from ropepatch.adapters.transformers.plan import forget

            forget(config)
            building.skip = config
            return
        patch_init_rope(patches, type(model))
        if is_remote(model):
            # remote code reads its config in its own dialect (config.rope_scaling["type"]): the config
            # stays as loaded, and the rotary modules it builds are converted (.modules)
            return
        if plan.ours and hasattr(type(config), "__class_validators__"):
            from ropepatch.adapters.transformers.config import install_strict_validators

            install_strict_validators(patches, type(config), _current)
        apply_plan(config, plan)


def _finish(model: Any, state: Any) -> None:
    from ropepatch.adapters.transformers.modules import fix_modules
    from ropepatch.adapters.transformers.plan import cached_plan

    known, plan = cached_plan(model.config)
    if getattr(_remote_building(), "skip", None) is model.config:
        return  # _prepare found ropepatch disabled meanwhile: this build stays plain
    if not known:
        # construction began before enable() (another thread enabled meanwhile): the config was
        # never prepared, so convert the built modules as patch_model does
        _convert_model(model, state, sys.modules["transformers.modeling_utils"])
        return
    if plan is not None:
        fix_modules(model, plan, convert=False)
        _built(model, plan, state)


def _built(model: Any, plan: Any, state: Any) -> None:
    """After a model's rotary modules are final: the self-check (first model) and the line saying what changed."""
    from ropepatch.adapters.transformers.modules import is_registry_module, is_remote, rotary_modules
    from ropepatch.adapters.transformers.plan import native_summary

    if plan.unchanged:
        return  # transformers computes the spec from the config itself: nothing was changed
    adapter = _adapter()
    spec = plan.spec
    if not spec.is_dynamic and plan.layer is None:
        for module in rotary_modules(model):
            inv = getattr(module, "inv_freq", None)
            # remote modules were converted outside the registry (their temperature is a forward hook)
            if is_registry_module(module) and not is_remote(module) and inv is not None and inv.device.type != "meta":
                adapter.self_check(
                    state, spec, inv, getattr(module, "attention_scaling", None), where=type(module).__name__
                )
            break
    config = model.config
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    adapter.changed(
        spec,
        model=name or f"a {type(model).__name__} (no checkpoint name)",
        before=native_summary(config),
        identity=name or id(config),
    )


def _adapter() -> TransformersAdapter:
    from ropepatch.registry import get_registry

    found = get_registry().adapters.get(TransformersAdapter.name)
    return found if isinstance(found, TransformersAdapter) else TransformersAdapter()


def _convert_remote(module: Any, config: Any) -> None:
    from ropepatch.adapters.transformers.modules import convert_one
    from ropepatch.adapters.transformers.plan import plan_for

    state = _current()
    if state is None:
        return
    plan = plan_for(config, state)
    if plan is not None:
        convert_one(module, plan)


@hookimpl
def register_adapters(register: Callable[[Any], None]) -> None:
    register(TransformersAdapter())
