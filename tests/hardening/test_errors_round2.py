"""Errors name a real key (or none, with the reason), sources get a label, and absurd numbers are refused.

- ``RopeConfigError.key`` is a key of the file, dict or override that holds the bad value; never a
  provenance string (``dict:rope_theta``) or a description (``env ROPEPATCH``). A value no single
  key holds (derived from two keys) gives ``key=None`` and the message says where it came from.
- A dict or config object has no path; its errors name it ``<dict>`` / ``<LlamaConfig>``.
- Contexts beyond 2**31 tokens and factors beyond 65536 are refused (``ropepatch.spec``'s
  ``MAX_CONTEXT`` / ``MAX_FACTOR`` say why), whether they come from metadata or an override.
- ``ROPEPATCH`` numbers are ASCII digits only: Python's int()/float() read '٤' and '４' as 4.
- A runtime whose version string does not parse is installed, with an unparsable version.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hardening_kit as kit
import pytest

from ropepatch import RopeConfigError, RopeSpec, detect
from ropepatch.overrides import parse_overrides
from ropepatch.spec import MAX_CONTEXT, MAX_FACTOR
from ropepatch.versions import installed_version, installed_version_text, version_problem

ROOT = Path(__file__).resolve().parents[2]
LLAMA = {"model_type": "llama", "hidden_size": 512, "num_attention_heads": 8, "max_position_embeddings": 4096}


def _error(fn, *, target="errors-round2"):
    with pytest.raises(RopeConfigError) as info:
        fn()
    exc = info.value
    kit.check_error(exc, None)
    kit.record(target, "error", kit._reason(exc))
    return exc


def test_dict_errors_name_the_key_and_a_source_label():
    exc = _error(lambda: detect({**LLAMA, "rope_theta": 1.0, "rope_scaling": {"rope_type": "yarn", "factor": 4}}))
    assert (exc.path, exc.key) == ("<dict>", "rope_theta")
    assert str(exc).startswith("<dict>: key 'rope_theta': yarn needs rope_theta != 1")
    exc = _error(lambda: detect({**LLAMA, "rope_scaling": {"rope_type": "yarn", "factor": "4x"}}))
    assert (exc.path, exc.key) == ("<dict>", "rope_scaling.factor")
    exc = _error(lambda: detect({**LLAMA, "num_attention_heads": 7}))
    assert (exc.path, exc.key) == ("<dict>", "num_attention_heads")


def test_a_transformers_config_is_named_by_its_class():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=2, rope_theta=1.0)
    cfg.rope_parameters = {
        "rope_type": "yarn",
        "factor": 4.0,
        "rope_theta": 1.0,
        "original_max_position_embeddings": 64,
    }
    exc = _error(lambda: detect(cfg))
    assert exc.path == "<LlamaConfig>" and exc.key == "rope_parameters.rope_theta", str(exc)


def test_a_value_no_single_key_holds_gives_no_key_and_says_where_it_came_from():
    # rotary_dim = hidden_size / heads * partial_rotary_factor = 1: odd, and no one key to blame
    cfg = {**LLAMA, "hidden_size": 64, "num_attention_heads": 2, "partial_rotary_factor": 1 / 32}
    exc = _error(lambda: detect(cfg))
    assert exc.key is None
    assert "rotary_dim came from dict:hidden_size / dict:num_attention_heads * dict:partial_rotary_factor" in str(exc)


def test_an_overridden_value_is_blamed_on_the_override_by_its_key(monkeypatch):
    exc = _error(lambda: detect(LLAMA, use_env=False, method="yarn", factor=4, rope_theta=1))
    assert (exc.path, exc.key) == ("explicit", "rope_theta"), str(exc)
    monkeypatch.setenv("ROPEPATCH", "yarn:factor=4,rope_theta=1")
    exc = _error(lambda: detect(LLAMA))
    assert (exc.path, exc.key) == ("env ROPEPATCH", "rope_theta"), str(exc)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"target_context": 1e300}, "target_context"),
        ({"target_context": 10**300}, "target_context"),
        ({"target_context": MAX_CONTEXT + 1}, "target_context"),
        (
            {"method": "yarn", "factor": 4, "original_max_position_embeddings": 1e300},
            "original_max_position_embeddings",
        ),
        ({"method": "yarn", "factor": 1e300}, "factor"),
        ({"method": "linear", "factor": MAX_FACTOR * 2}, "factor"),
    ],
)
def test_absurd_override_contexts_and_factors_are_refused(overrides, key):
    exc = _error(lambda: detect(LLAMA, use_env=False, **overrides), target="bounds-override")
    assert (exc.path, exc.key) == ("explicit", key) and "beyond any real model" in str(exc)


@pytest.mark.parametrize(
    ("rope", "key"),
    [
        (
            {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 1e300},
            "original_max_position_embeddings",
        ),
        ({"rope_type": "yarn", "factor": 1e300, "original_max_position_embeddings": 4096}, "rope_scaling.factor"),
        ({"rope_type": "dynamic", "factor": 2.0**63}, "rope_scaling.factor"),
        ({"rope_type": "linear", "factor": 70000.0}, "rope_scaling.factor"),
        # each value fine on its own, the product (the effective context) is not
        ({"rope_type": "yarn", "factor": 60000.0, "original_max_position_embeddings": 2**20}, "rope_scaling.factor"),
    ],
)
def test_absurd_metadata_contexts_and_factors_are_refused(rope, key):
    exc = _error(lambda: detect({**LLAMA, "rope_scaling": rope}), target="bounds-metadata")
    assert exc.path == "<dict>" and key in (exc.key or ""), str(exc)
    assert "beyond any real model" in str(exc)


def test_the_bounds_themselves_are_accepted():
    # 65536 x 32768 = 2**31 tokens: the largest factor and context a spec takes, both at once
    spec = RopeSpec("yarn", rotary_dim=64, factor=MAX_FACTOR, original_max_position_embeddings=32768)
    assert spec.effective_context == MAX_CONTEXT == 2**31
    spec = detect(LLAMA, use_env=False, target_context=int(MAX_FACTOR) * 4096)  # the largest factor over 4096
    assert spec.effective_context == 2**28 and spec.effective_factor == MAX_FACTOR
    kit.record("bounds-metadata", "spec")


@pytest.mark.parametrize(
    "digit", ["\u0664", "\uff14", "\U0001d7d2", "\u09ea"]
)  # Arabic-Indic, fullwidth, bold, Bengali 4
def test_rope_patch_numbers_are_ascii_digits_only(digit, monkeypatch):
    assert int(digit) == 4  # what Python alone would have done with it
    for text in (f"yarn:factor={digit},original_max_position_embeddings=4096", f"target_context=1{digit}000"):
        exc = _error(lambda text=text: parse_overrides(text), target="ropepatch-ascii-digits")
        assert "ASCII digits" in str(exc) and exc.path == "env ROPEPATCH" and exc.key in ("factor", "target_context")
    monkeypatch.setenv("ROPEPATCH", f"linear:factor={digit}")
    exc = _error(lambda: detect(LLAMA), target="ropepatch-ascii-digits")
    assert "ASCII digits" in str(exc)
    # and a number written as text in a config, where float() would read it as well
    exc = _error(lambda: detect({**LLAMA, "rope_scaling": {"rope_type": "linear", "factor": digit}}, use_env=False))
    assert exc.key == "rope_scaling.factor" and "ASCII digits" in str(exc)


def _fake_distribution(folder: Path, name: str, version: str) -> None:
    info = folder / f"{name}-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_an_unparsable_runtime_version_is_installed_not_missing(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "ropepatch_fake_runtime", "main-abc123")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert installed_version_text("ropepatch_fake_runtime") == "main-abc123"
    assert installed_version("ropepatch_fake_runtime") is None
    problem = version_problem("ropepatch_fake_runtime>=1.0")
    assert problem is not None and "'main-abc123' is installed" in problem and "does not parse" in problem
    assert (
        version_problem("ropepatch_not_installed_anywhere>=1.0") == "ropepatch_not_installed_anywhere is not installed"
    )
    # what `ropepatch plugins` prints for a real adapter's runtime with such a version (exllamav2 is not
    # installed here: a distribution record that says it is, with a local build's version, stands in)
    site = tmp_path / "site"
    _fake_distribution(site, "exllamav2", "0.3.1+git-local_build/x")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROPEPATCH")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(site)])
    out = subprocess.run(
        [sys.executable, "-m", "ropepatch", "plugins"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.strip().startswith("exllamav2:"))
    assert "'0.3.1+git-local_build/x' (unparsable version)" in line and "not installed" not in line, line
    assert "does not parse" in line
