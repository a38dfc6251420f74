#!/usr/bin/env python3
"""End-to-end check of the ropepatch extension in a real text-generation-webui checkout, on CPU.

    python compat/webui/check_webui.py /path/to/text-generation-webui [--ropepatch-src DIR]

1. A venv inside the checkout (``.venv-ropepatch``, ``--system-site-packages`` so the CPU torch of
   this machine is used and pip never pulls a CUDA build) gets the webui's CPU requirements
   (``requirements/full/requirements_cpu_only.txt``) minus what only a browser UI or a llama.cpp
   server needs and what is hosted outside PyPI (the patched gradio wheel, llama.cpp binaries),
   plus ropepatch from ``--ropepatch-src`` (``pip install --no-deps -e``).
2. The extension folder is linked into ``user_data/extensions/ropepatch``.
3. A tiny Llama checkpoint (random weights, a word-level tokenizer; nothing downloaded) is written to
   ``user_data/models/ropepatch-tiny-pntk``. Its config says 3-way part-NTK the way airophin does it
   (top-level original_max_position_embeddings, no rope_scaling), which transformers on its own
   ignores, so "patched" is visible in the rotary frequencies.
4. ``server.py --nowebui --api --cpu --model ropepatch-tiny-pntk --loader transformers --extensions
   ropepatch`` starts headless on 127.0.0.1; the check waits for the API, then reads
   ``/v1/internal/model/info``, ``/v1/internal/ropepatch`` (added by the extension) and asks for a
   completion. The server's log must show the start-up reload.

Prints one JSON object (webui version, pass/fail per check) and exits 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
MODEL = "ropepatch-tiny-pntk"
# hosted outside PyPI, or only needed by the browser UI / llama.cpp loaders, which a headless CPU
# transformers run does not start
SKIP = re.compile(r"(github\.com|llama[_-]cpp|gradio|flash[_-]attn|^torch\b|^exllama|bitsandbytes|triton)", re.I)


def sh(cmd: list[str], **kw: object) -> None:
    print("+", " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[arg-type]


def webui_version(webui: Path) -> str:
    """The checkout's ``git describe`` (an exported archive has none: pass --version-label)."""
    try:
        out = subprocess.run(["git", "describe", "--tags", "--always"], cwd=webui, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def install(webui: Path, venv: Path, src: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        sh([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    reqs = webui / "requirements" / "full" / "requirements_cpu_only.txt"
    kept = [
        line
        for line in reqs.read_text().splitlines()
        if line.strip() and not line.startswith("#") and not SKIP.search(line)
    ]
    filtered = venv / "requirements-ropepatch.txt"
    filtered.write_text("\n".join(kept) + "\n")
    import torch  # the constraint keeps the machine's CPU torch

    constraints = venv / "constraints-ropepatch.txt"
    constraints.write_text(f"torch=={torch.__version__.split('+')[0]}\n")
    sh([str(python), "-m", "pip", "install", "-q", "-r", str(filtered), "-c", str(constraints)])
    sh([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(src)])
    return python


def write_model(webui: Path, python: Path) -> None:
    folder = webui / "user_data" / "models" / MODEL
    if (folder / "config.json").exists():
        return
    code = f"""
import json, torch
from pathlib import Path
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
out = Path({str(folder)!r}); out.mkdir(parents=True, exist_ok=True)
words = ["<unk>", "<s>", "</s>"] + [f"w{{i}}" for i in range(61)] + ["hello", "world", "the", "a"]
tok = Tokenizer(models.WordLevel({{w: i for i, w in enumerate(words)}}, unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
fast.save_pretrained(out)
cfg = LlamaConfig(vocab_size=len(words), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16384,
                  bos_token_id=1, eos_token_id=2)
torch.manual_seed(0)
LlamaForCausalLM(cfg).save_pretrained(out)
data = json.loads((out / "config.json").read_text())
data["original_max_position_embeddings"] = 4096  # airophin-style 3-way part-NTK, factor 16384/4096
data.pop("rope_scaling", None); data.pop("rope_parameters", None); data["rope_theta"] = 10000.0
(out / "config.json").write_text(json.dumps(data, indent=2))
"""
    sh([str(python), "-c", code])


def get(url: str, body: dict | None = None, timeout: float = 30) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("webui", type=Path)
    ap.add_argument("--ropepatch-src", type=Path, default=REPO)
    ap.add_argument("--venv", type=Path)
    ap.add_argument("--api-port", type=int, default=5057)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--skip-install", action="store_true")
    ap.add_argument("--version-label", help="webui version to report (for a checkout without .git)")
    args = ap.parse_args()
    webui = args.webui.resolve()
    venv = (args.venv or webui / ".venv-ropepatch").resolve()
    result: dict = {"webui": str(webui), "webui_version": args.version_label or webui_version(webui), "checks": {}}
    checks = result["checks"]

    python = venv / "bin" / "python" if args.skip_install else install(webui, venv, args.ropepatch_src.resolve())
    ext = webui / "user_data" / "extensions" / "ropepatch"
    ext.parent.mkdir(parents=True, exist_ok=True)
    if not ext.exists():
        ext.symlink_to(args.ropepatch_src.resolve() / "plugins" / "text-generation-webui" / "ropepatch")
    write_model(webui, python)

    log_path = venv / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "ROPEPATCH"}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", NO_PROXY="127.0.0.1,localhost")
    cmd = [
        str(python),
        "server.py",
        "--nowebui",
        "--api",
        "--api-port",
        str(args.api_port),
        "--cpu",
        "--model",
        MODEL,
        "--loader",
        "transformers",
        "--extensions",
        "ropepatch",
    ]
    with open(log_path, "w") as log:
        server = subprocess.Popen(cmd, cwd=webui, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{args.api_port}"
    try:
        deadline = time.time() + args.timeout
        info = None
        while time.time() < deadline and server.poll() is None:
            try:
                info = get(f"{base}/v1/internal/model/info", timeout=5)
                break
            except OSError:
                time.sleep(2)
        checks["server_up"] = info is not None
        checks["model_loaded"] = bool(info and info.get("model_name") == MODEL)
        result["model_info"] = info
        if info is not None:
            status = get(f"{base}/v1/internal/ropepatch")
            result["ropepatch"] = status
            checks["extension_loaded"] = bool(status.get("enabled"))
            checks["spec_detected"] = status.get("method") == "part-ntk" and status.get("factor") == 4.0
            checks["model_patched"] = bool(status.get("verify", {}).get("matches"))
            completion = get(
                f"{base}/v1/completions", {"prompt": "hello world", "max_tokens": 4, "temperature": 0}, timeout=120
            )
            checks["completion"] = bool(completion.get("choices"))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    log_text = log_path.read_text(errors="ignore")
    checks["startup_reload_logged"] = f"ropepatch: reloading {MODEL} done" in log_text
    result["log_tail"] = log_text.splitlines()[-25:]
    result["passed"] = bool(checks) and all(checks.values())
    print(json.dumps(result, indent=2, default=str))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
