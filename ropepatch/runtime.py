"""``enable()`` / ``disable()`` / ``patch_model()``: install the registered adapters into runtimes.

Each adapter is installed when its runtime is imported (now, if it already is) through
:meth:`ropepatch.adapters.base.Adapter.activate`, which makes every shared decision: a version
below the adapter's floor is not patched, a newer one than tested is patched with one INFO line,
the capability probes run, and the patches go in as one transaction. A failure leaves that runtime
exactly as it was, is reported once with the runtime's name and version, and every other adapter
still installs; under ``strict=True`` it raises instead, out of the ``import`` that triggered it.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ropepatch.overrides import Override, env_overrides, override_from_mapping
from ropepatch.patching import PatchSet, cancel_import_hooks, when_imported

__all__ = [
    "EnableState",
    "current",
    "disable",
    "enable",
    "enabled",
    "is_enabled",
    "patch_model",
    "status",
    "temporarily_enabled",
]

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
    quiet: bool = False
    installed: dict[str, PatchSet] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    #: adapters installed on a runtime newer than they were tested with (the INFO line's text)
    untested: dict[str, str] = field(default_factory=dict)
    #: one-time checks already run under this state (the adapters' self-checks)
    checked: set[tuple[str, str]] = field(default_factory=set)
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
            self.quiet,
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
    quiet: bool = False,
) -> EnableState:
    # parse everything now: a typo must fail here, before any model loads
    explicit = override_from_mapping(overrides, "explicit")
    env = env_overrides()
    pm = [override_from_mapping(m, "per-model mapping", pattern=p) for p, m in (per_model or {}).items()]
    names = tuple(runtimes) if runtimes is not None else None
    return EnableState(
        explicit=explicit, env=env, per_model=pm, kernels=kernels, strict=strict, runtimes=names, quiet=quiet
    )


def enable(
    *,
    kernels: bool = False,
    strict: bool = False,
    runtimes: Any = None,
    per_model: Mapping[str, Mapping[str, Any]] | None = None,
    quiet: bool = False,
    **overrides: Any,
) -> None:
    """Make every supported runtime build models with their checkpoint's real RoPE scaling.

    Keyword overrides (``method``, ``factor``, ``alpha``, ``original_max_position_embeddings``,
    ``target_context``, any method parameter) apply to every model; ``per_model`` maps name globs
    to overrides; ``$ROPEPATCH`` is read now. ``kernels=True`` routes CUDA tensors to the fused
    Triton rotary kernel. ``runtimes`` limits which adapters install (names as in
    ``ropepatch plugins``). ``strict=True`` raises instead of warning when an adapter cannot patch
    (also out of the ``import`` of a runtime that triggers the adapter). ``quiet=True`` (or
    ``ROPEPATCH_QUIET=1``) drops the one line per changed model that ropepatch prints otherwise.
    Idempotent; calling again with other settings updates them.
    """
    global _state
    from ropepatch.registry import get_registry

    new = _make_state(overrides, kernels=kernels, strict=strict, runtimes=runtimes, per_model=per_model, quiet=quiet)
    with _lock:
        from ropepatch import kernels as _kernels

        _kernels.set_enabled(kernels)
        if _state is not None:
            if _state.settings() != new.settings():
                _state.explicit, _state.env, _state.per_model = new.explicit, new.env, new.per_model
                _state.kernels, _state.strict, _state.quiet = new.kernels, new.strict, new.quiet
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
            if _state is not state:
                return  # disabled meanwhile
            # the adapter's base class decides everything else (versions, probes, strict)
            adapter.activate(state)

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
def temporarily_enabled(**kwargs: Any) -> Iterator[EnableState]:
    """``with ropepatch.temporarily_enabled(...):`` enable for the block, disable after (tests, notebooks).

    If ropepatch was already enabled, it stays enabled after the block.
    """
    was = is_enabled()
    enable(**kwargs)
    try:
        state = current()
        assert state is not None
        yield state
    finally:
        if not was:
            disable()


def enabled(**kwargs: Any) -> Any:
    """Deprecated name of :func:`temporarily_enabled` (it read as a yes/no question; that is :func:`is_enabled`)."""
    warnings.warn(
        "ropepatch.enabled() is deprecated: use ropepatch.temporarily_enabled() (a context manager), or "
        "ropepatch.is_enabled() for the yes/no question",
        DeprecationWarning,
        stacklevel=2,
    )
    return temporarily_enabled(**kwargs)


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
            strict=state.strict,
            quiet=state.quiet,
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
        "untested": dict(state.untested),
        "kernels": state.kernels,
    }
