"""``ropepatch fix``: write a copy of a checkpoint that states its RoPE scaling in the runtime's own keys.

* A GGUF gets llama.cpp's ``{arch}.rope.*`` keys (:mod:`ropepatch.llamacpp`); every other key and every
  tensor is copied unchanged, streamed by the ``gguf`` package's writer (tensor data is memory-mapped
  from the source and written one tensor at a time, so memory stays bounded).
* A checkpoint folder (or a lone config.json) gets a config.json whose ``rope_scaling`` (or
  ``rope_parameters``, when the config already uses it) is transformers' native dialect; the other
  files are copied as they are.

A spec the target cannot state natively is refused (:class:`ropepatch.llamacpp.LlamaCppUnsupported` or
a :class:`RopeConfigError`); nothing is written then.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ropepatch.errors import RopeConfigError

__all__ = ["fix", "fix_checkpoint", "fix_gguf", "native_rope_dict"]

#: keys a fixed GGUF drops before writing its own (stale scaling from the conversion)
_STALE = ("scaling.", "scale_linear", "freq_base")


def fix(
    source: str | os.PathLike[str], dest: str | os.PathLike[str] | None, spec: Any, *, in_place: bool = False
) -> Path:
    """Write the fixed copy of ``source`` to ``dest`` (or over ``source`` with ``in_place``); return its path."""
    from ropepatch.metadata.gguf import is_gguf

    src = Path(source)
    if not src.exists():
        raise RopeConfigError("no such file or folder", path=str(src))
    if dest is None and not in_place:
        raise RopeConfigError("give --out DEST (or --in-place to overwrite the source)", path=str(src))
    target = src if in_place else Path(dest)  # type: ignore[arg-type]
    if not in_place and target.resolve() == src.resolve():
        raise RopeConfigError("--out is the source itself; use --in-place to overwrite it", path=str(src))
    if not in_place and target.exists() and (target.is_file() or any(target.iterdir())):
        raise RopeConfigError("already exists; remove it or choose another --out", path=str(target))
    if src.is_file() and (src.suffix == ".gguf" or is_gguf(src)):
        return fix_gguf(src, target, spec)
    return fix_checkpoint(src, target, spec)


# -- GGUF ----------------------------------------------------------------------------------------
def fix_gguf(source: Path, dest: Path, spec: Any) -> Path:
    """Copy ``source`` to ``dest`` with llama.cpp's keys for ``spec`` (tensors byte-identical)."""
    try:
        import gguf
    except ImportError:
        raise RopeConfigError(
            "writing a GGUF needs the gguf package: pip install 'ropepatch[llamacpp]' (or pip install gguf)",
            path=str(source),
        ) from None
    from ropepatch.llamacpp import settings_for_gguf

    settings, facts = settings_for_gguf(source, spec)
    keys = settings.gguf_keys(facts.arch)  # refuses what the keys cannot say, before anything is written
    reader = gguf.GGUFReader(str(source), "r")
    prefix = f"{facts.arch}.rope."
    tmp = _temp_beside(dest)
    try:
        writer = gguf.GGUFWriter(str(tmp), facts.arch, endianess=reader.endianess)
        for field in reader.fields.values():
            name = field.name
            if name == gguf.Keys.General.ARCHITECTURE or name.startswith("GGUF."):
                continue  # the writer writes these itself
            if name.startswith(prefix) and name[len(prefix) :].startswith(_STALE):
                continue
            if name == "general.alignment":
                writer.data_alignment = int(field.contents())
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
        types = {
            "string": gguf.GGUFValueType.STRING,
            "float32": gguf.GGUFValueType.FLOAT32,
            "uint32": gguf.GGUFValueType.UINT32,
        }
        for key, (kind, value) in keys.items():
            writer.add_key_value(key, value, types[kind])
        for t in reader.tensors:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in reader.tensors:  # memory-mapped views: one tensor in flight at a time
            writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
        writer.close()
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _temp_beside(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    return Path(name)


# -- transformers checkpoints --------------------------------------------------------------------
def native_rope_dict(spec: Any, current: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], float]:
    """transformers' own rope dict for ``spec`` and the ``rope_theta`` to state beside it.

    Fixed NTK is plain RoPE with another base (``default``); refuses methods transformers has no type for.
    """
    from ropepatch.methods.base import ntk_base

    m = spec.method
    theta = spec.rope_theta
    out: dict[str, Any] = {}
    if current and current.get("partial_rotary_factor") is not None:
        out["partial_rotary_factor"] = current["partial_rotary_factor"]
    if m in ("ntk", "ntk-margin"):
        if spec.rotary_dim is None:
            raise RopeConfigError(f"{m} needs the rotary dimension", path=spec.source, key="rotary_dim")
        alpha = spec.method_params.get("alpha") or spec.effective_factor
        theta = ntk_base(theta, alpha if m == "ntk" else spec.effective_factor + 1, spec.rotary_dim)
        out.update(rope_type="default")
        return out, theta
    native = spec._method_obj.transformers_type
    if native is None:
        raise RopeConfigError(
            f"transformers has no native rope type for {m!r}; load the checkpoint with ropepatch enabled "
            "(import ropepatch; ropepatch.enable()) instead of fixing its config",
            path=spec.source,
            key="method",
        )
    out["rope_type"] = native
    if native == "default":
        return out, theta
    if spec.effective_factor is not None:
        out["factor"] = spec.effective_factor
    if native in ("yarn", "llama3", "longrope", "dynamic") and spec.effective_original is not None:
        out["original_max_position_embeddings"] = spec.effective_original
    for key, value in spec.method_params.items():
        if key in ("finetuned",) or value is None:
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    return out, theta


def fix_checkpoint(source: Path, dest: Path, spec: Any) -> Path:
    """Copy a checkpoint folder (or config.json) to ``dest`` with a config.json in transformers' dialect."""
    config_path = source / "config.json" if source.is_dir() else source
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RopeConfigError(f"cannot read the config: {exc}", path=str(config_path)) from None
    if not isinstance(config, dict):
        raise RopeConfigError("config must be a JSON object", path=str(config_path))
    attr = "rope_parameters" if isinstance(config.get("rope_parameters"), dict) else "rope_scaling"
    current = config.get(attr) if isinstance(config.get(attr), dict) else None
    rope, theta = native_rope_dict(spec, current)
    if attr == "rope_parameters":
        rope["rope_theta"] = theta
        config["rope_parameters"] = rope
    else:
        rope["type"] = rope["rope_type"]  # transformers 4.x before rope_type read "type"
        config["rope_scaling"] = None if rope["rope_type"] == "default" and len(rope) == 2 else rope
        config["rope_theta"] = theta
    for stale in ("use_dynamic_ntk", "use_logn_attn", "rope_ratio"):
        config.pop(stale, None)
    if spec.effective_context and (config.get("max_position_embeddings") or 0) < spec.effective_context:
        config["max_position_embeddings"] = spec.effective_context
    text = json.dumps(config, indent=2, sort_keys=False) + "\n"
    if source.is_dir():
        if dest != source:
            shutil.copytree(source, dest, dirs_exist_ok=True)
        out = dest / "config.json"
    else:
        out = dest if dest.suffix == ".json" else dest / "config.json"
        out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(out)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return dest
