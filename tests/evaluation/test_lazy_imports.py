"""The eval and doctor code imports neither torch, transformers nor the optional eval extras until used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_modules_and_cli_parser_import_light():
    code = (
        "import sys\n"
        "import ropepatch.evaluation.perplexity, ropepatch.evaluation.passkey, ropepatch.evaluation.runner\n"
        "import ropepatch.evaluation.report, ropepatch.evaluation.endpoints, ropepatch.evaluation.variants\n"
        "import ropepatch.doctor.diagnose, ropepatch.adapters.transformers.probe, ropepatch.adapters.exllama.probes\n"
        "from ropepatch.cli.main import build_parser\n"
        "build_parser().parse_args(['eval', 'x'])\n"
        "build_parser().parse_args(['doctor', 'x'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'matplotlib', 'tqdm', 'text_generation') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
