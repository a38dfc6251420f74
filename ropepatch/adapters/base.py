"""What a runtime adapter is, in the shape of OpenTelemetry's instrumentors: the base decides, the adapter patches.

Every decision adapters share is made here once, and an adapter only patches:

* **version policy** (:meth:`Adapter.activate`): a floor (the oldest version known to work), a
  ``tested_up_to`` version (information: a newer release patches normally, with one INFO line),
  capability probes (:class:`Capability`: every patch point exists with the parameters the adapter
  expects) run when the runtime is imported, and a numeric self-check on the first model built
  (:meth:`Adapter.self_check`). A failed probe or self-check leaves the runtime exactly as it was and
  warns once, naming the probe and the version; ``strict=True`` raises instead, out of the import
  that triggered it.
* **the spec** (:meth:`Adapter.spec_for`): resolved through the enable state (its overrides), plain
  RoPE with nothing overridden means "leave the runtime alone" (from ``RopeSpec.overridden``), the
  spec's warnings are said once, an unreadable checkpoint is a warning (or, strict, the error).
* **what a table cannot express** (:meth:`Adapter.refuse_beyond_tables`): query or softmax scaling.
* **deferred patch points** (:meth:`Adapter.defer`): :func:`ropepatch.patching.patch_when_imported`,
  all-or-nothing, with the liveness check and the failure policy above.
* **saying what changed** (:meth:`Adapter.changed`): one line per model whose RoPE ropepatch changed.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from packaging.version import InvalidVersion, Version

from ropepatch.errors import RopeConfigError, RopepatchWarning
from ropepatch.patching import PatchSet, patch_when_imported, propagate
from ropepatch.versions import installed_version

if TYPE_CHECKING:
    from ropepatch.runtime import EnableState
    from ropepatch.spec import RopeSpec

__all__ = ["Adapter", "Capability", "ProbeFailed", "refuse_beyond_tables"]

log = logging.getLogger("ropepatch")

#: relative difference at which a runtime's rotary module no longer "equals" the spec (float32 vs float64)
SELF_CHECK_TOLERANCE = 1e-5


class ProbeFailed(RuntimeError):
    """A capability probe or the self-check found the runtime not shaped as the adapter expects."""

    def __init__(self, probe: str, detail: str) -> None:
        self.probe = probe
        super().__init__(f"probe {probe!r} failed: {detail}")


@dataclass(frozen=True)
class Capability:
    """One patch point an adapter relies on: ``module``'s ``attribute`` (dotted), taking ``parameters``.

    Checked when ``module`` is imported, before any patch: a runtime release that renamed or
    re-shaped the point fails this probe by name instead of breaking half-way through a patch.
    ``alternatives`` are other dotted attributes of the same module any one of which will do
    (a point that moved between releases).
    """

    module: str
    attribute: str
    parameters: tuple[str, ...] = ()
    alternatives: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.module}:{self.attribute}"

    def check(self, module: ModuleType) -> str | None:
        """Why ``module`` lacks this point, or ``None`` when it is there with the expected parameters."""
        problems = []
        for dotted in (self.attribute, *self.alternatives):
            obj: Any = module
            try:
                for part in dotted.split("."):
                    obj = getattr(obj, part)
            except AttributeError:
                problems.append(f"{self.module}.{dotted} does not exist")
                continue
            missing = _missing_parameters(obj, self.parameters)
            if missing:
                problems.append(f"{self.module}.{dotted} takes no {', '.join(missing)}")
                continue
            return None
        return "; ".join(problems)


def _missing_parameters(obj: Any, names: Sequence[str]) -> list[str]:
    if not names:
        return []
    target = obj.__func__ if isinstance(obj, (classmethod, staticmethod)) else obj
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return []  # a builtin without a signature: existence is all that can be checked
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    return [n for n in names if n not in params]


class Adapter:
    """Base class of runtime adapters: set the class attributes, implement :meth:`install`."""

    #: short name, shown by ``ropepatch plugins`` and in messages
    name: str = ""
    #: the distribution whose installed version is read (never by importing the runtime)
    distribution: str = ""
    #: the oldest version known to work; older ones are not patched
    floor: str = ""
    #: the newest version the tests ran against (information: newer ones patch normally)
    tested_up_to: str = ""
    #: a requirement string, for adapters written before ``floor``: only its lower bounds count
    requires: str = ""
    #: importing this module triggers installation (the adapter never imports it first)
    trigger: str = ""
    #: the patch points, probed when their module is imported (see :class:`Capability`)
    capabilities: tuple[Capability, ...] = ()

    # -- versions -------------------------------------------------------------------------
    def version(self) -> Version | None:
        """The installed version of the runtime, read from metadata."""
        return installed_version(self.distribution)

    def minimum(self) -> Version | None:
        """The floor as a version (from :attr:`floor`, else the lower bounds of :attr:`requires`)."""
        if self.floor:
            return Version(self.floor)
        if self.requires:
            from packaging.requirements import Requirement

            lows = [
                Version(s.version) for s in Requirement(self.requires).specifier if s.operator in (">=", "==", "~=")
            ]
            return max(lows) if lows else None
        return None

    def problem(self, version: Version | None = None) -> str | None:
        """Why the adapter must not patch (not installed, older than the floor), or ``None``."""
        version = version or self.version()
        if not self.distribution:
            return None
        if version is None:
            return f"{self.distribution} is not installed"
        low = self.minimum()
        if low is not None and Version(version.base_version) < low:
            return f"{self.distribution} {version} is older than {low}, the oldest version ropepatch works with"
        return None

    def untested(self, version: Version | None = None) -> str | None:
        """A note when the installed version is newer than :attr:`tested_up_to`, else ``None``."""
        version = version or self.version()
        if version is None or not self.tested_up_to:
            return None
        try:
            newest = Version(self.tested_up_to)
        except InvalidVersion:
            return None
        if Version(version.base_version) > newest:
            return (
                f"{self.distribution} {version} is newer than {newest}, the newest version ropepatch was tested with; "
                "patching it (its patch points passed their probes)"
            )
        return None

    # -- the contract an adapter implements ------------------------------------------------
    def install(self, patches: PatchSet, state: EnableState) -> None:
        """Patch the runtime (already imported). Raise to abort; the transaction undoes partial work."""
        raise NotImplementedError

    def patch_model(self, model: Any, state: EnableState) -> bool:
        """Fix an already built model in place; return True when this adapter handled it."""
        return False

    # -- the funnel: activation (called by ropepatch.runtime when the trigger is imported) -----
    def activate(self, state: EnableState) -> None:
        """Install into ``state``: version floor, probes, transaction, failure policy (module docstring)."""
        if self.name in state.installed:
            return
        version = self.version()
        problem = self.problem(version)
        if problem is not None:
            state.skipped[self.name] = problem
            self._fail(state, f"ropepatch: not patching {self.name}: {problem}", RuntimeError)
            return
        note = self.untested(version)
        if note is not None:
            state.untested[self.name] = note
            log.info("ropepatch: %s: %s", self.name, note)
        patches = PatchSet(self.name)
        try:
            with patches.transaction():
                self.probe_imported()
                self.install(patches, state)
        except Exception as exc:
            state.failures[self.name] = self._failure_message(exc, version)
            self._fail(state, state.failures[self.name], exc=exc)
            return
        state.installed[self.name] = patches
        log.debug("ropepatch: %s %s patched (%d patches)", self.name, version, len(patches))

    def probe_imported(self, module_name: str | None = None) -> None:
        """Run the capability probes of imported modules (or of ``module_name``); raise :class:`ProbeFailed`."""
        import sys

        for cap in self.capabilities:
            if module_name is not None and cap.module != module_name:
                continue
            module = sys.modules.get(cap.module)
            if module is None:
                continue  # probed when it is imported (defer() runs it first)
            why = cap.check(module)
            if why is not None:
                raise ProbeFailed(cap.name, why)

    def defer(
        self,
        patches: PatchSet,
        state: EnableState,
        module_name: str,
        patch: Callable[[ModuleType], None],
    ) -> None:
        """Run ``patch(module)`` once ``module_name`` is imported (now, if it is): probed first, all-or-nothing.

        A failure undoes every patch of this adapter (the runtime is left as it was), is recorded
        and warned once; under ``strict=True`` it propagates out of the import that triggered it.
        """
        from ropepatch.runtime import current

        def run(module: ModuleType) -> None:
            self.probe_imported(module_name)
            patch(module)

        def failed(exc: BaseException) -> None:
            state.installed.pop(self.name, None)
            state.failures[self.name] = self._failure_message(exc, self.version(), where=module_name)
            self._fail(state, state.failures[self.name], exc=exc)

        patch_when_imported(
            patches,
            module_name,
            run,
            live=lambda: current() is state and self.name not in state.failures,
            all_or_nothing=True,
            on_failure=failed,
            tag=state,
        )

    def self_check(
        self,
        state: EnableState,
        spec: RopeSpec,
        inv_freq: Any,
        attention: float | None,
        *,
        seq_len: int | None = None,
        where: str = "",
    ) -> bool:
        """Compare what the runtime's rotary module holds with ``spec.frequencies()``, once per adapter and state.

        On a mismatch the adapter's patches are restored (later models are built by the runtime
        alone), the failure is warned once naming the probe and version, and ``strict=True`` raises.
        Returns False on a mismatch.
        """
        key = (self.name, "self-check")
        if key in state.checked:
            return True
        got = [float(x) for x in (inv_freq.tolist() if hasattr(inv_freq, "tolist") else inv_freq)]
        if spec.rotary_dim is None:
            spec = spec.replace(rotary_dim=2 * len(got))
        ref_inv, ref_att = spec.compute(seq_len)
        state.checked.add(key)
        problem = None
        if len(got) != len(ref_inv):
            problem = f"{len(got)} frequencies, the spec has {len(ref_inv)}"
        else:
            worst = max((abs(a - b) / b for a, b in zip(got, ref_inv, strict=True)), default=0.0)
            if not worst <= SELF_CHECK_TOLERANCE:
                problem = f"inv_freq differs from the spec by {worst:.3g} (relative)"
            elif attention is not None and not math.isclose(float(attention), ref_att, rel_tol=SELF_CHECK_TOLERANCE):
                problem = f"attention factor {float(attention):.6g}, the spec says {ref_att:.6g}"
        if problem is None:
            return True
        exc = ProbeFailed("self-check", f"{where or 'the first model'}: {problem}")
        patches = state.installed.pop(self.name, None)
        if patches is not None:
            patches.restore()
        state.failures[self.name] = self._failure_message(exc, self.version())
        self._fail(state, state.failures[self.name] + " (this model may already use the wrong RoPE)", exc=exc)
        return False

    def _failure_message(self, exc: BaseException, version: Version | None, where: str | None = None) -> str:
        at = f" {where}" if where else ""
        probe = f" (probe {exc.probe})" if isinstance(exc, ProbeFailed) else ""
        return (
            f"ropepatch: the {self.name} adapter failed to patch{at} ({self.distribution} {version}){probe} and left "
            f"{self.distribution} unchanged: {type(exc).__name__}: {exc}"
        )

    def _fail(
        self,
        state: EnableState,
        message: str,
        exc_type: type[Exception] = RuntimeError,
        *,
        exc: BaseException | None = None,
    ) -> None:
        """Strict: raise (``exc`` itself, or ``exc_type(message)``), marked to leave the import. Else warn once."""
        if state.strict:
            raise propagate(exc if exc is not None else exc_type(message))
        self.say_once(("failure", message), message, warn=True, stacklevel=4)

    # -- the funnel: the spec of one model ---------------------------------------------------
    def spec_for(self, state: EnableState, source: Any, *, label: str = "", keep_own: str = "") -> RopeSpec | None:
        """The spec the runtime must use for ``source``, or ``None`` to leave the runtime alone.

        ``None`` when the spec is plain RoPE and no override names a method, and (with a warning;
        strict: the error) when the metadata cannot be read; ``keep_own`` says what the runtime keeps
        then. The spec's own warnings are said once.
        """
        try:
            spec = state.spec_for(source)
        except RopeConfigError as exc:
            if state.strict:
                raise
            where = label or getattr(exc, "path", None) or "this model"
            self.say_once(
                ("unreadable", str(where), str(exc)),
                f"ropepatch: cannot read the RoPE of {where}: {exc}; {keep_own or self.name + ' keeps its own RoPE'}",
                warn=True,
            )
            return None
        if self.leaves_alone(spec):
            return None
        for message in spec.warnings:
            self.say_once(("spec-warning", label, message), f"ropepatch: {message}", warn=True)
        return spec

    @staticmethod
    def leaves_alone(spec: RopeSpec) -> bool:
        """Plain RoPE and no override named a method: the runtime's own RoPE is already right."""
        return spec.method == "default" and "method" not in spec.overridden

    def refuse_beyond_tables(self, spec: RopeSpec, what: str = "") -> None:
        """Raise :class:`RopeConfigError` when ``spec`` needs more than a cos/sin table (see :func:`refuse_beyond_tables`)."""
        refuse_beyond_tables(spec, what or f"{self.name}'s rotary layer")

    def is_live(self, state: EnableState) -> bool:
        """True while ``state`` is the active one and this adapter has not failed (a wrapper's liveness check).

        A module that imported a wrapper while ropepatch was on keeps a reference that
        ``disable()`` cannot reach: the wrapper must then behave exactly like the original.
        """
        from ropepatch.runtime import current

        return current() is state and self.name not in state.failures

    # -- saying things once ------------------------------------------------------------------
    def say_once(self, key: tuple[str, ...], message: str, *, warn: bool = False, stacklevel: int = 3) -> None:
        """Log (or warn) each distinct message once per adapter: loads repeat per layer and per model."""
        with _said_lock:
            said = self.__dict__.setdefault("_said_once", set())
            if key in said:
                return
            said.add(key)
        if warn:
            warnings.warn(message, RopepatchWarning, stacklevel=stacklevel)
            log.warning(message)
        else:
            log.info(message)

    def changed(self, spec: RopeSpec, *, model: Any, before: str, identity: Any = None) -> None:
        """Say (once per process, model and spec) that ropepatch changed ``model``'s RoPE; see :mod:`ropepatch.changes`."""
        from ropepatch.changes import record_change

        record_change(self.name, spec, model=model, before=before, identity=identity)

    # -- listing -------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Facts for ``ropepatch plugins``."""
        v = self.version()
        low = self.minimum()
        return {
            "name": self.name,
            "distribution": self.distribution,
            "floor": str(low) if low else None,
            "tested_up_to": self.tested_up_to or None,
            "requires": f"{self.distribution}>={low}" if low else "",
            "installed": str(v) if v else None,
            "problem": self.problem(v),
            "untested": self.untested(v),
            "probes": [c.name for c in self.capabilities],
        }

    def __repr__(self) -> str:
        return f"<ropepatch adapter {self.name!r} (>= {self.minimum()}, tested up to {self.tested_up_to or '?'})>"


_said_lock = threading.Lock()


def refuse_beyond_tables(spec: RopeSpec, what: str, hint: str = "") -> None:
    """Raise :class:`RopeConfigError` when ``spec`` needs query or softmax scaling, which a cos/sin table cannot carry.

    ``what`` names the runtime's layer in the message; ``hint`` adds the way out where there is one.
    """
    if spec.needs_query_scaling:
        detail, key = (
            "use_logn_attn scales queries by position; set use_logn_attn=false to accept it without",
            ("use_logn_attn"),
        )
    elif abs(spec.softmax_scale - 1.0) > 1e-12:
        detail, key = f"the softmax scale x{spec.softmax_scale:.6g} over the whole head", "mscale_all_dim"
    else:
        return
    raise RopeConfigError(
        f"{spec.method} needs query or softmax scaling beyond a cos/sin table ({detail}), which {what} cannot do{hint}",
        path=spec.source,
        key=key,
    )
