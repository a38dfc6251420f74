"""Turn whatever the user points at (folder, config.json, GGUF, dict, transformers config) into a view.

ropepatch never downloads anything: a repo id that is not a local path is an error that says so.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ropepatch.errors import RopeConfigError
from ropepatch.metadata.gguf import is_gguf, read_gguf_metadata
from ropepatch.metadata.view import ConfigView

__all__ = ["load_view", "names_from_path"]

MAX_CONFIG_BYTES = 64 << 20
_ROPE_KEYS = ("rope_scaling", "rope_parameters", "rope_theta", "head_dim", "hidden_size", "max_position_embeddings")


def load_view(source: Any) -> ConfigView:
    """A :class:`ConfigView` of ``source`` (see :func:`ropepatch.detect` for what it accepts)."""
    if isinstance(source, ConfigView):
        return source
    if isinstance(source, Mapping):
        return _view_of_mapping(source, path=None, label="dict", kind="dict")
    if isinstance(source, (str, os.PathLike)):
        return _view_of_path(Path(os.fspath(source)))
    to_dict = getattr(source, "to_dict", None)
    if callable(to_dict) and hasattr(source, "model_type"):
        data = to_dict()
        if not isinstance(data, Mapping):
            raise RopeConfigError(f"{type(source).__name__}.to_dict() returned a {type(data).__name__}, not a mapping")
        data = dict(data)
        # transformers configs know where they were loaded from; keep it for the known-checkpoint table
        name = getattr(source, "_name_or_path", None) or getattr(source, "name_or_path", None)
        if name and "_name_or_path" not in data:
            data["_name_or_path"] = name
        return _view_of_mapping(data, path=None, label=f"{type(source).__name__}", kind="transformers")
    raise RopeConfigError(
        f"cannot read RoPE metadata from a {type(source).__name__}; pass a checkpoint folder, a config.json or "
        "GGUF path, a dict, or a transformers config"
    )


def _view_of_path(path: Path) -> ConfigView:
    try:
        return _view_of_existing_path(path)
    except OSError as exc:  # a folder we may not list, a file that vanished between two looks
        raise RopeConfigError(f"cannot read: {exc.strerror or exc}", path=str(exc.filename or path)) from None


def _view_of_existing_path(path: Path) -> ConfigView:
    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            view = _view_of_json(config)
            view.names = tuple(dict.fromkeys((*view.names, *names_from_path(path))))
            return view
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return _view_of_gguf(ggufs[0])
        raise RopeConfigError("folder has no config.json and no .gguf file", path=str(path))
    if not path.exists():
        hint = ""
        if re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)):
            hint = " (ropepatch never downloads: pass the local folder the checkpoint was saved or cached in)"
        raise RopeConfigError(f"no such file or folder{hint}", path=str(path))
    _require_regular_file(path)
    if path.suffix == ".gguf" or is_gguf(path):
        return _view_of_gguf(path)
    return _view_of_json(path)


def _require_regular_file(path: Path) -> None:
    # a FIFO would block the first read forever, /dev/zero would never end: read only plain files
    if not stat.S_ISREG(path.stat().st_mode):
        raise RopeConfigError("not a regular file (a device, pipe or socket cannot hold metadata)", path=str(path))


def _view_of_json(path: Path) -> ConfigView:
    try:
        _require_regular_file(path)
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)  # bounded even if the file grows while we read
    except OSError as exc:
        raise RopeConfigError(f"cannot read config: {exc.strerror or exc}", path=str(path)) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise RopeConfigError(
            f"config file is larger than {MAX_CONFIG_BYTES} bytes; refusing to parse it", path=str(path)
        )
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RopeConfigError(f"config is not UTF-8 text ({exc.reason} at byte {exc.start})", path=str(path)) from None
    except json.JSONDecodeError as exc:
        raise RopeConfigError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", path=str(path)
        ) from None
    except RecursionError:
        raise RopeConfigError("malformed JSON: nested too deeply", path=str(path)) from None
    except ValueError as exc:  # an integer literal beyond Python's int-from-string digit limit
        raise RopeConfigError(f"malformed JSON: {str(exc).split(';')[0]}", path=str(path)) from None
    if not isinstance(data, dict):
        raise RopeConfigError(f"config must be a JSON object, got {type(data).__name__}", path=str(path))
    kind = "gguf" if "general.architecture" in data else "config.json"
    view = _view_of_mapping(data, path=str(path), label=path.name, kind=kind)
    view.names = tuple(dict.fromkeys((*view.names, *names_from_path(path))))
    return view


def _view_of_gguf(path: Path) -> ConfigView:
    data = read_gguf_metadata(path)
    view = ConfigView(data=data, path=str(path), kind="gguf", label=path.name)
    names = [
        data[k]
        for k in ("general.name", "general.basename", "general.source.huggingface.repository")
        if isinstance(data.get(k), str)
    ]
    view.names = tuple(dict.fromkeys((*names, *names_from_path(path))))
    return view


def _as_loaded(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """A config whose rope dict ropepatch rewrote (a model it patched) read as it was loaded."""
    out = None
    for key in ("rope_parameters", "rope_scaling"):
        rope = data.get(key)
        if not isinstance(rope, Mapping):
            continue
        embeds = [rope] + [v for v in rope.values() if isinstance(v, Mapping)]
        for d in embeds:
            embed = d.get("ropepatch")
            if isinstance(embed, Mapping) and "original" in embed:
                out = dict(data) if out is None else out
                out[key] = embed["original"]
                break
    return data if out is None else out


def _view_of_mapping(data: Mapping[str, Any], *, path: str | None, label: str, kind: str) -> ConfigView:
    data = _as_loaded(data)
    names = []
    for key in ("_name_or_path", "name_or_path", "general.name"):
        value = data.get(key)
        if isinstance(value, str) and value:
            names.append(value)
    text = data.get("text_config")
    if isinstance(text, Mapping) and not any(data.get(k) is not None for k in _ROPE_KEYS):
        # multimodal wrappers (Gemma 3, Llama 4, Mistral 3) keep the language model's rope under text_config
        merged = dict(text)
        merged.setdefault("model_type", text.get("model_type") or data.get("model_type"))
        view = ConfigView(data=merged, path=path, kind=kind, label=label, names=tuple(names), prefix="text_config.")
        view.extras["outer"] = data
        return view
    return ConfigView(data=dict(data), path=path, kind=kind, label=label, names=tuple(names))


def names_from_path(path: Path) -> list[str]:
    """Repo ids a path reveals: the HF cache layout, ``org__name`` file names, the folder name."""
    names: list[str] = []
    for part in path.resolve().parts if path.exists() else path.parts:
        m = re.fullmatch(r"models--([^/]+?)--(.+)", part)
        if m:
            names.append(f"{m.group(1)}/{m.group(2)}")
    stem = path.name
    for suffix in (".json", ".gguf"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    stem = re.sub(r"\.gguf$", "", stem)
    if "__" in stem:
        org, _, name = stem.partition("__")
        names.append(f"{org}/{name.split('__')[0]}")
    elif path.is_dir() or path.suffix == "":
        names.append(path.name)
    if path.suffix == ".gguf":
        names.append(stem)
    if path.name == "config.json":
        names.append(path.parent.name)
    return names
