"""Checkpoints whose metadata is missing or wrong, matched by ``_name_or_path`` or repo id.

Each entry says what the checkpoint really used and where that is documented. The table only
speaks when the metadata is silent (or known to be wrong); explicit and environment overrides
still win over it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ropepatch.errors import RopeConfigError
from ropepatch.hookspecs import hookimpl
from ropepatch.metadata.view import ConfigView, Finding

__all__ = ["KNOWN", "KnownCheckpoint", "match_known"]


@dataclass(frozen=True)
class KnownCheckpoint:
    pattern: str  # regex searched (case-insensitively) in each name
    why: str
    build: Callable[[ConfigView, re.Match[str]], Finding | None]


def _label(entry: KnownCheckpoint, name: str) -> str:
    return f"known checkpoint table ({name}: {entry.why})"


def _declares_scaling(view: ConfigView) -> bool:
    """True when the metadata itself names a scaling (transformers 5 fills a plain rope dict everywhere)."""
    from ropepatch.detectors.common import rope_dict

    try:
        rd, _, _ = rope_dict(view)
    except RopeConfigError:  # malformed dicts are the rope_scaling detector's to report
        return True
    if not rd:
        return False
    kind = rd.get("rope_type") or rd.get("type")
    return kind not in (None, "default") or rd.get("factor") is not None


def _superhot(view: ConfigView, m: re.Match[str]) -> Finding | None:
    if _declares_scaling(view):
        return None  # the config already says it; metadata is right
    n, k = (m.group("n"), m.group("k")) if m.group("n") else (m.group("n2"), m.group("k2"))
    if len(n) > 7 or not n.isascii():
        return None  # no checkpoint was ever named for a context of more than 7 digits (or in other digits)
    target = int(n) * (1024 if k else 1)
    name = m.string.lower()
    original = 4096 if re.search(r"llama-?2|\bl2\b|-l2-|llama2", name) else 2048
    if target <= original:
        return None
    f = Finding("linear", detector="known")
    f.set("factor", target / original, "")
    f.set("original_max_position_embeddings", original, "")
    f.notes.append(
        f"SuperHOT/PI-era checkpoint: the x{target // original} interpolation lived in a monkeypatch, "
        "not in config.json"
    )
    return f


def _falconlite(view: ConfigView, m: re.Match[str]) -> Finding | None:
    f = Finding("dynamic-ntk-unclamped", detector="known")
    f.set("original_max_position_embeddings", 2048, "")
    f.notes.append(
        "FalconLite ran a patched TGI 0.9.2 layers.py: unclamped dynamic NTK b*(L/2048)^(d/(d-2)); "
        "its launch script also set DNTK_ALPHA_SCALER=0.25 (pass alpha_scaler=0.25 to reproduce that server)"
    )
    return f


def _falconlite2(view: ConfigView, m: re.Match[str]) -> Finding | None:
    if view.get("rope_theta") is not None:
        return None  # the config carries the fine-tuned base
    f = Finding("default", detector="known")
    f.set("rope_theta", 1_000_000.0, "")
    f.notes.append("FalconLite2 was fine-tuned with rope_theta=1e6, hard-coded in its patched TGI 1.0.3")
    return f


def _alfred(view: ConfigView, m: re.Match[str]) -> Finding | None:
    if _declares_scaling(view):
        return None
    f = Finding("ntk-yarn", detector="known")
    f.set("factor", 4.0, "")
    f.set("original_max_position_embeddings", 2048, "")
    f.warnings.append(
        "alfred-40b-1023 is custom code: NTK-YaRN (s=4, 2048 -> 8192) is taken from its model card; how the "
        "checkpoint itself encodes it is unverified. Check the output, or override with ROPEPATCH=..."
    )
    return f


KNOWN: tuple[KnownCheckpoint, ...] = (
    KnownCheckpoint(
        r"superhot-(?P<n>\d+)(?P<k>k)|[-_]pi-(?P<n2>\d+)(?P<k2>k?)\b",
        "SuperHOT / PI linear interpolation named in the repo id",
        _superhot,
    ),
    KnownCheckpoint(r"(^|/)falconlite$", "amazon/FalconLite: dynamic NTK in a patched TGI", _falconlite),
    KnownCheckpoint(r"(^|/)falconlite2$", "amazon/FalconLite2: rope_theta 1e6 in a patched TGI", _falconlite2),
    KnownCheckpoint(r"alfred-40b-1023", "lightonai/alfred-40b-1023: NTK-YaRN per model card", _alfred),
)


def match_known(view: ConfigView) -> tuple[KnownCheckpoint, str, Finding] | None:
    """The first table entry that matches one of the view's names and applies to its metadata."""
    for name in view.names:
        for entry in KNOWN:
            m = re.search(entry.pattern, name, re.I)
            finding = entry.build(view, m) if m else None
            if finding is not None:
                label = _label(entry, name)
                for key in list(finding.values):
                    finding.provenance[key] = label
                finding.provenance["method"] = label
                return entry, name, finding
    return None


@hookimpl(tryfirst=True)
def detect_rope(view: ConfigView) -> Finding | None:
    hit = match_known(view)
    return hit[2] if hit else None
