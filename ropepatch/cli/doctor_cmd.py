"""``ropepatch doctor SOURCE``: what each installed runtime computes for a checkpoint, with and without ropepatch."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ropepatch.cli.overrides_args import add_override_args, overrides_from_args

__all__ = ["add_parser", "format_report", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "doctor",
        help="check what each installed runtime computes for a checkpoint's RoPE, alone and with ropepatch",
        description=(
            "Run each installed runtime's own RoPE code for the checkpoint's config (on CPU, no weights) and "
            "compare it with ropepatch's reference spec: does it load, how far inv_freq and the attention "
            "factor are off, and what ropepatch changes."
        ),
    )
    p.add_argument("source", help="checkpoint folder or config.json")
    p.add_argument("--seq-len", type=int, help="total length to probe at (default: the target context)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-env", action="store_true", help="ignore $ROPEPATCH")
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
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ropepatch.doctor.diagnose import diagnose

    report = diagnose(args.source, seq_len=args.seq_len, use_env=not args.no_env, **overrides_from_args(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0
