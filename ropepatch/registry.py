"""The plugin manager: built-in and third-party methods, detectors and adapters, loaded once.

Third-party plugins come from the entry-point group ``ropepatch``. ``ROPEPATCH_DISABLE_PLUGIN_AUTOLOAD=1``
skips them; ``ROPEPATCH_DISABLED_PLUGINS=a,b`` blocks plugins by name. A plugin that fails to import or
to register is recorded with its error and left out; everything else still loads.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from ropepatch import hookspecs
from ropepatch.errors import RopeConfigError

__all__ = ["BUILTIN_PLUGINS", "PluginInfo", "Registry", "canonical_name", "get_registry", "reset_registry"]

log = logging.getLogger("ropepatch")

#: Built-in plugin modules, registered after third-party plugins (like llm and pytest do), so a
#: third-party detector marked ``tryfirst`` can still pre-empt a built-in one.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "ropepatch.methods.plain",
    "ropepatch.methods.ntk",
    "ropepatch.methods.part_ntk",
    "ropepatch.methods.yarn",
    "ropepatch.methods.llama3",
    "ropepatch.methods.longrope",
    "ropepatch.detectors.known",
    "ropepatch.detectors.gguf_keys",
    "ropepatch.detectors.native",
    "ropepatch.detectors.rope_scaling",
    "ropepatch.detectors.fallback",
    "ropepatch.adapters.transformers",
    "ropepatch.adapters.exllama.v2",
    "ropepatch.adapters.exllama.v3",
    "ropepatch.adapters.tgi",
    "ropepatch.adapters.vllm",
)

ENTRY_POINT_GROUP = "ropepatch"


def canonical_name(name: str) -> str:
    """Lower-case a method name and treat ``_`` and ``-`` alike."""
    return str(name).strip().lower().replace("_", "-")


@dataclass
class PluginInfo:
    """One row of ``ropepatch plugins``."""

    name: str
    builtin: bool
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "builtin": self.builtin,
            "version": self.version,
            "hooks": self.hooks,
            "error": self.error,
        }


class Registry:
    """Methods, adapters and the pluggy manager that found them."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("ropepatch")
        self.pm.add_hookspecs(hookspecs)
        self.methods: dict[str, Any] = {}
        self.aliases: dict[str, str] = {}
        self.adapters: dict[str, Any] = {}
        self.plugins: dict[str, PluginInfo] = {}
        if os.environ.get("ROPEPATCH_TRACE"):
            self.pm.trace.root.setwriter(lambda msg: log.warning("ropepatch trace: %s", msg))
            self.pm.enable_tracing()

    # -- loading --------------------------------------------------------------------------
    def load(self) -> None:
        blocked = {n.strip() for n in os.environ.get("ROPEPATCH_DISABLED_PLUGINS", "").split(",") if n.strip()}
        for name in blocked:
            self.pm.set_blocked(name)
        if not _truthy(os.environ.get("ROPEPATCH_DISABLE_PLUGIN_AUTOLOAD")):
            self._load_entry_points(blocked)
        for modname in BUILTIN_PLUGINS:
            if modname in blocked:
                continue
            module = importlib.import_module(modname)
            self.pm.register(module, name=modname)
            self.plugins[modname] = PluginInfo(modname, builtin=True, hooks=self._hooks_of(module))
        self.pm.check_pending()
        self._collect()

    def _load_entry_points(self, blocked: set[str]) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked or self.pm.get_plugin(ep.name) is not None:
                continue
            version = ep.dist.version if ep.dist is not None else None
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
                self.pm.check_pending()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break ropepatch
                if self.pm.get_plugin(ep.name) is not None:
                    self.pm.unregister(name=ep.name)
                msg = f"{type(exc).__name__}: {exc}"
                log.warning("ropepatch: plugin %r (%s) failed to load and was skipped: %s", ep.name, ep.value, msg)
                self.plugins[ep.name] = PluginInfo(ep.name, builtin=False, version=version, error=msg)
                continue
            self.plugins[ep.name] = PluginInfo(ep.name, builtin=False, version=version, hooks=self._hooks_of(plugin))

    def register_plugin(self, plugin: Any, name: str | None = None) -> None:
        """Register a plugin object at run time (tests, notebooks), then re-collect its methods."""
        name = self.pm.register(plugin, name=name)
        self.pm.check_pending()
        self.plugins[str(name)] = PluginInfo(str(name), builtin=False, hooks=self._hooks_of(plugin))
        self._collect()

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin registered with :meth:`register_plugin`."""
        self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        self._collect()

    def _hooks_of(self, plugin: Any) -> list[str]:
        callers = self.pm.get_hookcallers(plugin) or []
        return sorted(c.name for c in callers)

    def _collect(self) -> None:
        methods: dict[str, Any] = {}
        owners: dict[str, str] = {}
        adapters: dict[str, Any] = {}

        def register_from(plugin_name: str) -> Any:
            def add_method(method: Any) -> None:
                name = canonical_name(method.name)
                if not name:
                    raise ValueError(f"method {method!r} has no name")
                previous = owners.get(name)
                # a third-party method may replace a built-in of the same name, never the reverse
                if previous is not None and (plugin_name in BUILTIN_PLUGINS or previous not in BUILTIN_PLUGINS):
                    return
                methods[name], owners[name] = method, plugin_name

            return add_method

        # call implementations in registration order (pluggy's own call order is LIFO), so listings
        # follow the built-in order and conflicts resolve by the rule above
        for impl in self.pm.hook.register_methods.get_hookimpls():
            impl.function(register=register_from(impl.plugin_name))
        for impl in self.pm.hook.register_adapters.get_hookimpls():
            impl.function(register=lambda a: adapters.setdefault(a.name, a))
        aliases: dict[str, str] = {}
        for name, method in methods.items():
            for alias in (method.name, *method.aliases):
                aliases.setdefault(canonical_name(alias), name)
        for name in methods:  # canonical names beat aliases of other methods
            aliases[name] = name
        self.methods, self.aliases, self.adapters = methods, aliases, adapters

    # -- lookups --------------------------------------------------------------------------
    def method(self, name: str, *, source: str | None = None, key: str | None = None) -> Any:
        """The method called ``name`` (any alias, ``-``/``_`` alike), or a RopeConfigError naming the closest."""
        canon = self.aliases.get(canonical_name(name))
        if canon is None:
            known = sorted(self.methods)
            close = difflib.get_close_matches(canonical_name(name), list(self.aliases), n=1, cutoff=0.5)
            hint = f"; did you mean {self.aliases[close[0]]!r}?" if close else ""
            raise RopeConfigError(
                f"unknown RoPE scaling method {name!r}{hint} Known methods: {', '.join(known)}",
                path=source,
                key=key,
            )
        return self.methods[canon]

    def iter_methods(self) -> Iterable[Any]:
        return self.methods.values()


_lock = threading.RLock()
_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    if _registry is None:
        with _lock:
            if _registry is None:
                reg = Registry()
                reg.load()
                _registry = reg
    return _registry


def reset_registry() -> None:
    """Forget the loaded plugins (tests; re-reads the environment on next use)."""
    global _registry
    with _lock:
        _registry = None


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("0", "false", "no", "")
