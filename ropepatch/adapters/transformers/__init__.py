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

import functools
import logging
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from ropepatch.adapters.base import Adapter
from ropepatch.errors import RopepatchWarning
from ropepatch.hookspecs import hookimpl
from ropepatch.patching import PatchSet, when_imported

__all__ = ["TransformersAdapter", "register_adapters"]

log = logging.getLogger("ropepatch")

#: the versions the compatibility matrix (compat/MATRIX.md) runs
TESTED = "transformers>=4.36,<5.24"

_lock = threading.RLock()

STRICT_CONFIG_MODULES = tuple(
    f"transformers.models.{m}.configuration_{m}" for m in ("phi3", "phimoe", "phi4_multimodal", "deepseek_v4")
)


def _current() -> Any:
    from ropepatch.runtime import current

    return current()


class TransformersAdapter(Adapter):
    """Patches Hugging Face transformers 4.36-5.23 (see the module docstring for the patch points)."""

    name = "transformers"
    distribution = "transformers"
    requires = TESTED
    trigger = "transformers"

    def install(self, patches: PatchSet, runtime: Any) -> None:
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
        state = runtime

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
            _on_import(patches, state, name, fn)

    def patch_model(self, model: Any, runtime: Any) -> bool:
        """Fix a transformers model built before ``enable()``; False for anything else."""
        modeling_utils = sys.modules.get("transformers.modeling_utils")
        if modeling_utils is None or not isinstance(model, modeling_utils.PreTrainedModel):
            return False
        temporary = _temporary_registry(runtime)
        try:
            _convert_model(model, runtime, modeling_utils)
        finally:
            if temporary is not None:
                # without enable(): leave no registry entries behind, but those a live dynamic
                # model still looks up (see PatchSet.set_item keep_if)
                temporary.restore()
        return True


def _convert_model(model: Any, runtime: Any, modeling_utils: Any) -> None:
    from ropepatch.adapters.transformers.modules import fix_modules
    from ropepatch.adapters.transformers.plan import apply_plan, forget, plan_for

    models = [m for m in model.modules() if isinstance(m, modeling_utils.PreTrainedModel)]
    for sub in reversed(models):  # innermost first: each owns the rotary modules below it
        forget(sub.config)
        plan = plan_for(sub.config, runtime)
        if plan is None:
            continue
        apply_plan(sub.config, plan)
        fix_modules(sub, plan, convert=True)


def _on_import(patches: PatchSet, state: Any, name: str, fn: Callable[[PatchSet, Any], None]) -> None:
    if name in sys.modules:
        fn(patches, sys.modules[name])  # inside install()'s transaction: a failure undoes everything
        return

    def hook(module: Any) -> None:
        if _current() is not state or TransformersAdapter.name in state.failures:
            return  # disabled meanwhile, or the adapter already gave up
        with _lock:
            try:
                with patches.transaction():
                    fn(patches, module)
            except Exception as exc:  # noqa: BLE001 - an import must not fail because of ropepatch
                # no half-applied adapter: undo every point installed so far and stop
                patches.restore()
                state.installed.pop(TransformersAdapter.name, None)
                version = TransformersAdapter().version()
                message = (
                    f"ropepatch: the transformers adapter failed to patch {name} (transformers {version}) and "
                    f"left transformers unchanged: {type(exc).__name__}: {exc}"
                )
                state.failures[TransformersAdapter.name] = message
                warnings.warn(message, RopepatchWarning, stacklevel=2)
                log.warning(message)

    hook.__ropepatch_state__ = state  # type: ignore[attr-defined]  # disable() cancels it
    when_imported(name, hook)


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


def _install_model_hooks(patches: PatchSet, modeling_utils: Any) -> None:
    cls = modeling_utils.PreTrainedModel
    configuration_utils = sys.modules["transformers.configuration_utils"]
    config_cls = getattr(configuration_utils, "PreTrainedConfig", None) or configuration_utils.PretrainedConfig
    original_init = cls.__dict__["__init__"]
    original_post_init = cls.__dict__["post_init"]

    @functools.wraps(original_init)
    def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        state = _current()
        if state is not None and isinstance(config, config_cls):
            _prepare(patches, self, config, state)
        original_init(self, config, *args, **kwargs)

    @functools.wraps(original_post_init)
    def post_init(self: Any) -> None:
        original_post_init(self)
        state = _current()
        if state is not None and isinstance(getattr(self, "config", None), config_cls):
            _finish(self, state)

    patches.set(cls, "__init__", __init__)
    patches.set(cls, "post_init", post_init)


def _prepare(patches: PatchSet, model: Any, config: Any, state: Any) -> None:
    from ropepatch.adapters.transformers.legacy import patch_init_rope
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
        patch_init_rope(patches, type(model))
        if plan.ours and hasattr(type(config), "__class_validators__"):
            from ropepatch.adapters.transformers.config import install_strict_validators

            install_strict_validators(patches, type(config), _current)
        apply_plan(config, plan)


def _finish(model: Any, state: Any) -> None:
    from ropepatch.adapters.transformers.modules import fix_modules
    from ropepatch.adapters.transformers.plan import cached_plan

    known, plan = cached_plan(model.config)
    if not known:
        # construction began before enable() (another thread enabled meanwhile): the config was
        # never prepared, so convert the built modules as patch_model does
        _convert_model(model, state, sys.modules["transformers.modeling_utils"])
        return
    if plan is not None:
        fix_modules(model, plan, convert=False)


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
