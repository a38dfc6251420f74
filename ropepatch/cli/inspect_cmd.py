"""``ropepatch inspect SOURCE``: what scaling a checkpoint uses, where each value came from."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ropepatch.cli.overrides_args import add_override_args, overrides_from_args

__all__ = ["add_parser", "inspect_report", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "inspect",
        help="show the RoPE scaling a checkpoint uses and where each value came from",
        description="Read a checkpoint folder, config.json or GGUF file and show its normalized RoPE spec.",
    )
    p.add_argument("source", help="checkpoint folder, config.json, or .gguf file")
    p.add_argument("--json", action="store_true", help='print {"method", "params", "provenance", "warnings"}')
    p.add_argument("--seq-len", type=int, help="current total length, for dynamic methods")
    p.add_argument("--as", dest="as_", choices=["llama.cpp"], help="print the equivalent flags of another runtime")
    p.add_argument("--no-env", action="store_true", help="ignore $ROPEPATCH")
    add_override_args(p)
    return p


def inspect_report(spec: Any, seq_len: int | None = None) -> dict[str, Any]:
    """The ``--json`` document for ``spec``."""
    inv = spec.compute(seq_len)[0] if spec.rotary_dim else None
    attention = spec.attention_factor(seq_len)
    params: dict[str, Any] = {
        "rope_theta": spec.rope_theta,
        "rotary_dim": spec.rotary_dim,
        "head_dim": spec.head_dim,
        "factor": spec.effective_factor,
        "original_max_position_embeddings": spec.effective_original,
        "max_position_embeddings": spec.max_position_embeddings,
        "effective_context": spec.effective_context,
        "is_dynamic": spec.is_dynamic,
        "attention_factor": attention,
        "softmax_scale": spec.softmax_scale,
    }
    if seq_len is not None:
        params["seq_len"] = seq_len
    if inv:
        params["inv_freq_first"], params["inv_freq_last"] = inv[0], inv[-1]
    for key, value in spec.method_params.items():
        if key in params:  # e.g. yarn's explicit attention_factor: the computed value is shown
            continue
        params[key] = list(value) if isinstance(value, tuple) else value
    return {
        "method": spec.method,
        "params": params,
        "provenance": dict(spec.provenance),
        "warnings": list(spec.warnings),
    }


def run(args: argparse.Namespace) -> int:
    from ropepatch.detection import detect

    spec = detect(args.source, use_env=not args.no_env, emit_warnings=False, **overrides_from_args(args))
    if args.as_ == "llama.cpp":
        from ropepatch.llamacpp import gguf_rope, llamacpp_flags
        from ropepatch.metadata.gguf import is_gguf

        # a GGUF's own architecture names the kv-override key, its own keys change YaRN's arithmetic
        facts = gguf_rope(args.source) if spec.source and is_gguf(spec.source) else None
        flags, note = llamacpp_flags(spec, facts=facts)
        if flags is None:
            print(f"# no llama.cpp equivalent for {spec.method}: {note}")
            return 1
        print(" ".join(flags))
        if note:
            print(f"# {note}")
        return 0
    report = inspect_report(spec, args.seq_len)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=False))
        return 0
    print(_text(spec, report))
    return 0


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.10g}"
    if isinstance(v, list) and len(v) > 6:
        return f"[{', '.join(_fmt(x) for x in v[:3])}, ... {len(v)} values]"
    return str(v)


def _text(spec: Any, report: dict[str, Any]) -> str:
    from ropepatch.registry import get_registry

    method = get_registry().method(spec.method)
    lines = [f"source    {spec.source or '(in memory)'}"]
    if spec.model:
        lines.append(f"model     {spec.model}")
    lines.append(
        f"method    {spec.method}{' (dynamic)' if spec.is_dynamic else ''}  [{spec.provenance.get('method', '')}]"
    )
    lines.append(f"formula   {method.formula}")
    p = report["params"]
    ctx = p["effective_context"]
    orig = p["original_max_position_embeddings"]
    lines.append(
        "context   "
        + (f"{orig} original -> " if orig else "")
        + (f"{ctx} effective" if ctx else ("grows with the input" if spec.is_dynamic else "unknown"))
    )
    if p["attention_factor"] is not None:
        at = f" at seq_len {p['seq_len']}" if "seq_len" in p else ""
        lines.append(
            f"attention cos/sin x {p['attention_factor']:.10g}{at} (logits x {p['attention_factor'] * p['attention_factor']:.10g})"
        )
    if p["softmax_scale"] != 1.0:
        lines.append(f"softmax   scale x {p['softmax_scale']:.10g} over the whole head")
    lines.append("values")
    skip = {"effective_context", "attention_factor", "is_dynamic", "softmax_scale", "seq_len"}
    rows = [(k, v) for k, v in p.items() if k not in skip and v is not None]
    width = max(len(k) for k, _ in rows) if rows else 10
    for key, value in rows:
        where = spec.provenance.get(key, "default" if key in spec.method_params else "")
        lines.append(f"  {key.ljust(width)}  {_fmt(value).ljust(14)}  {where}")
    for note in spec.notes:
        lines.append(f"note      {note}")
    for warning in spec.warnings:
        lines.append(f"WARNING   {warning}")
    return "\n".join(lines)
