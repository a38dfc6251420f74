"""``ropepatch fix SOURCE --out DEST [OVERRIDES]``: a copy that runtimes read correctly without ropepatch."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ropepatch.cli.overrides_args import add_override_args, overrides_from_args

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "fix",
        help="write a copy of a checkpoint whose metadata states its RoPE scaling natively",
        description=(
            "Resolve SOURCE's RoPE spec (the overrides beat $ROPEPATCH, the known-checkpoint table and the "
            "metadata) and write a copy that states it in the runtime's own keys: a GGUF gets llama.cpp's "
            "{arch}.rope.* keys (tensors copied byte for byte), a checkpoint folder or config.json gets "
            "transformers' rope_scaling/rope_parameters. A spec the format cannot state is refused and "
            "nothing is written."
        ),
        epilog="example: ropepatch fix model.gguf --out model-yarn.gguf --method yarn --factor 4 --original 32768",
    )
    p.add_argument("source", help="a .gguf file, a checkpoint folder or a config.json")
    p.add_argument("--out", help="where to write the fixed copy (must not exist yet)")
    p.add_argument(
        "--in-place", action="store_true", help="overwrite SOURCE instead (written to a temporary file first)"
    )
    p.add_argument("--no-env", action="store_true", help="ignore $ROPEPATCH")
    add_override_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ropepatch.detection import detect
    from ropepatch.fix import fix

    if args.out and args.in_place:
        print("ropepatch: error: give either --out or --in-place, not both", file=sys.stderr)
        return 2
    spec = detect(args.source, use_env=not args.no_env, emit_warnings=False, **overrides_from_args(args))
    out = fix(args.source, args.out, spec, in_place=args.in_place)
    print(f"ropepatch: wrote {out}: {spec.summary()}", file=sys.stderr)
    return 0
