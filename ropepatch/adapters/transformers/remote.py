"""Remote code and GGUF: the two ways a model reaches transformers without a rope dict it can read.

* ``dynamic_module_utils.get_class_in_module`` (called by global name in every tested version):
  every class with ``Rotary`` in its name in a loaded ``trust_remote_code`` module is wrapped so
  that, once built, it is converted to the spec of the model being built (a Falcon RefinedWeb-style
  ``RotaryEmbedding(head_dim, base=10000)`` never sees its config). A ``sys.meta_path`` finder would
  miss these modules: transformers executes them from file locations itself.
* ``modeling_gguf_pytorch_utils.load_gguf_checkpoint``: transformers maps ``rope.freq_base`` but
  drops ``{arch}.rope.scaling.*``, so a YaRN x16 GGUF loads as plain RoPE. The scaling ropepatch
  reads from the GGUF header is added to the config dict as transformers' own ``rope_scaling``.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from typing import Any

from ropepatch.patching import PatchSet, is_patched

__all__ = ["building", "install_gguf", "install_remote"]

log = logging.getLogger("ropepatch")

#: the config of the model whose __init__ runs in this thread (remote rotary classes don't get it)
building = threading.local()


def install_remote(patches: PatchSet, dynamic_module_utils: Any, convert: Any) -> None:
    """Wrap ``get_class_in_module``; ``convert(module, config)`` converts a freshly built rotary module."""
    original = dynamic_module_utils.get_class_in_module

    @functools.wraps(original)
    def get_class_in_module(class_name: str, module_path: Any, *args: Any, **kwargs: Any) -> Any:
        cls = original(class_name, module_path, *args, **kwargs)
        module = sys.modules.get(getattr(cls, "__module__", ""))
        if module is not None:
            try:
                _wrap_rotary_classes(patches, module, convert)
            except Exception:  # noqa: BLE001 - never break loading a model because of ropepatch
                log.exception("ropepatch: could not patch remote module %s", module.__name__)
        return cls

    patches.set(dynamic_module_utils, "get_class_in_module", get_class_in_module)


def _wrap_rotary_classes(patches: PatchSet, module: Any, convert: Any) -> None:
    import torch

    for name, value in list(vars(module).items()):
        if not (isinstance(value, type) and issubclass(value, torch.nn.Module) and "Rotary" in name):
            continue
        if value.__module__ != module.__name__ or is_patched(value.__dict__.get("__init__")):
            continue
        original = value.__dict__.get("__init__", value.__init__)

        def make(original: Any) -> Any:
            @functools.wraps(original)
            def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
                original(self, *args, **kwargs)
                config = getattr(building, "config", None)
                if config is not None:
                    convert(self, config)

            return __init__

        patches.set(value, "__init__", make(original))


def install_gguf(patches: PatchSet, gguf_utils: Any) -> None:
    """Wrap ``load_gguf_checkpoint`` so the config dict keeps the GGUF's rope scaling."""
    original = gguf_utils.load_gguf_checkpoint

    @functools.wraps(original)
    def load_gguf_checkpoint(gguf_checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(gguf_checkpoint_path, *args, **kwargs)
        config = result.get("config") if isinstance(result, dict) else None
        if isinstance(config, dict) and config.get("rope_scaling") is None and config.get("rope_parameters") is None:
            rope = gguf_rope_scaling(gguf_checkpoint_path)
            if rope is not None:
                config["rope_scaling"] = rope
        return result

    patches.set(gguf_utils, "load_gguf_checkpoint", load_gguf_checkpoint)


def gguf_rope_scaling(path: Any) -> dict[str, Any] | None:
    """transformers' ``rope_scaling`` dict for the scaling in a GGUF header, or None when plain."""
    from ropepatch.adapters.transformers.plan import _native_dict
    from ropepatch.detection import detect
    from ropepatch.errors import RopeConfigError

    try:
        spec = detect(os.fspath(path), use_env=False, emit_warnings=False)
    except RopeConfigError as exc:
        log.warning("ropepatch: cannot read the rope scaling of %s: %s", path, exc)
        return None
    native = spec._method_obj.transformers_type
    if spec.method == "default" or native in (None, "default"):
        return None
    return _native_dict(spec, native, None, "rope_scaling")
