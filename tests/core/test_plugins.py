"""The registry: built-ins load like plugins, third-party plugins come from entry points, a broken
plugin is isolated, and autoloading can be switched off. The example plugin is installed for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ropepatch.registry import BUILTIN_PLUGINS, Registry

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "plugins" / "ropepatch-vllm-ntk"


def test_builtins_are_registered_as_plugins():
    reg = Registry()
    reg.load()
    assert set(BUILTIN_PLUGINS) <= set(reg.plugins)
    assert all(reg.plugins[name].builtin for name in BUILTIN_PLUGINS)
    assert {"default", "yarn", "part-ntk", "longrope"} <= set(reg.methods)
    assert reg.method("SU").name == "longrope" and reg.method("dynamic_ntk").name == "dynamic"


def test_runtime_registration_and_unregistration():
    from ropepatch.hookspecs import hookimpl
    from ropepatch.methods.base import Method

    class Half(Method):
        name = "half-base"
        formula = "b' = b/2"

        def compute(self, spec, prepared, seq_len):
            return [(spec.rope_theta / 2) ** (-(2 * i) / spec.rotary_dim) for i in range(spec.rotary_dim // 2)], 1.0

    class Plugin:
        @hookimpl
        def register_methods(self, register):
            register(Half())

    reg = Registry()
    reg.load()
    reg.register_plugin(Plugin(), name="half")
    assert reg.method("half_base").name == "half-base"
    reg.unregister_plugin("half")
    assert "half-base" not in reg.methods


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example plugin and a plugin that raises at import, pip-installed into a target folder."""
    target = tmp_path_factory.mktemp("site")
    broken = tmp_path_factory.mktemp("broken")
    (broken / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "ropepatch-broken-example"
        version = "9.9"
        [project.entry-points.ropepatch]
        broken = "ropepatch_broken_example"
    """)
    )
    (broken / "ropepatch_broken_example.py").write_text("raise RuntimeError('this plugin is broken on purpose')\n")
    for src in (EXAMPLE, broken):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "--target",
                str(target),
                str(src),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    return target


def _cli(target: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)]), **env}
    environ.pop("ROPEPATCH", None)
    return subprocess.run([sys.executable, "-m", "ropepatch", *args], capture_output=True, text=True, env=environ)


def test_example_plugin_end_to_end(installed, tmp_path):
    methods = _cli(installed, "methods", "--json")
    assert methods.returncode == 0, methods.stderr
    names = {m["name"] for m in json.loads(methods.stdout)}
    assert "vllm-ntk" in names

    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 256,
                "num_attention_heads": 2,
                "rope_scaling": {"type": "ntk_mixed", "factor": 4.0},
            }
        )
    )
    out = _cli(installed, "inspect", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["method"] == "vllm-ntk"
    # vLLM's formula, independently: inv_freq = (b*s)^(-2i/d) / s^(2/d), d = 128, i = 63
    d, s = 128, 4.0
    assert report["params"]["inv_freq_last"] == pytest.approx((1e4 * s) ** (-(2 * 63) / d) / s ** (2 / d), rel=1e-12)

    plugins = json.loads(_cli(installed, "plugins", "--json").stdout)["plugins"]
    by_name = {p["name"]: p for p in plugins}
    assert by_name["vllm-ntk"]["version"] == "0.1.0" and by_name["vllm-ntk"]["hooks"] == ["register_methods"]
    assert "broken on purpose" in by_name["broken"]["error"]  # isolated, shown with its error


def test_autoload_can_be_disabled_and_plugins_blocked(installed):
    off = _cli(installed, "methods", "--json", ROPEPATCH_DISABLE_PLUGIN_AUTOLOAD="1")
    assert "vllm-ntk" not in {m["name"] for m in json.loads(off.stdout)}
    blocked = _cli(installed, "plugins", "--json", ROPEPATCH_DISABLED_PLUGINS="broken")
    assert "broken" not in {p["name"] for p in json.loads(blocked.stdout)["plugins"]}
