"""Shared machinery of the hardening tests: hypothesis profiles, outcome counts, a watchdog,
a tiny GGUF writer, and the invariant every hostile input must satisfy.

The invariant: whatever the input, ``detect()`` (and ``RopeSpec(...)``, ``RopeSpec.from_dict``,
``parse_overrides``) ends in a valid spec or a :class:`ropepatch.RopeConfigError` that names the
file and the key. Any other exception, a hang, or memory that grows with a *declared* size fails.
A valid spec must also be a correct one: finite positive frequencies (or a RopeConfigError), and a
``to_dict`` / ``from_dict`` round trip (also through JSON) that gives back an equal spec.

Profiles: ``ROPEPATCH_FUZZ_PROFILE=ci`` (default; bounded, derandomized, ~a minute for the whole
directory) or ``thorough`` (many more examples, random seeds). ``ROPEPATCH_FUZZ_REPORT=1`` writes
``FUZZ-REPORT.md`` with the counts per target at the end of the session.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import struct
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

from ropepatch.errors import RopeConfigError
from ropepatch.spec import RopeSpec

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"

# -- hypothesis profiles --------------------------------------------------------------------
# Registered under our own names and applied per test (never load_profile): other test
# directories keep their own hypothesis settings.
_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.register_profile("ropepatch-hardening-ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("ropepatch-hardening-thorough", derandomize=False, **_COMMON)

PROFILE = os.environ.get("ROPEPATCH_FUZZ_PROFILE", "ci").strip().lower() or "ci"
if PROFILE not in ("ci", "thorough"):
    raise RuntimeError(f"ROPEPATCH_FUZZ_PROFILE must be 'ci' or 'thorough', got {PROFILE!r}")
THOROUGH_FACTOR = int(os.environ.get("ROPEPATCH_FUZZ_FACTOR", "40"))


def fuzz_settings(ci_examples: int) -> settings:
    """Settings for one fuzz test: ``ci_examples`` in CI, ``THOROUGH_FACTOR`` times more when thorough."""
    parent = settings.get_profile(f"ropepatch-hardening-{PROFILE}")
    n = ci_examples if PROFILE == "ci" else ci_examples * THOROUGH_FACTOR
    return settings(parent, max_examples=n)


# -- outcome counts -------------------------------------------------------------------------
STATS: dict[str, Counter[str]] = defaultdict(Counter)
REASONS: dict[str, Counter[str]] = defaultdict(Counter)
FAILURES_DIR = os.environ.get("ROPEPATCH_FUZZ_SAVE")  # where to drop failing inputs (for the corpus)


def record(target: str, outcome: str, reason: str | None = None) -> None:
    """Count one input of ``target`` that ended in ``outcome`` ("spec", "error" or "other")."""
    STATS[target]["tried"] += 1
    STATS[target][outcome] += 1
    if reason:
        REASONS[target][reason] += 1


def save_failure(target: str, exc: BaseException, payload: bytes, suffix: str) -> None:
    """With ``ROPEPATCH_FUZZ_SAVE=DIR``, keep the (last, i.e. shrunk) input that broke an invariant."""
    if not FAILURES_DIR:
        return
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{Path(tb.tb_frame.f_code.co_filename).stem}-{tb.tb_lineno}" if tb else "unknown"
    out = Path(FAILURES_DIR) / target
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{type(exc).__name__}-{where}{suffix}").write_bytes(payload)


def report_markdown() -> str:
    """The counts table written to FUZZ-REPORT.md."""
    lines = [
        "# Fuzz report (tests/hardening)",
        "",
        f"profile: `{PROFILE}`" + (f" (x{THOROUGH_FACTOR})" if PROFILE == "thorough" else ""),
        "",
        'Every input is counted once per call, shrinking and replays included. "other" is any outcome',
        "that is neither a valid (and correct) spec nor a RopeConfigError naming file and key; it fails the run.",
        "",
        "| target | inputs tried | RopeConfigError | valid spec | other |",
        "|---|---:|---:|---:|---:|",
    ]
    total = Counter()
    for target in sorted(STATS):
        c = STATS[target]
        total.update(c)
        lines.append(f"| {target} | {c['tried']} | {c['error']} | {c['spec']} | {c['other']} |")
    lines.append(f"| **all** | {total['tried']} | {total['error']} | {total['spec']} | {total['other']} |")
    manifest = json.loads((CORPUS / "MANIFEST.json").read_text(encoding="utf-8"))
    lines += [
        "",
        f"## Regression corpus ({len(manifest)} inputs that broke the core, replayed by the tests)",
        "",
        "| file | found by | now ends in | what it broke |",
        "|---|---|---|---|",
    ]
    for name, entry in sorted(manifest.items()):
        ends = f"error naming `{entry['key']}`" if entry["expect"] == "error" else entry.get("method", "accepted")
        lines.append(f"| `{name}` | {entry.get('found', 'fuzz')} | {ends} | {entry['bug'].replace('|', '/')} |")
    lines += ["", "## Most frequent RopeConfigError reasons per target", ""]
    for target in sorted(REASONS):
        lines.append(f"### {target}")
        for reason, n in REASONS[target].most_common(8):
            lines.append(f"- {n} x {reason}")
        lines.append("")
    return "\n".join(lines) + "\n"


# -- watchdog and memory ------------------------------------------------------------------------
HANG_SECONDS = float(os.environ.get("ROPEPATCH_FUZZ_HANG_S", "20"))


class Hang(Exception):
    """Raised in the main thread when one input ran longer than the watchdog allows."""


@contextlib.contextmanager
def watchdog(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Turn a hang (an endless loop, a blocking open of a FIFO) into an exception after ``seconds``."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- what an error must say -----------------------------------------------------------------
#: errors about the whole file (no single key is at fault): these may leave ``key`` empty
FILE_LEVEL = (
    "malformed JSON",
    "config is not UTF-8",
    "config must be a JSON object",
    "config file is",
    "cannot read",
    "not a regular file",
    "malformed GGUF header",
    "not a GGUF file",
    "unsupported GGUF version",
    "no such file",
    "folder has no config.json",
    "a spec dict must be a mapping",
    "overrides must be text",
)


def check_error(exc: RopeConfigError, path: str | None) -> None:
    """``exc`` names the file (when the input was one) and the key (unless the whole file is bad)."""
    if path is not None:
        assert exc.path == str(path), f"error does not name the file {path}: path={exc.path!r}: {exc}"
        assert str(path) in str(exc)
    if exc.key is None:
        # no single key holds the value (a default, a value derived from two keys): the message says where from
        derived = " came from " in exc.reason or "(from " in exc.reason
        assert derived or any(m in exc.reason for m in FILE_LEVEL), f"error names no key: {exc}"
    else:
        assert isinstance(exc.key, str) and repr(exc.key) in str(exc)
        # a key, never a provenance string ("dict:rope_theta") or a description ("env ROPEPATCH")
        assert not exc.key.startswith(("dict:", "config.json:", "explicit", "env ROPEPATCH", "default (")), exc.key


# -- what a spec must satisfy -----------------------------------------------------------------
def check_spec(spec: RopeSpec) -> None:
    """A valid spec is a correct one: JSON round trip, finite positive frequencies or a RopeConfigError."""
    assert isinstance(spec, RopeSpec)
    data = spec.to_dict()
    assert RopeSpec.from_dict(data) == spec
    text = json.dumps(data, allow_nan=False)  # strict JSON: no NaN or Infinity tokens
    again = RopeSpec.from_dict(json.loads(text))
    assert again == spec
    assert hash(again) == hash(spec)
    assert spec.to_json() == again.to_json()
    spec.summary()
    _finite_or_error(lambda: spec.softmax_scale, "softmax_scale")
    context = _call_or_error(lambda: spec.effective_context)
    assert context is None or context is _ERROR or (isinstance(context, int) and context > 0), context
    for position in (0, 1, 10**6):
        _finite_or_error(lambda position=position: spec.query_scale(position), "query_scale")
    _cli_views(spec)
    if spec.rotary_dim is None:
        _finite_or_error(lambda: spec.attention_factor(), "attention_factor")
        return
    original = spec.effective_original or spec.max_position_embeddings or 4096
    lengths = [None, 1, original, 2 * original + 1] if spec.is_dynamic else [None]
    for seq_len in lengths:
        result = _call_or_error(lambda seq_len=seq_len: spec.frequencies(seq_len))
        if result is _ERROR:
            continue
        inv, attention = result
        assert tuple(inv.shape) == (spec.rotary_dim // 2,)
        assert str(inv.dtype) == "torch.float32"
        values = inv.tolist()
        assert all(math.isfinite(v) and v > 0 for v in values), (
            f"inv_freq not finite positive at {seq_len}: {values[:4]}"
        )
        assert isinstance(attention, float) and math.isfinite(attention) and attention > 0, attention
        assert spec.attention_factor(seq_len) == attention


_ERROR: Any = object()


def _cli_views(spec: RopeSpec) -> None:
    """What ``ropepatch inspect`` prints for the spec (text, --json, --as llama.cpp) renders."""
    from ropepatch.cli.inspect_cmd import _text, inspect_report
    from ropepatch.llamacpp import llamacpp_flags

    report = _call_or_error(lambda: inspect_report(spec))
    if report is not _ERROR:
        json.dumps(report, allow_nan=False)
        _text(spec, report)
    _call_or_error(lambda: llamacpp_flags(spec))


def _call_or_error(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except RopeConfigError:
        return _ERROR


def _finite_or_error(fn: Callable[[], Any], what: str) -> None:
    value = _call_or_error(fn)
    if value is not _ERROR:
        assert isinstance(value, float) and math.isfinite(value) and value > 0, f"{what} = {value!r}"


# -- running one input ------------------------------------------------------------------------
def outcome_of(
    target: str, fn: Callable[[], Any], *, path: str | None = None, payload: bytes = b"", suffix: str = ""
) -> Any:
    """Run ``fn`` under the watchdog and check the invariant; count the outcome under ``target``.

    Returns the spec (or other object ``fn`` returned), or ``None`` after a RopeConfigError.
    """
    try:
        with watchdog():
            result = fn()
            if isinstance(result, RopeSpec):
                check_spec(result)
    except RopeConfigError as exc:
        try:
            check_error(exc, path)
        except AssertionError as bad:
            record(target, "other")
            save_failure(target, bad, payload, suffix)
            raise
        record(target, "error", _reason(exc))
        return None
    except BaseException as exc:
        record(target, "other")
        save_failure(target, exc, payload, suffix)
        raise
    record(target, "spec")
    return result


def _reason(exc: RopeConfigError) -> str:
    reason = exc.reason
    for cut in (" (", ";", ", got", " got "):
        reason = reason.split(cut)[0]
    return reason[:70]


# -- a tiny GGUF writer ----------------------------------------------------------------------
# value type ids of the GGUF spec
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR_FMT = {
    U8: "<B",
    I8: "<b",
    U16: "<H",
    I16: "<h",
    U32: "<I",
    I32: "<i",
    F32: "<f",
    BOOL: "<?",
    U64: "<Q",
    I64: "<q",
    F64: "<d",
}


@dataclass
class GGUFImage:
    """The bytes of a GGUF header and where its length fields sit (for targeted corruption)."""

    data: bytearray = field(default_factory=bytearray)
    #: (offset, width in bytes, what) of every kv-count, key-length, string-length and array-count field
    lengths: list[tuple[int, int, str]] = field(default_factory=list)
    #: offset where each key/value entry starts
    entries: list[int] = field(default_factory=list)


def _pack_scalar(vtype: int, value: Any) -> bytes:
    fmt = SCALAR_FMT[vtype]
    if fmt in ("<f", "<d"):
        try:
            return struct.pack(fmt, float(value))
        except OverflowError:  # a float64 too large for float32
            return struct.pack(fmt, math.copysign(math.inf, float(value)))
    if fmt == "<?":
        return struct.pack(fmt, bool(value))
    bits = struct.calcsize(fmt) * 8
    signed = fmt[1].islower()
    v = int(value)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return struct.pack(fmt, min(max(v, lo), hi))


def gguf_header(
    kvs: list[tuple[str | bytes, int, Any]],
    *,
    version: int = 3,
    magic: bytes = b"GGUF",
    n_tensors: int = 0,
    n_kv: int | None = None,
) -> GGUFImage:
    """A GGUF header (no tensors) holding ``kvs``: ``(key, type id, value)``.

    A string value is ``str`` or ``bytes``; an array value is ``(element type id, [items])`` where
    nested arrays are again ``(type id, [items])``. Version 1 writes 32-bit lengths, later ones 64-bit.
    """
    img = GGUFImage()
    d = img.data
    wide = version != 1

    def length(n: int, what: str) -> None:
        img.lengths.append((len(d), 8 if wide else 4, what))
        d.extend(struct.pack("<Q" if wide else "<I", n & ((1 << (64 if wide else 32)) - 1)))

    def string(s: str | bytes, what: str) -> None:
        raw = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else bytes(s)
        length(len(raw), what)
        d.extend(raw)

    def value(vtype: int, v: Any, what: str) -> None:
        if vtype in SCALAR_FMT:
            d.extend(_pack_scalar(vtype, v))
        elif vtype == STRING:
            string(v, what + " string")
        elif vtype == ARRAY:
            etype, items = v
            d.extend(struct.pack("<I", etype))
            length(len(items), what + " array")
            for item in items:
                value(etype, item, what + " item")
        else:  # an unknown type id: write 4 arbitrary bytes after it
            d.extend(b"\0\0\0\0")

    d.extend(magic)
    d.extend(struct.pack("<I", version & 0xFFFFFFFF))
    d.extend(struct.pack("<Q" if wide else "<I", n_tensors & ((1 << (64 if wide else 32)) - 1)))
    length(len(kvs) if n_kv is None else n_kv, "kv count")
    for key, vtype, v in kvs:
        img.entries.append(len(d))
        string(key, "key")
        d.extend(struct.pack("<I", vtype & 0xFFFFFFFF))
        value(vtype, v, "value")
    return img


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` (replacing what was there) and return the path."""
    path.write_bytes(data)
    return path


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    """``with timed() as t: ...`` then ``t['s']`` holds the elapsed seconds."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - start
