"""Compare what each runtime computes for a checkpoint with ropepatch's reference spec.

For every probe that can run here: the runtime on its own (ropepatch disabled), then the runtime
with ropepatch enabled for it. Each is compared with ``RopeSpec.frequencies(seq_len)``: does it
load, the largest relative difference of ``inv_freq`` and of the cos/sin attention factor, and a
verdict (``matches``, ``wrong``, ``fails``, ``unsupported``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ropepatch.doctor.dims import DEFAULT_HEAD_DIM, clean_config, fill_dims
from ropepatch.doctor.probe import Computation, iter_probes

__all__ = ["TOLERANCE", "compare", "default_seq_len", "diagnose", "mismatches"]

#: relative difference below which a runtime "matches" (runtimes compute in float32; the spec in float64)
TOLERANCE = 1e-4


def default_seq_len(spec: Any) -> int:
    """The total length to probe at: the spec's target context; 4x the original for dynamic methods."""
    if spec.effective_context:
        return int(spec.effective_context)
    original = spec.effective_original or spec.max_position_embeddings
    if spec.is_dynamic and original:
        return 4 * int(original)
    return int(spec.max_position_embeddings or original or 4096)


def compare(
    comp: Computation, inv_ref: Sequence[float], attention_ref: float, tolerance: float = TOLERANCE
) -> dict[str, Any]:
    """A probe's computation against the reference: differences and a verdict (``tolerance``: the
    relative difference that still "matches", for runtimes whose tables are stored in fp16)."""
    out: dict[str, Any] = {"status": comp.status}
    if comp.detail:
        out["detail"] = comp.detail
    if comp.error:
        out["error"] = comp.error
    if comp.notes:
        out["notes"] = list(comp.notes)
    if comp.status != "ok":
        out["verdict"] = comp.status
        return out
    if comp.inv_freq is None and comp.row is not None:
        return _compare_row(out, comp.row, inv_ref, attention_ref)
    inv = comp.inv_freq or []
    if len(inv) != len(inv_ref):
        out.update(verdict="wrong", inv_freq_size=len(inv), reference_size=len(inv_ref))
        return out
    rel = max((abs(a - b) / abs(b) for a, b in zip(inv, inv_ref, strict=True)), default=0.0)
    attention = comp.attention_factor if comp.attention_factor is not None else 1.0
    rel_att = abs(attention - attention_ref) / abs(attention_ref)
    out.update(
        inv_freq_max_rel_diff=rel,
        attention_factor=attention,
        attention_factor_rel_diff=rel_att,
        verdict="matches" if rel <= tolerance and rel_att <= tolerance else "wrong",
    )
    return out


#: largest |difference| of a sin/cos table entry that still "matches" (fp16 tables, float32 angles)
ROW_TOLERANCE = 1e-2


def _compare_row(
    out: dict[str, Any], row: tuple[int, list[float], list[float]], inv_ref: Sequence[float], attention_ref: float
) -> dict[str, Any]:
    position, sin, cos = row
    n = len(inv_ref)
    if len(sin) != n or len(cos) != n:
        out.update(verdict="wrong", inv_freq_size=len(sin), reference_size=n)
        return out
    diff = 0.0
    for i, w in enumerate(inv_ref):
        diff = max(
            diff,
            abs(sin[i] - attention_ref * math.sin(position * w)),
            abs(cos[i] - attention_ref * math.cos(position * w)),
        )
    out.update(row_position=position, row_max_abs_diff=diff, verdict="matches" if diff <= ROW_TOLERANCE else "wrong")
    return out


@contextlib.contextmanager
def _env_without_ropepatch(active: bool) -> Iterator[None]:
    saved = os.environ.pop("ROPEPATCH", None) if active else None
    try:
        yield
    finally:
        if saved is not None:
            os.environ["ROPEPATCH"] = saved


def _prepare(source: Any) -> tuple[Any, dict[str, Any], list[str]]:
    """The detection view (dims filled), the runtime config dict and notes."""
    from ropepatch.metadata.sources import load_view

    view = load_view(source)
    notes: list[str] = []
    if view.kind == "gguf":
        return view, {}, ["GGUF metadata: no config.json for the Python runtimes to read"]
    data = clean_config(view.data)
    filled, fill_notes = fill_dims(data)
    notes.extend(fill_notes)
    if view.prefix == "text_config." and "outer" in view.extras:
        runtime_config = clean_config(view.extras["outer"])
        runtime_config["text_config"] = filled
    else:
        runtime_config = dict(filled)
    if view.names and "_name_or_path" not in runtime_config:
        # what from_pretrained would record, so name-based detection works inside the runtime too
        runtime_config["_name_or_path"] = view.names[0]
    return replace(view, data=filled), runtime_config, notes


def diagnose(
    source: Any,
    *,
    seq_len: int | None = None,
    probes: Sequence[Any] | None = None,
    use_env: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """The doctor's report for ``source`` (checkpoint folder, config.json, dict) as a JSON-safe dict.

    ``overrides`` are ropepatch overrides, applied to the reference spec and to the patched runs.
    Raises :class:`RuntimeError` when ropepatch is already enabled in this process (the runtimes'
    "own" behaviour could not be observed).
    """
    import ropepatch
    from ropepatch.detection import resolve
    from ropepatch.overrides import env_overrides, override_from_mapping

    if ropepatch.is_enabled():
        raise RuntimeError("ropepatch is enabled in this process; call ropepatch.disable() before the doctor")
    view, config, notes = _prepare(source)
    layers = [*(env_overrides() if use_env else []), override_from_mapping(overrides, "explicit")]
    spec = resolve(view, layers)
    if spec.rotary_dim is None:
        spec = spec.replace(rotary_dim=DEFAULT_HEAD_DIM)
        notes.append(f"the metadata gives no rotary size; the reference uses {DEFAULT_HEAD_DIM}")
    n = int(seq_len) if seq_len is not None else default_seq_len(spec)
    inv_ref, attention_ref = spec.compute(n)
    report: dict[str, Any] = {
        "source": str(source) if not isinstance(source, Mapping) else "(dict)",
        "spec": spec.summary(),
        "method": spec.method,
        "seq_len": n,
        "reference": {
            "inv_freq_first": inv_ref[0],
            "inv_freq_last": inv_ref[-1],
            "attention_factor": attention_ref,
            "softmax_scale": spec.softmax_scale,
        },
        "notes": notes + list(spec.notes),
        "warnings": list(spec.warnings),
        "runtimes": [],
    }
    for probe in probes if probes is not None else iter_probes():
        report["runtimes"].append(_run_probe(probe, config, n, inv_ref, attention_ref, overrides, use_env))
    return report


def _run_probe(
    probe: Any,
    config: dict[str, Any],
    n: int,
    inv_ref: Sequence[float],
    attention_ref: float,
    overrides: Mapping[str, Any],
    use_env: bool,
) -> dict[str, Any]:
    import ropepatch
    from ropepatch.registry import get_registry

    entry: dict[str, Any] = {"runtime": probe.name, "version": probe.version()}
    problem = probe.problem()
    if problem is not None:
        entry.update(verdict="not-installed", error=problem)
        return entry
    if not config:
        entry.update(verdict="skipped", error="nothing for this runtime to read (no config.json)")
        return entry
    tolerance = getattr(probe, "tolerance", None) or TOLERANCE
    # a fresh copy per run: runtimes rewrite nested dicts in place (transformers' rope standardisation)
    native = compare(_quiet(probe, config, n, False), inv_ref, attention_ref, tolerance)
    entry["native"] = native
    adapter = get_registry().adapters.get(probe.adapter) if probe.adapter else None
    if adapter is None:
        entry["with_ropepatch"] = {
            "verdict": "no-adapter",
            "error": f"ropepatch has no {probe.adapter or probe.name} adapter here",
        }
    elif adapter.problem() is not None:
        entry["with_ropepatch"] = {
            "verdict": "no-adapter",
            "error": f"the {adapter.name} adapter does not patch here: {adapter.problem()}",
        }
    else:
        with (
            _env_without_ropepatch(not use_env),
            ropepatch.temporarily_enabled(runtimes=(adapter.name,), **overrides) as state,
        ):
            computed = _quiet(probe, config, n, True)
            failure = state.failures.get(adapter.name) or state.skipped.get(adapter.name)
        patched = compare(computed, inv_ref, attention_ref, tolerance)
        if failure:
            patched["adapter_problem"] = failure
        entry["with_ropepatch"] = patched
    entry["summary"] = summarize(native, entry["with_ropepatch"])
    return entry


def _quiet(probe: Any, config: Mapping[str, Any], n: int, patched: bool) -> Computation:
    """``probe.compute`` on a copy of the config, with what the runtime prints kept as notes."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        comp = probe.compute(copy.deepcopy(config), n, patched=patched)
    printed = [line.strip(" !") for line in buffer.getvalue().splitlines() if line.strip(" !")]
    comp.notes.extend(f"{probe.name} printed: {line}" for line in dict.fromkeys(printed))
    return comp


def _worst(d: Mapping[str, Any]) -> str:
    if "row_max_abs_diff" in d:
        return f"table entries off by up to {d['row_max_abs_diff']:.3g}"
    rel = max(d.get("inv_freq_max_rel_diff", 0.0), d.get("attention_factor_rel_diff", 0.0))
    return f"max relative difference {rel:.3g}"


def summarize(native: Mapping[str, Any], patched: Mapping[str, Any]) -> str:
    """One sentence: what the runtime does on its own and what ropepatch changes."""
    v = native["verdict"]
    if v == "matches":
        first = "matches the spec on its own"
    elif v == "wrong":
        first = f"loads but computes a different RoPE ({_worst(native)})"
    elif v == "fails":
        first = f"fails to load ({native.get('error', '')})"
    else:
        first = f"cannot run this checkpoint natively ({native.get('error', '')})"
    p = patched.get("verdict")
    if p == "no-adapter":
        second = patched.get("error", "no adapter")
    elif p == "matches":
        second = "with ropepatch it matches" if v == "matches" else "ropepatch fixes it: with ropepatch it matches"
    elif p == "wrong":
        second = f"with ropepatch it still differs ({_worst(patched)})"
    elif p == "fails":
        second = f"with ropepatch it fails ({patched.get('error', '')})"
    else:
        second = f"with ropepatch: {p} ({patched.get('error', '')})"
    return f"{first}; {second}"


#: verdicts of a runtime that computed something other than the reference (or could not load it)
_OFF = frozenset({"wrong", "fails"})


def mismatches(report: Mapping[str, Any]) -> dict[str, list[str]]:
    """The runtimes in a doctor report that disagree with the reference, by kind.

    ``"with_ropepatch"``: installed runtimes that, as a user of ``ropepatch.enable()`` gets them,
    compute something else than the reference or fail to load: the patched run is ``wrong`` or
    ``fails``, or there is no adapter that patches the runtime here (outside its range, not
    registered) while the runtime on its own is wrong, since then the user gets the runtime's own
    result. ``"native"``: installed runtimes whose own result (ropepatch off) is ``wrong`` or
    ``fails``. A runtime with no code path for the checkpoint at all (``unsupported``: remote-code
    architectures), one not installed, and one with nothing to read (GGUF) count in neither.
    """
    patched: list[str] = []
    native: list[str] = []
    for entry in report.get("runtimes", []):
        if "native" not in entry:
            continue
        own = entry["native"].get("verdict")
        with_rp = entry.get("with_ropepatch", {}).get("verdict")
        name = str(entry.get("runtime"))
        if own in _OFF:
            native.append(name)
        if with_rp in _OFF or (with_rp == "no-adapter" and own in _OFF):
            patched.append(name)
        elif with_rp == "unsupported" and own not in ("unsupported", None):
            patched.append(name)  # loads on its own, not with ropepatch
    return {"with_ropepatch": patched, "native": native}
