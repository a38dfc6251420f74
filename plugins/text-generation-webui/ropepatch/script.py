"""text-generation-webui extension: load every model with its checkpoint's real RoPE scaling.

Copy or link this folder to ``extensions/ropepatch`` (or ``user_data/extensions/ropepatch``), install
ropepatch into the webui's environment (``pip install ropepatch``) and start the webui with
``--extensions ropepatch``. The logic lives in ``ropepatch.integrations.webui``; this file only
connects it to the webui.
"""

from pathlib import Path

from modules import shared

from ropepatch.integrations import webui

params = {"display_name": "ropepatch", "is_tab": False}


def _user_data() -> Path:
    return Path(getattr(shared, "user_data_dir", None) or "user_data")


store = webui.OverrideStore(_user_data() / "ropepatch" / "overrides.json")


def _current_model():
    name = getattr(shared, "model_name", None)
    if not name or name == "None":
        return None, None
    return name, str(Path(shared.args.model_dir) / name)


def _reload():
    from modules import models

    return webui.reload_model(shared, models)


def setup():
    """Enable ropepatch and cover the llama.cpp loader; reload a start-up model only if its first load lacks the scaling."""
    from modules import models
    from modules.logging_colors import logger

    try:
        from modules import llama_cpp_server
    except ImportError as exc:  # a webui without the llama.cpp loader, or without its requirements
        logger.info(f"ropepatch: the llama.cpp loader is not available ({exc}); RoPE flags not applied")
    else:
        webui.install_llamacpp_loader(shared, llama_cpp_server)

    if webui.setup(store, shared, models):
        logger.info(f"ropepatch: reloading {shared.model_name} done: it is built with its detected RoPE scaling")
    if shared.args.api or getattr(shared.args, "public_api", False):
        from modules.api import script as api  # the API server starts after the extensions' setup()

        @api.app.get("/v1/internal/ropepatch", dependencies=getattr(api, "check_key", None))
        def ropepatch_status():
            name, path = _current_model()
            return webui.api_status(path, name, shared.model, store)


def ui():
    import gradio as gr

    webui.build_panel(gr, webui.PanelContext(store=store, current_model=_current_model, reload=_reload))
