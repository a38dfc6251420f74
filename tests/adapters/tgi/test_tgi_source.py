"""The TGI adapter against TGI's real ``layers/rotary.py``, when a source checkout is available.

TGI's server is not on the package registries; point ``ROPEPATCH_TGI_SOURCE`` at a checkout (made
outside this repository, e.g. ``/tmp/tgi``) to run this. It runs compat/tgi/check_tgi.py, which
imports TGI's rotary module on CPU (package ``__init__`` files bypassed), builds every case with
``PositionRotaryEmbedding.static()`` natively and under ropepatch, and compares ``get_cos_sin()``
with transformers' reference tables.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SOURCE = Path(os.environ.get("ROPEPATCH_TGI_SOURCE", "/tmp/tgi"))


@pytest.mark.skipif(
    not (SOURCE / "server" / "text_generation_server" / "layers" / "rotary.py").is_file(),
    reason=f"no TGI source checkout at {SOURCE} (set ROPEPATCH_TGI_SOURCE; TGI is not on the package registries)",
)
@pytest.mark.skipif(
    importlib.util.find_spec("loguru") is None, reason="TGI's rotary.py imports loguru, not installed here"
)
def test_tgi_rotary_on_cpu(tmp_path):
    out = tmp_path / "tgi.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "compat" / "tgi" / "check_tgi.py"), str(SOURCE), "--json", str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    rows = {(r["case"], r["mode"]): r for r in report["results"]}
    # TGI's own silent bugs, measured on its real code ...
    assert rows[("linear factor 4", "TGI native")]["max_abs_dcos"] > 1.9
    assert rows[("yarn attention_factor 1.5", "TGI native")]["max_abs_dcos"] > 0.3
    assert rows[("yarn beta_fast 16 beta_slow 2", "TGI native")]["max_abs_dcos"] > 2.0
    # ... corrected under ropepatch, for the class and its subclasses, at MAX_TOTAL_TOKENS rows
    for (_case, mode), r in rows.items():
        if mode == "ropepatch":
            assert r["max_abs_dcos"] < 2e-3 and r["subclass_call_keeps_cls"] and r["rows"] == 8192, r
    assert report["table_reused_after_warmup"] and report["restored_after_disable"]
    installed = report["ropepatch_status"]["installed"]  # transformers too: check_tgi.py imports it
    assert "tgi" in installed and "tgi-1x" not in installed, installed
