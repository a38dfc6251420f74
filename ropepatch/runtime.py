"""``enable()`` / ``disable()`` / ``patch_model()``: install the registered adapters into runtimes.

Each adapter is installed when its runtime is imported (now, if it already is), inside a patch
transaction: if it fails, that runtime is left exactly as it was, the failure is reported once
with the runtime's name and version, and every other adapter still installs. A runtime version
outside an adapter's tested range gets a warning naming the range and no patch.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ropepatch.errors import RopepatchWarning
from ropepatch.overrides import Override, env_overrides, override_from_mapping
from ropepatch.patching import PatchSet, cancel_import_hooks, when_imported

__all__ = ["EnableState", "current", "disable", "enable", "enabled", "is_enabled", "patch_model", "status"]

log = logging.getLogger("ropepatch")

_lock = threading.RLock()


@dataclass
class EnableState:
    """What ``enable()`` was asked for; adapters read it at call time, so settings can change."""

    explicit: Override
    env: list[Override]
    per_model: list[Override]
    kernels: bool = False
    strict: bool = False
    runtimes: tuple[str, ...] | None = None
    installed: dict[str, PatchSet] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    _generation: int = 0

    def layers(self) -> list[Override]:
        """Override layers, lowest precedence first."""
        return [*self.env, *self.per_model, self.explicit]

    def spec_for(self, source: Any, **extra: Any) -> Any:
        """The spec of ``source`` under this state's overrides (plus ``extra`` explicit ones)."""
        from ropepatch.detection import resolve
        from ropepatch.metadata.sources import load_view

        layers = self.layers()
        if extra:
            layers.append(override_from_mapping(extra, "explicit"))
        return resolve(load_view(source), layers)

    def settings(self) -> tuple[Any, ...]:
        return (
            repr(self.explicit),
            repr(self.env),
            repr(self.per_model),
            self.kernels,
            self.strict,
            self.runtimes,
        )


_state: EnableState | None = None


def current() -> EnableState | None:
    """The active state, or ``None`` when ropepatch is not enabled."""
    return _state


def is_enabled() -> bool:
    """True between ``enable()`` and ``disable()``."""
    return _state is not None


def _make_state(
    overrides: Mapping[str, Any],
    *,
    kernels: bool,
    strict: bool,
    runtimes: Any,
    per_model: Mapping[str, Mapping[str, Any]] | None,
) -> EnableState:
    # parse everything now: a typo must fail here, before any model loads
    explicit = override_from_mapping(overrides, "explicit")
    env = env_overrides()
    pm = [override_from_mapping(m, "per-model mapping", pattern=p) for p, m in (per_model or {}).items()]
    names = tuple(runtimes) if runtimes is not None else None
    return EnableState(explicit=explicit, env=env, per_model=pm, kernels=kernels, strict=strict, runtimes=names)


def enable(
    *,
    kernels: bool = False,
    strict: bool = False,
    runtimes: Any = None,
    per_model: Mapping[str, Mapping[str, Any]] | None = None,
    **overrides: Any,
) -> None:
    """Make every supported runtime build models with their checkpoint's real RoPE scaling.

    Keyword overrides (``method``, ``factor``, ``alpha``, ``original_max_position_embeddings``,
    ``target_context``, any method parameter) apply to every model; ``per_model`` maps name globs
    to overrides; ``$ROPEPATCH`` is read now. ``kernels=True`` routes CUDA tensors to the fused
    Triton rotary kernel. ``runtimes`` limits which adapters install (names as in
    ``ropepatch plugins``). ``strict=True`` raises instead of warning when an adapter cannot patch.
    Idempotent; calling again with other settings updates them.
    """
    global _state
    from ropepatch.registry import get_registry

    new = _make_state(overrides, kernels=kernels, strict=strict, runtimes=runtimes, per_model=per_model)
    with _lock:
        from ropepatch import kernels as _kernels

        _kernels.set_enabled(kernels)
        if _state is not None:
            if _state.settings() != new.settings():
                _state.explicit, _state.env, _state.per_model = new.explicit, new.env, new.per_model
                _state.kernels, _state.strict = new.kernels, new.strict
                log.info("ropepatch: settings updated")
            return
        _state = new
        state = new
        adapters = list(get_registry().adapters.values())
    for adapter in adapters:
        if state.runtimes is not None and adapter.name not in state.runtimes:
            continue
        when_imported(adapter.trigger, _installer(state, adapter))


def _installer(state: EnableState, adapter: Any) -> Any:
    def install(_module: Any) -> None:
        with _lock:
            if _state is not state or adapter.name in state.installed:
                return  # disabled meanwhile, or already installed
            problem = adapter.problem()
            version = adapter.version()
            if problem is not None:
                state.skipped[adapter.name] = problem
                message = f"ropepatch: not patching {adapter.name}: {problem} ({adapter.requires} is tested)"
                if state.strict:
                    raise RuntimeError(message)
                warnings.warn(message, RopepatchWarning, stacklevel=2)
                return
            patches = PatchSet(adapter.name)
            try:
                with patches.transaction():
                    adapter.install(patches, state)
            except Exception as exc:
                message = (
                    f"ropepatch: the {adapter.name} adapter failed to patch {adapter.distribution} {version} "
                    f"and left it unchanged: {type(exc).__name__}: {exc}"
                )
                state.failures[adapter.name] = message
                if state.strict:
                    raise
                warnings.warn(message, RopepatchWarning, stacklevel=2)
                log.warning(message)
                return
            state.installed[adapter.name] = patches
            log.debug("ropepatch: %s %s patched (%d patches)", adapter.name, version, len(patches))

    install.__ropepatch_state__ = state  # type: ignore[attr-defined]
    return install


def disable() -> None:
    """Undo everything ``enable()`` did: every patched attribute gets its original object back."""
    global _state
    with _lock:
        state, _state = _state, None
        if state is None:
            return
        from ropepatch import kernels as _kernels

        _kernels.set_enabled(False)
        cancel_import_hooks(lambda hook: getattr(hook, "__ropepatch_state__", None) is state)
        for name in reversed(list(state.installed)):
            state.installed.pop(name).restore()


@contextmanager
def enabled(**kwargs: Any) -> Iterator[EnableState]:
    """``with ropepatch.enabled(...):`` enable for the block, disable after (tests, notebooks)."""
    was = is_enabled()
    enable(**kwargs)
    try:
        state = current()
        assert state is not None
        yield state
    finally:
        if not was:
            disable()


def patch_model(model: Any, **overrides: Any) -> Any:
    """Fix a model built before ``enable()`` (or without it) in place, and return it.

    Raises :class:`TypeError` when no installed adapter recognises the model.
    """
    from ropepatch.registry import get_registry

    state = current()
    if state is None:
        state = _make_state(overrides, kernels=False, strict=False, runtimes=None, per_model=None)
    elif overrides:
        # the call's overrides sit above everything enable() was given
        state = EnableState(
            explicit=override_from_mapping(overrides, "explicit"),
            env=[*state.env, *state.per_model, state.explicit],
            per_model=[],
            kernels=state.kernels,
        )
    with _lock:  # never interleaved with enable()/disable() installing or restoring patches
        for adapter in get_registry().adapters.values():
            if adapter.problem() is None and adapter.patch_model(model, state):
                return model
    raise TypeError(f"ropepatch: no adapter knows how to patch a {type(model).__name__}")


def status() -> dict[str, Any]:
    """What is installed, skipped and failed, for ``ropepatch plugins`` and the doctor."""
    state = current()
    if state is None:
        return {"enabled": False}
    return {
        "enabled": True,
        "installed": sorted(state.installed),
        "skipped": dict(state.skipped),
        "failures": dict(state.failures),
        "kernels": state.kernels,
    }
