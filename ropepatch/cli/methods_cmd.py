"""``ropepatch methods``: every registered scaling method with its formula in one line."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("methods", help="list the scaling methods and their formulas")
    p.add_argument("--json", action="store_true", help="machine-readable list")
    return p


def run(args: argparse.Namespace) -> int:
    from ropepatch.registry import get_registry

    rows = []
    for m in get_registry().iter_methods():
        rows.append(
            {
                "name": m.name,
                "aliases": list(m.aliases),
                "dynamic": m.dynamic,
                "parameters": [p.name for p in m.params],
                "formula": m.formula,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        kind = "dynamic" if r["dynamic"] else "static "
        aliases = f"  (aliases: {', '.join(r['aliases'])})" if r["aliases"] else ""
        print(f"{r['name'].ljust(width)}  {kind}  {r['formula']}{aliases}")
    return 0
