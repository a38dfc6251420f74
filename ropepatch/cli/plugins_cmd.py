"""``ropepatch plugins``: loaded plugins (third-party by default, ``--all`` for built-ins) and adapters."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("plugins", help="list plugins, their hooks and errors, and runtime adapters")
    p.add_argument("--all", action="store_true", help="include built-in plugins")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def run(args: argparse.Namespace) -> int:
    from ropepatch.registry import get_registry

    reg = get_registry()
    plugins = [info.to_dict() for info in reg.plugins.values() if args.all or not info.builtin]
    adapters = [a.describe() for a in reg.adapters.values()]
    if args.json:
        print(json.dumps({"plugins": plugins, "adapters": adapters}, indent=2))
        return 0
    print("plugins")
    if not plugins:
        print("  (no third-party plugins; --all shows the built-ins)")
    for p in plugins:
        version = f" {p['version']}" if p["version"] else ""
        state = f"ERROR {p['error']}" if p["error"] else ", ".join(p["hooks"])
        print(f"  {p['name']}{version}{' (built-in)' if p['builtin'] else ''}: {state}")
    print("adapters")
    for a in adapters:
        installed = a["installed"] or "not installed"
        verdict = a["problem"] or ("ok, newer than tested" if a["untested"] else "ok")
        floor = f">= {a['floor']}" if a["floor"] else "any version"
        tested = f", tested up to {a['tested_up_to']}" if a["tested_up_to"] else ""
        print(f"  {a['name']}: {a['distribution']} {installed}; works with {floor}{tested}: {verdict}")
    return 0
