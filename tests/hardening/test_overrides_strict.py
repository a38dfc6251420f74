"""ROPEPATCH, keyword and launcher overrides are parsed strictly: a typo is a RopeConfigError that
names the key and the closest valid one, raised when the overrides are read (``enable()``, the CLI,
``detect()``), before any model loads. Hostile override text ends in overrides or a RopeConfigError,
never another exception, and what ``to_env`` writes parses back to the same override.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import hardening_kit as kit
import hardening_strategies as hs
import pytest
from hypothesis import assume, given

from ropepatch import RopeConfigError, detect
from ropepatch.cli.main import main as cli_main
from ropepatch.overrides import Override, env_overrides, override_from_mapping, parse_overrides

MANIFEST = json.loads((kit.CORPUS / "MANIFEST.json").read_text(encoding="utf-8"))
REPO = Path(__file__).resolve().parents[2]
LLAMA = {"model_type": "llama", "head_dim": 128, "max_position_embeddings": 4096}


def _roundtrip(overrides: list[Override]) -> list[Override]:
    for o in overrides:
        assert isinstance(o, Override)
        if o.is_empty():
            continue
        again = parse_overrides(o.to_env(), origin=o.origin)
        assert again == [o], (o.to_env(), again)
    return overrides


@kit.fuzz_settings(700)
@given(text=hs.override_text())
def test_override_text_parses_or_names_the_key(text: str) -> None:
    kit.outcome_of("overrides-text", lambda: _roundtrip(parse_overrides(text)), payload=text.encode("utf-8", "replace"))


@kit.fuzz_settings(400)
@given(mapping=hs.override_mappings())
def test_override_mappings_parse_or_name_the_key(mapping: dict[str, Any]) -> None:
    kit.outcome_of(
        "overrides-mapping",
        lambda: _roundtrip([override_from_mapping(mapping, "explicit")]),
        payload=repr(mapping).encode("utf-8", "replace"),
    )


@kit.fuzz_settings(300)
@given(text=hs.override_text(), cfg=hs.config_dicts())
def test_env_overrides_over_any_config(text: str, cfg: dict[str, Any]) -> None:
    assume("\0" not in text)  # an environment variable cannot hold a NUL byte

    def run() -> Any:
        old = os.environ.get("ROPEPATCH")
        os.environ["ROPEPATCH"] = text
        try:
            return detect(cfg, emit_warnings=False)
        finally:
            if old is None:
                os.environ.pop("ROPEPATCH", None)
            else:
                os.environ["ROPEPATCH"] = old

    kit.outcome_of("overrides-detect", run, payload=text.encode("utf-8", "replace"))


# -- typos: an error with the closest valid key -------------------------------------------
@pytest.mark.parametrize(
    ("text", "key", "suggestion"),
    [
        ("yarn:facter=4", "facter", "factor"),
        ("yarn:factor=4,orignal=4096", "orignal", "original"),
        ("yarn:factor=4,beta_fsat=16", "beta_fsat", "beta_fast"),
        ("target-context=131072", "target-context", "target_context"),
        ("longrope:short_factr=[1.0,1.0]", "short_factr", "short_factor"),
        ("Qwen/*@yarn:factor=4,truncat=false", "truncat", "truncate"),
    ],
)
def test_typo_in_a_key_names_the_closest_valid_key(text: str, key: str, suggestion: str) -> None:
    with pytest.raises(RopeConfigError) as info:
        parse_overrides(text)
    assert info.value.key == key
    assert f"did you mean {suggestion!r}" in str(info.value)
    assert info.value.path == "env ROPEPATCH"


@pytest.mark.parametrize(("method", "suggestion"), [("yarm", "yarn"), ("lineer", "linear"), ("longrop", "longrope")])
def test_typo_in_a_method_names_the_closest_method(method: str, suggestion: str) -> None:
    with pytest.raises(RopeConfigError, match=f"did you mean {suggestion!r}") as info:
        parse_overrides(f"{method}:factor=4")
    assert info.value.key == "method"


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("yarn:factor=four", "factor", "finite positive number"),
        ("yarn:factor=-2", "factor", "finite positive number"),
        ("yarn:factor=nan", "factor", "finite positive number"),
        ("yarn:factor=1e400", "factor", "finite positive number"),
        ("yarn:factor=" + "9" * 5000, "factor", "finite positive number"),
        ("yarn:original=4096.5", "original", "whole number"),
        ("target_context=0", "target_context", "finite positive number"),
        ("target_context=nan", "target_context", "finite positive number"),
        ("yarn:truncate=maybe", "truncate", "true or false"),
        ("yarn:beta_fast=fast", "beta_fast", "expected a number"),
        ("longrope:short_factor=[1.0,two]", "short_factor", "malformed list"),
        ("longrope:short_factor=[1.0,-2.0]", "short_factor", "must be positive"),
        ("longrope:short_factor=[" * 3000, "short_factor", "malformed list"),
        ("longrope:short_factor=[" + "9" * 5000 + "]", "short_factor", "malformed list"),
        ("yarn:factor=4,factor=8", "factor", "given twice"),
        ("yarn:scale=4,factor=8", "factor", "set twice"),
        ("yarn:method=linear", "method", "method given twice"),
        ("yarn:factor", "factor", "expected key=value"),
    ],
)
def test_bad_values_fail_at_parse_time(text: str, key: str, message: str) -> None:
    with pytest.raises(RopeConfigError, match=message) as info:
        parse_overrides(text)
    assert info.value.key == key, str(info.value)


def test_lists_and_patterns_parse_and_round_trip() -> None:
    (o,) = parse_overrides("Phi-3*@longrope:short_factor=[1.0, 1.5],long_factor=[2,3],attention_factor=1.19")
    assert o.pattern == "Phi-3*" and o.method == "longrope"
    assert o.params == {"short_factor": [1.0, 1.5], "long_factor": [2.0, 3.0], "attention_factor": 1.19}
    assert parse_overrides(o.to_env()) == [o]
    a, b = parse_overrides("Qwen/*@yarn:factor=4,original=32768; *llama*@target_context=65536")
    assert (a.pattern, a.values) == ("Qwen/*", {"factor": 4.0, "original_max_position_embeddings": 32768})
    assert (b.pattern, b.target_context) == ("*llama*", 65536)


def test_keyword_and_per_model_typos_fail_in_detect() -> None:
    with pytest.raises(RopeConfigError, match="did you mean 'factor'"):
        detect(LLAMA, use_env=False, method="yarn", facter=4)
    with pytest.raises(RopeConfigError, match="did you mean 'original'"):
        detect(LLAMA, use_env=False, per_model={"*": {"method": "yarn", "orignal": 4096}})
    with pytest.raises(RopeConfigError, match="mapping"):
        detect(LLAMA, use_env=False, per_model={"*": 4})
    with pytest.raises(RopeConfigError, match="unknown override key"):
        override_from_mapping({1: 2}, "explicit")  # type: ignore[dict-item]


def test_bad_env_fails_in_detect_even_when_metadata_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROPEPATCH", "yarn:facter=4")
    with pytest.raises(RopeConfigError, match="did you mean 'factor'") as info:
        detect(LLAMA)
    assert info.value.path == "env ROPEPATCH"
    assert detect(LLAMA, use_env=False).method == "default"
    assert env_overrides({"ROPEPATCH": "  "}) == []


def test_an_override_method_replaces_an_unknown_metadata_method(monkeypatch: pytest.MonkeyPatch) -> None:
    # found by the thorough fuzz run: ROPEPATCH=linear over rope_type 'yarm' raised the metadata's
    # unknown-method error (naming no key) instead of letting the user's method win
    cfg = {**LLAMA, "rope_scaling": {"rope_type": "yarm", "factor": 2}}
    monkeypatch.setenv("ROPEPATCH", "linear")
    spec = detect(cfg, emit_warnings=False)
    assert (spec.method, spec.factor, spec.provenance["method"]) == ("linear", 2.0, "env ROPEPATCH")
    monkeypatch.setenv("ROPEPATCH", "target_context=16384")  # no method named: the metadata's must be known
    with pytest.raises(RopeConfigError, match="did you mean 'yarn'") as info:
        detect(cfg)
    assert (info.value.path, info.value.key) == ("<dict>", "rope_scaling.rope_type")


def test_enable_rejects_a_typo_before_any_runtime_is_imported() -> None:
    # a fresh interpreter: enable() must raise before it imports torch or transformers
    code = (
        "import sys, ropepatch\n"
        "try:\n"
        "    ropepatch.enable()\n"
        "except ropepatch.RopeConfigError as exc:\n"
        "    print('ERR', exc.key, exc)\n"
        "print('TORCH', 'torch' in sys.modules, 'transformers' in sys.modules)\n"
        "print('ENABLED', ropepatch.is_enabled())\n"
    )
    env = {**os.environ, "ROPEPATCH": "yarn:factor=4,orignal_max_position_embeddings=4096", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert lines["ERR"].startswith("orignal_max_position_embeddings ")
    assert "did you mean 'original_max_position_embeddings'" in lines["ERR"]
    assert lines["TORCH"] == "False False"
    assert lines["ENABLED"] == "False"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "facter=2"], "did you mean 'factor'"),
        (["--method", "yarm"], "did you mean 'yarn'"),
        (["--set", "short_factor=[1.0,"], "malformed list"),
        (["--set", "noequals"], "--set expects KEY=VALUE"),
    ],
)
def test_cli_flags_are_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    assert cli_main(["inspect", str(tmp_path), "--no-env", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ropepatch: error:") and message in err and "Traceback" not in err


def test_parse_overrides_rejects_non_text() -> None:
    for bad in (None, 4, b"yarn:factor=4", ["yarn"]):
        with pytest.raises(RopeConfigError, match="must be text"):
            parse_overrides(bad)  # type: ignore[arg-type]


def test_to_env_refuses_a_pattern_it_cannot_write() -> None:
    o = override_from_mapping({"factor": 2}, "per-model mapping", pattern="a@b")
    with pytest.raises(RopeConfigError, match="cannot be written"):
        o.to_env()


# -- regression corpus ---------------------------------------------------------------------
OVERRIDE_CASES = sorted((kit.CORPUS / "overrides").glob("*.txt"))


@pytest.mark.parametrize("path", OVERRIDE_CASES, ids=[p.stem for p in OVERRIDE_CASES])
def test_override_corpus_replays(path: Path) -> None:
    entry = MANIFEST[f"overrides/{path.name}"]
    text = path.read_text(encoding="utf-8")
    result = kit.outcome_of("corpus-overrides", lambda: _roundtrip(parse_overrides(text)))
    if entry["expect"] == "error":
        assert result is None, entry["bug"]
        with pytest.raises(RopeConfigError) as info:
            parse_overrides(text)
        assert entry["key"] in (info.value.key or ""), (entry, str(info.value))
    else:
        assert result is not None, entry["bug"]
