"""``ropepatch doctor SOURCE``: what each installed runtime computes for a checkpoint, with and without ropepatch."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ropepatch.cli.overrides_args import add_override_args, overrides_from_args

__all__ = ["EXIT_MISMATCH", "EXIT_NATIVE", "EXIT_OK", "EXIT_USAGE", "add_parser", "exit_status", "format_report", "run"]

#: every installed runtime, with ropepatch, matches the reference (or has no code path for the checkpoint)
EXIT_OK = 0
#: an installed runtime, with ropepatch, computes another RoPE than the reference or fails to load
EXIT_MISMATCH = 1
#: a usage or input error (bad option, missing or unreadable checkpoint, ropepatch already enabled)
EXIT_USAGE = 2
#: only with --fail-on-native: every runtime matches with ropepatch, but one is wrong on its own
EXIT_NATIVE = 3

_EXIT_CODES = f"""\
exit status:
  {EXIT_OK}  every installed runtime, with ropepatch, matches the reference
  {EXIT_MISMATCH}  an installed runtime, with ropepatch, does not match (wrong RoPE, fails to load, or
     not patched here while wrong on its own)
  {EXIT_USAGE}  usage or input error (bad option, missing or unreadable checkpoint, ropepatch already enabled)
  {EXIT_NATIVE}  with --fail-on-native: all match with ropepatch, but a runtime on its own is wrong
     (a deployment that runs it without ropepatch would be wrong)
runtimes with no code path for the checkpoint (remote code) and runtimes not installed never fail."""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "doctor",
        help="check what each installed runtime computes for a checkpoint's RoPE, alone and with ropepatch",
        description=(
            "Run each installed runtime's own RoPE code for the checkpoint's config (on CPU, no weights) and "
            "compare it with ropepatch's reference spec: does it load, how far inv_freq and the attention "
            "factor are off, and what ropepatch changes."
        ),
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="checkpoint folder or config.json")
    p.add_argument("--seq-len", type=int, help="total length to probe at (default: the target context)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-env", action="store_true", help="ignore $ROPEPATCH")
    p.add_argument(
        "--fail-on-native",
        action="store_true",
        help=f"also fail (exit {EXIT_NATIVE}) when a runtime on its own computes a wrong RoPE (for CI)",
    )
    add_override_args(p)
    return p


_LABEL = {
    "matches": "MATCHES",
    "wrong": "WRONG",
    "fails": "FAILS",
    "unsupported": "UNSUPPORTED",
    "no-adapter": "NO ADAPTER",
    "not-installed": "NOT INSTALLED",
    "skipped": "SKIPPED",
}


def _line(d: dict[str, Any]) -> str:
    verdict = _LABEL.get(d.get("verdict", ""), str(d.get("verdict")).upper())
    if "inv_freq_max_rel_diff" in d:
        return (
            f"{verdict:<12} inv_freq max rel diff {d['inv_freq_max_rel_diff']:.3g}, attention factor "
            f"{d['attention_factor']:.6g} (rel diff {d['attention_factor_rel_diff']:.3g})"
            + (f"  [{d['detail']}]" if d.get("detail") else "")
        )
    if "row_max_abs_diff" in d:
        return (
            f"{verdict:<12} table row {d['row_position']}: max abs diff {d['row_max_abs_diff']:.3g} from the spec"
            + (f"  [{d['detail']}]" if d.get("detail") else "")
        )
    if "inv_freq_size" in d:
        return f"{verdict:<12} inv_freq has {d['inv_freq_size']} values, the spec {d['reference_size']}"
    return f"{verdict:<12} {d.get('error', '')}"


def format_report(report: dict[str, Any]) -> str:
    """The doctor's report as text."""
    ref = report["reference"]
    lines = [
        f"source    {report['source']}",
        f"spec      {report['spec']}",
        f"probe     seq_len {report['seq_len']}: reference inv_freq [{ref['inv_freq_first']:.6g} .. "
        f"{ref['inv_freq_last']:.6g}], attention factor {ref['attention_factor']:.6g}"
        + (f", softmax scale x{ref['softmax_scale']:.6g}" if ref["softmax_scale"] != 1.0 else ""),
    ]
    lines += [f"note      {n}" for n in report["notes"]]
    lines += [f"WARNING   {w}" for w in report["warnings"]]
    for r in report["runtimes"]:
        lines.append("")
        lines.append(f"{r['runtime']} {r.get('version') or ''}".rstrip())
        if "native" not in r:
            lines.append(f"  {_line(r)}")
            continue
        lines.append(f"  on its own      {_line(r['native'])}")
        lines.append(f"  with ropepatch  {_line(r['with_ropepatch'])}")
        for note in r["native"].get("notes", []):
            lines.append(f"  note            {note}")
        lines.append(f"  => {r['summary']}")
    if "exit_status" in report:
        lines += ["", f"result    {_verdict_line(report)}"]
    return "\n".join(lines)


def _verdict_line(report: dict[str, Any]) -> str:
    found = report["mismatches"]
    status = report["exit_status"]
    if found["with_ropepatch"]:
        return f"with ropepatch, {', '.join(found['with_ropepatch'])} does not match the reference (exit {status})"
    text = "every installed runtime matches the reference with ropepatch"
    if found["native"]:
        text += f"; on its own {', '.join(found['native'])} does not"
    return f"{text} (exit {status})"


def exit_status(report: dict[str, Any], *, fail_on_native: bool = False) -> int:
    """The doctor's exit status for a report (see the command's help for the codes)."""
    from ropepatch.doctor.diagnose import mismatches

    found = mismatches(report)
    if found["with_ropepatch"]:
        return EXIT_MISMATCH
    if fail_on_native and found["native"]:
        return EXIT_NATIVE
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    import ropepatch
    from ropepatch.doctor.diagnose import diagnose, mismatches

    if ropepatch.is_enabled():  # a start-up hook enabled it: the runtimes' own behaviour cannot be seen
        print(
            "ropepatch: error: ropepatch is already enabled in this process (a start-up hook or `ropepatch run`); "
            "run the doctor without them, e.g. with ROPEPATCH_AUTOENABLE unset",
            file=sys.stderr,
        )
        return EXIT_USAGE
    report = diagnose(args.source, seq_len=args.seq_len, use_env=not args.no_env, **overrides_from_args(args))
    report["mismatches"] = mismatches(report)
    report["exit_status"] = exit_status(report, fail_on_native=args.fail_on_native)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return int(report["exit_status"])
