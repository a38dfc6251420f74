#!/usr/bin/env bash
# TGI compat run on CPU: TGI's own layers/rotary.py from a source checkout, natively and under ropepatch.
# Usage: bash compat/tgi/run.sh TGI_CHECKOUT [OUT.json]
#   TGI_CHECKOUT: a text-generation-inference source tree, checked out OUTSIDE this repository, e.g.
#     git clone https://github.com/huggingface/text-generation-inference /tmp/tgi && git -C /tmp/tgi checkout v3.3.7
# Needs torch (the system CPU build) and loguru (TGI's logger), installed here into a small venv.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CHECKOUT="${1:?usage: compat/tgi/run.sh TGI_CHECKOUT [OUT.json]}"
OUT="${2:-/tmp/ropepatch-tgi-compat.json}"
VENV="${TGI_VENV:-$ROOT/compat/.venvs/tgi}"
if [ ! -x "$VENV/bin/python" ]; then
  python -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install -q loguru
fi
PYTHONPATH="$ROOT" "$VENV/bin/python" "$ROOT/compat/tgi/check_tgi.py" "$CHECKOUT" --json "$OUT"
