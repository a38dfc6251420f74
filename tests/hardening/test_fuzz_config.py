"""Hostile config dicts and config.json bytes: every input ends in a correct spec or a RopeConfigError
naming the file and key (see hardening_kit.check_error / check_spec), never anything else.

The regression corpus (``corpus/config/``) holds the minimized inputs that once broke this; each
file is replayed as a config.json and must end as its manifest entry says.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import hardening_kit as kit
import hardening_strategies as hs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ropepatch import RopeConfigError, detect
from ropepatch.spec import RopeSpec

MANIFEST = json.loads((kit.CORPUS / "MANIFEST.json").read_text(encoding="utf-8"))


def _payload(cfg: Any) -> bytes:
    try:
        return json.dumps(cfg, allow_nan=True).encode()
    except (ValueError, TypeError, RecursionError):
        try:
            return repr(cfg).encode("utf-8", "replace")
        except RecursionError:
            return b"<nested too deeply to print>"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config")


@kit.fuzz_settings(900)
@given(cfg=hs.config_dicts())
def test_config_dicts_end_in_spec_or_named_error(cfg: dict[str, Any]) -> None:
    kit.outcome_of(
        "config-dict", lambda: detect(cfg, use_env=False, emit_warnings=False), payload=_payload(cfg), suffix=".json"
    )


@kit.fuzz_settings(600)
@given(data=hs.config_bytes(), as_folder=st.booleans())
def test_config_json_bytes_end_in_spec_or_named_error(workdir: Path, data: bytes, as_folder: bool) -> None:
    folder = workdir / "ckpt"
    folder.mkdir(exist_ok=True)
    path = kit.write_bytes(folder / "config.json", data)
    source = folder if as_folder else path
    kit.outcome_of(
        "config-json",
        lambda: detect(source, use_env=False, emit_warnings=False),
        path=str(path),
        payload=data,
        suffix=".json",
    )


@kit.fuzz_settings(60)
@given(cfg=hs.config_dicts())
def test_warnings_are_emitted_not_raised(cfg: dict[str, Any]) -> None:
    # emit_warnings=True goes through warnings.warn: still only a spec or a RopeConfigError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kit.outcome_of("config-dict", lambda: detect(cfg, use_env=False), payload=_payload(cfg), suffix=".json")


# -- regression corpus ---------------------------------------------------------------------
CONFIG_CASES = sorted((kit.CORPUS / "config").glob("*.json"))


@pytest.mark.parametrize("path", CONFIG_CASES, ids=[p.stem for p in CONFIG_CASES])
def test_config_corpus_replays(path: Path, tmp_path: Path) -> None:
    entry = MANIFEST[f"config/{path.name}"]
    target = kit.write_bytes(tmp_path / "config.json", path.read_bytes())
    spec = kit.outcome_of("corpus-config", lambda: detect(target, use_env=False, emit_warnings=False), path=str(target))
    _expect(entry, spec, target)


def _expect(entry: dict[str, Any], spec: RopeSpec | None, target: Path) -> None:
    if entry["expect"] == "error":
        assert spec is None, f"expected a RopeConfigError ({entry['bug']}), got {spec}"
        with pytest.raises(RopeConfigError) as info:
            detect(target, use_env=False, emit_warnings=False)
        assert entry["key"] in (info.value.key or ""), (entry, str(info.value))
    else:
        assert spec is not None, f"expected a spec ({entry['bug']})"
        assert spec.method == entry["method"], (entry, spec.summary())


# -- Python-level dict inputs a file cannot hold ------------------------------------------
def _cyclic() -> dict[str, Any]:
    cfg: dict[str, Any] = {"head_dim": 64, "rope_scaling": {"type": "linear", "factor": 2.0}}
    cfg["rope_scaling"]["self"] = cfg
    return cfg


def _cyclic_both() -> dict[str, Any]:
    a: dict[str, Any] = {"rope_type": "linear", "factor": 2.0}
    b: dict[str, Any] = {"rope_type": "linear", "factor": 2.0}
    a["x"], b["x"] = a, b  # equal-looking cycles: comparing them recurses forever
    return {"head_dim": 64, "rope_parameters": a, "rope_scaling": b}


def _deep_both() -> dict[str, Any]:
    a: Any = 1
    b: Any = 1
    for _ in range(5000):
        a, b = [a], [b]
    return {"head_dim": 64, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "x": a},
            "rope_scaling": {"rope_type": "linear", "factor": 2.0, "x": b}}  # fmt: skip


class _Weird:
    def __repr__(self) -> str:
        raise RuntimeError("repr of a hostile object")


DICT_CASES = {
    "cyclic-rope-dict": (_cyclic, "linear"),
    "cyclic-legacy-and-v5": (_cyclic_both, "linear"),
    "deep-legacy-and-v5": (_deep_both, "linear"),
    "non-str-rope-key": (lambda: {"head_dim": 64, "rope_scaling": {"type": "linear", "factor": 2.0, 1: 2}}, "linear"),
    "tuple-factor-lists": (
        lambda: {
            "head_dim": 8,
            "original_max_position_embeddings": 16,
            "max_position_embeddings": 64,
            "rope_scaling": {"type": "longrope", "short_factor": (1.0,) * 4, "long_factor": (2.0,) * 4},
        },
        "longrope",
    ),  # fmt: skip
    "set-valued-junk": (
        lambda: {"head_dim": 64, "rope_scaling": {"type": "linear", "factor": 2.0, "j": {1, 2}}},
        "linear",
    ),
    "bytes-method": (lambda: {"head_dim": 64, "rope_scaling": {"type": b"linear", "factor": 2.0}}, None),
    "object-value": (lambda: {"head_dim": 64, "rope_scaling": {"type": "linear", "factor": _Weird()}}, None),
    "nan-junk-param": (
        lambda: {"head_dim": 64, "rope_scaling": {"type": "linear", "factor": 2.0, "j": math.nan}},
        "linear",
    ),
}


@pytest.mark.parametrize("name", sorted(DICT_CASES))
def test_python_level_dicts(name: str) -> None:
    build, method = DICT_CASES[name]
    spec = kit.outcome_of("corpus-dict", lambda: detect(build(), use_env=False, emit_warnings=False))
    if method is None:
        assert spec is None
    else:
        assert spec is not None and spec.method == method


def test_transformers_like_object_with_bad_to_dict() -> None:
    class FakeConfig:
        model_type = "llama"

        def to_dict(self) -> Any:
            return ["not", "a", "dict"]

    with pytest.raises(RopeConfigError):
        detect(FakeConfig(), use_env=False)
