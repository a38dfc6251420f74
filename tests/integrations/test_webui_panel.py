"""The webui panel as a real gradio UI: built in gradio Blocks, its events run through gradio's own processing.

gradio 4.37.2 is the version text-generation-webui pins (it ships a patched build of it). It pulls
older pillow/fastapi than the rest of the test environment, so it lives in its own virtual
environment (``--system-site-packages``, created once in pytest's cache) and the panel runs there
in a child process. Nothing is mocked: the panel, the override store, ropepatch's detection and the
gradio server and client are all real; the "reload" is a function that records its calls, since a
real webui is what compat/webui/check_webui.py runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# text-generation-webui's patched 4.37.2 runs on huggingface_hub 1.x; the stock wheel still imports
# HfFolder, which huggingface_hub 1.0 removed, so the venv keeps an older hub (transformers is not used there)
GRADIO = ("gradio==4.37.2", "huggingface_hub<1.0")


@pytest.fixture(scope="session")
def gradio_python(request: pytest.FixtureRequest) -> str:
    """A Python with gradio installed (a cached venv), or a skip saying why there is none."""
    folder = Path(request.config.cache.mkdir("ropepatch-gradio-venv"))
    python = folder / "bin" / "python"
    marker = folder / ".complete"
    if not marker.exists():
        venv.create(folder, system_site_packages=True, with_pip=True, clear=True)
        proc = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *GRADIO],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot install {' '.join(GRADIO)} from PyPI: {proc.stderr.strip().splitlines()[-1:]}")
        marker.write_text(" ".join(GRADIO))
    return str(python)


CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    import gradio as gr
    from gradio.state_holder import SessionState
    import ropepatch
    from ropepatch.integrations import webui

    work = Path(sys.argv[1])
    model_dir = work / "models" / "tiny-yarn"
    store = webui.OverrideStore(work / "user_data" / "ropepatch" / "overrides.json")
    reloads = []
    ctx = webui.PanelContext(store, lambda: ("tiny-yarn", str(model_dir)), lambda: reloads.append(1) or True)
    webui.setup(store, type("S", (), {"model": None})(), None)

    with gr.Blocks() as demo:
        parts = webui.build_panel(gr, ctx)
    state = SessionState(demo)

    def event(api_name, *inputs):
        # the same path a browser click takes once it reaches the server: gradio's preprocess,
        # the listener, postprocess into the output components
        fn = next(f for f in demo.fns.values() if f.api_name == api_name)
        result = asyncio.run(demo.process_api(fn, list(inputs), state=state))
        return [d.get("value", d) if isinstance(d, dict) else d for d in result["data"]]

    out = {
        "components": sorted(parts),
        "method_choices": parts["method"].choices,
        "config_ok": bool(demo.get_config_file()["components"]),
        "initial": event("ropepatch_refresh"),
        "bad": event("ropepatch_save", "longrope", 0, 0, 0),
        "saved": event("ropepatch_save", "ntk", 0, 2.5, 0),
        "store_after_save": store.all(),
        "spec_after_save": ropepatch.runtime.current().spec_for(model_dir).summary(),
        "cleared": event("ropepatch_clear"),
        "store_after_clear": store.all(),
        "reloads": len(reloads),
    }
    print("RESULT " + json.dumps(out, default=str))
    """
)


def test_panel_round_trip_through_a_real_gradio_server(gradio_python: str, tmp_path: Path) -> None:
    model = tmp_path / "models" / "tiny-yarn"
    model.mkdir(parents=True)
    (model / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 256,
                "num_attention_heads": 2,
                "max_position_embeddings": 16384,
                "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
            }
        )
    )
    script = tmp_path / "panel_child.py"
    script.write_text(CHILD)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    env.pop("ROPEPATCH", None)
    proc = subprocess.run(
        [gradio_python, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])

    assert out["components"] == ["alpha", "clear", "factor", "info", "method", "original", "refresh", "save"]
    choices = [c[0] if isinstance(c, list) else c for c in out["method_choices"]]
    assert choices[0] == "(from checkpoint)" and {"yarn", "ntk", "part-ntk", "dynamic"} <= set(choices)

    text, method, factor, alpha, original = out["initial"]
    assert "| method | yarn | config.json:rope_scaling.rope_type |" in text
    assert "| original context | 4096 |" in text and "| effective context | 16384 |" in text
    assert method == "(from checkpoint)" and factor is None and alpha is None

    assert out["bad"][0].startswith("**ropepatch**: not saved:")  # longrope without its per-dimension factors
    text, method, factor, alpha, original = out["saved"]
    assert (
        method == "ntk" and alpha == 2.5 and "| method | ntk | per-model mapping" in text and "model reloaded" in text
    )
    assert out["store_after_save"] == {"tiny-yarn": {"alpha": 2.5, "method": "ntk"}}
    assert out["spec_after_save"].startswith("ntk")

    assert "| method | yarn |" in out["cleared"][0] and out["store_after_clear"] == {}
    assert out["reloads"] == 2  # save and clear each reload the model once; the rejected save did not
