"""Override flags shared by verbs that read a checkpoint (``inspect``, ``run``, ``doctor``, ``eval``)."""

from __future__ import annotations

import argparse
from typing import Any

from ropepatch.errors import RopeConfigError
from ropepatch.overrides import _parse_value

__all__ = ["add_override_args", "overrides_from_args"]


def add_override_args(p: argparse.ArgumentParser) -> None:
    """Add ``--method``, ``--factor``, ``--alpha``, ``--original``, ``--target-context``, ``--set``."""
    g = p.add_argument_group("overrides (beat $ROPEPATCH, the known-checkpoint table and the metadata)")
    g.add_argument("--method", help="scaling method (see `ropepatch methods`)")
    g.add_argument("--factor", type=float, help="scaling factor s")
    g.add_argument("--alpha", type=float, help="NTK alpha (method ntk)")
    g.add_argument("--original", type=int, dest="original_max_position_embeddings", help="original context L0")
    g.add_argument("--target-context", type=int, help="extend an unscaled checkpoint to N tokens (YaRN by default)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other parameter")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword overrides the flags describe."""
    out: dict[str, Any] = {}
    for key in ("method", "factor", "alpha", "original_max_position_embeddings", "target_context"):
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    for item in getattr(args, "set", []) or []:
        if "=" not in item:
            raise RopeConfigError(f"--set expects KEY=VALUE, got {item!r}")
        k, _, v = item.partition("=")
        out[k.strip()] = _parse_value(v)
    return out
