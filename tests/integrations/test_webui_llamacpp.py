"""The webui extension's llama.cpp loader: the spec's flags reach llama-server's command line.

``test_real_command_builder`` runs the webui's own ``modules/llama_cpp_server.py`` (its
``LlamaServer._start_server`` builds the command and starts the server) with a stub llama-server that
records its argv. It needs a text-generation-webui checkout, which the repository does not ship:
point ``ROPEPATCH_WEBUI_CHECKOUT`` at one (``git clone https://github.com/oobabooga/text-generation-webui``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ropepatch
from ropepatch.integrations import webui

pytest.importorskip("gguf", reason="the gguf package writes the test model (pip install 'ropepatch[llamacpp]')")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "llamacpp"))
from llamacpp_models import random_weights, write_gguf  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("ROPEPATCH", raising=False)
    ropepatch.disable()
    webui.llamacpp_notes.clear()
    yield
    ropepatch.disable()


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    return write_gguf(folder / "tiny.gguf", random_weights(0), context_length=256)


def test_flags_join_literal_extra_flags_and_users_win(gguf_model: Path, tmp_path: Path) -> None:
    store = webui.OverrideStore(tmp_path / "o.json")
    store.set("tiny.gguf", {"method": "yarn", "factor": 4, "original_max_position_embeddings": 64})
    webui.enable_with_store(store)
    flags, note = webui.llamacpp_loader_flags(str(gguf_model), '"--jinja --rope-freq-base 20000"')
    assert flags is not None
    argv = flags.split()
    assert argv[:3] == ["--jinja", "--rope-freq-base", "20000"]  # the user's flags first, unchanged
    assert argv.count("--rope-freq-base") == 1  # and theirs wins
    assert argv[argv.index("--rope-scaling") + 1] == "yarn" and float(argv[argv.index("--rope-scale") + 1]) == 4.0
    assert argv[argv.index("--yarn-orig-ctx") + 1] == "64"
    assert "-c" not in argv and "--ctx-size" not in argv  # the webui passes --ctx-size itself
    assert "kept yours: --rope-freq-base 20000" in note


def test_flags_keep_the_legacy_format(gguf_model: Path, tmp_path: Path) -> None:
    store = webui.OverrideStore(tmp_path / "o.json")
    store.set("tiny.gguf", {"method": "linear", "factor": 2})
    webui.enable_with_store(store)
    flags, _ = webui.llamacpp_loader_flags(str(gguf_model), "rpc=127.0.0.1:50052,no-mmap")
    assert flags is not None
    assert flags.startswith("rpc=127.0.0.1:50052,no-mmap,")
    items = dict(item.partition("=")[::2] for item in flags.split(","))
    assert items["rope-scaling"] == "linear" and float(items["rope-scale"]) == 2.0


def test_inexpressible_is_said_and_nothing_added(gguf_model: Path, tmp_path: Path) -> None:
    store = webui.OverrideStore(tmp_path / "o.json")
    store.set("tiny.gguf", {"method": "dynamic", "factor": 4, "original_max_position_embeddings": 64})
    webui.enable_with_store(store)
    flags, note = webui.llamacpp_loader_flags(str(gguf_model), "--jinja")
    assert flags is None
    assert "cannot apply" in note and "'dynamic'" in note and "closest it can run" in note
    data = webui.panel_data(str(gguf_model), "tiny.gguf", store)
    assert "cannot apply this RoPE" in data["llamacpp"]
    assert "llama.cpp loader: cannot apply" in webui.panel_markdown(data)


def test_off_without_ropepatch(gguf_model: Path) -> None:
    assert webui.llamacpp_loader_flags(str(gguf_model), "--jinja") == (None, "ropepatch is not enabled")


CHECK = """
import sys, json
sys.argv = ["server.py", "--loader", "llama.cpp", "--ctx-size", "4096", "--extra-flags", "--jinja --yarn-beta-fast 16"]
sys.path.insert(0, {webui!r})
from modules import shared, llama_cpp_server
import ropepatch
from ropepatch.integrations import webui

store = webui.OverrideStore({store!r})
store.set("tiny.gguf", {{"method": "yarn", "factor": 4, "original_max_position_embeddings": 64}})
webui.enable_with_store(store)
shared.model_name = "tiny.gguf"
assert webui.install_llamacpp_loader(shared, llama_cpp_server)
try:
    llama_cpp_server.LlamaServer({model!r}, server_path={stub!r})
except RuntimeError as exc:  # the stub exits at once: "Server process terminated unexpectedly"
    print("stub exited:", exc)
print(json.dumps({{"extra_flags_after": shared.args.extra_flags, "note": webui.llamacpp_notes.get("tiny.gguf")}}))
"""


def test_real_command_builder(gguf_model: Path, tmp_path: Path) -> None:
    checkout = os.environ.get("ROPEPATCH_WEBUI_CHECKOUT")
    if not checkout or not (Path(checkout) / "modules" / "llama_cpp_server.py").exists():
        pytest.skip(
            "needs a text-generation-webui checkout (not shipped with ropepatch): set ROPEPATCH_WEBUI_CHECKOUT "
            "to a clone whose modules/llama_cpp_server.py builds llama-server's command line"
        )
    pytest.importorskip("yaml", reason="the webui's modules/shared.py imports PyYAML")
    pytest.importorskip("requests", reason="the webui's llama_cpp_server.py imports requests")
    record = tmp_path / "argv.txt"
    stub = tmp_path / "llama-server"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\nexit 3\n')
    stub.chmod(0o755)
    script = tmp_path / "check.py"
    script.write_text(
        textwrap.dedent(CHECK).format(
            webui=checkout, store=str(tmp_path / "o.json"), model=str(gguf_model), stub=str(stub)
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert record.exists(), r.stdout + r.stderr
    argv = record.read_text().splitlines()
    # the webui's own command, built by its code ...
    assert argv[argv.index("--model") + 1] == str(gguf_model) and argv[argv.index("--ctx-size") + 1] == "4096"
    assert "--jinja" in argv
    # ... with the spec's flags, the user's extra flag winning
    assert argv[argv.index("--rope-scaling") + 1] == "yarn" and float(argv[argv.index("--rope-scale") + 1]) == 4.0
    assert argv[argv.index("--yarn-orig-ctx") + 1] == "64"
    assert argv.count("--yarn-beta-fast") == 1 and argv[argv.index("--yarn-beta-fast") + 1] == "16"
    assert '"extra_flags_after": "--jinja --yarn-beta-fast 16"' in r.stdout  # restored after the start
