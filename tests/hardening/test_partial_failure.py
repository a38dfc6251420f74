"""One adapter failing to patch leaves its runtime exactly as it was; the others still patch.

The failure is real: transformers' own module loses an attribute the adapter needs (as an
unexpected version would), in a fresh interpreter so nothing else is disturbed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "ROPEPATCH_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env.pop("ROPEPATCH", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)


PRELUDE = """
    import sys, types, warnings
    import transformers.modeling_rope_utils as ru, transformers.modeling_utils as mu
    import transformers.configuration_utils as cu, transformers.dynamic_module_utils as dmu
    import ropepatch
    from ropepatch.registry import get_registry
    from ropepatch.adapters.base import Adapter
    from ropepatch.hookspecs import hookimpl

    # a second, healthy adapter: patches a real module of its own
    target = types.ModuleType("toy_runtime"); target.build = lambda: "original"
    sys.modules["toy_runtime"] = target
    class Toy(Adapter):
        name, distribution, requires, trigger = "toy", "pluggy", "", "toy_runtime"
        def install(self, patches, state):
            patches.set(target, "build", lambda: "patched")
    class Plugin:
        @hookimpl
        def register_adapters(self, register):
            register(Toy())
    get_registry().register_plugin(Plugin(), name="toy")

    before = dict(ru.ROPE_INIT_FUNCTIONS), mu.PreTrainedModel.__dict__["__init__"], cu.PretrainedConfig.__dict__["to_dict"]
"""


def test_failing_adapter_leaves_runtime_untouched_and_others_patch():
    out = _run(
        PRELUDE
        + """
    del dmu.get_class_in_module            # the adapter's last patch point is gone
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ropepatch.enable()
    after = dict(ru.ROPE_INIT_FUNCTIONS), mu.PreTrainedModel.__dict__["__init__"], cu.PretrainedConfig.__dict__["to_dict"]
    assert after[0] == before[0] and after[1] is before[1] and after[2] is before[2], "half-applied"
    assert target.build() == "patched"     # the other adapter still patched
    failures = [str(w.message) for w in caught if "failed to patch" in str(w.message)]
    assert len(failures) == 1, failures    # reported once
    import transformers
    assert "transformers " + transformers.__version__ in failures[0], failures[0]
    status = ropepatch.runtime.status()
    assert status["installed"] == ["toy"] and "transformers" in status["failures"]
    ropepatch.disable()
    assert target.build() == "original"
    print("OK")
    """
    )
    assert out.returncode == 0 and out.stdout.strip() == "OK", out.stdout + out.stderr


def test_failure_at_a_later_import_undoes_earlier_points():
    out = _run("""
    import sys, warnings
    import ropepatch
    import transformers.modeling_rope_utils as ru, transformers.configuration_utils as cu
    before = dict(ru.ROPE_INIT_FUNCTIONS), cu.PretrainedConfig.__dict__["to_dict"]
    ropepatch.enable()
    assert len(ru.ROPE_INIT_FUNCTIONS) > len(before[0])   # installed at enable time
    # the GGUF loader is imported later, from a version that lacks the patch point
    name = "transformers.modeling_gguf_pytorch_utils"
    from ropepatch.patching import _pending, _fire
    assert name not in sys.modules and name in _pending
    import importlib.util
    spec = importlib.util.find_spec(name)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    getattr(spec.loader, "_loader", spec.loader).exec_module(mod)  # run the module, not yet the hooks
    del mod.load_gguf_checkpoint
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fire(name, mod)
    assert dict(ru.ROPE_INIT_FUNCTIONS) == before[0] and cu.PretrainedConfig.__dict__["to_dict"] is before[1]
    assert sum("failed to patch" in str(w.message) for w in caught) == 1
    print("OK")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "OK", out.stdout + out.stderr
