"""ExLlamaV2 and ExLlamaV3 probes: their own config parsing and RoPE code, run on CPU without weights.

Both runtimes import a compiled CUDA extension when their package is imported. Where it cannot be
imported (no CUDA build here) the probe puts a stand-in module in its place first, as ropepatch's
ExLlama tests do; RoPE set-up never calls into it, and every call would fail loudly. The probe says
so in its notes.

* ExLlamaV3: ``Config.from_directory`` then ``RoPE("cpu", config.rope_settings)``; the module's own
  ``inv_freq`` and ``attn_factor`` are read (float32, exact).
* ExLlamaV2: ``ExLlamaV2Config.prepare`` with ``max_seq_len = seq_len`` (what users set to the
  context they want), a lazily loaded ``ExLlamaV2`` and a device context building its sin/cos
  tables on CPU, as a model load does. The tables are what its kernels read, so the frequencies
  are recovered from them: the attention factor is the tables' amplitude, each frequency the slope
  of its unwrapped angle over all positions (a least-squares fit, which averages the fp16 rounding
  of the tables away to about 1e-4).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import re
import sys
import tempfile
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ropepatch.doctor.probe import Computation
from ropepatch.versions import installed_version

__all__ = ["ExLlamaV2Probe", "ExLlamaV3Probe"]

#: ExLlamaV2's tables are fp16: frequencies recovered from them agree with the reference to about this
TABLE_TOLERANCE = 2e-3

#: what the runtimes need beyond the RoPE keys to parse a config (tiny model, no weights read)
_BASE = {
    "num_hidden_layers": 1,
    "intermediate_size": 64,
    "vocab_size": 256,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _stub_v2() -> types.ModuleType:
    return types.ModuleType("exllamav2_ext")


def _stub_v3() -> types.ModuleType:
    # exllamav3.ext imports the extension only when find_spec() reports a compiled module, and reads
    # attributes of it at import time: an extension-looking spec, and a failing function per name
    module = types.ModuleType("exllamav3_ext")
    origin = "/nonexistent/exllamav3_ext" + importlib.machinery.EXTENSION_SUFFIXES[0]
    loader: Any = importlib.machinery.BuiltinImporter  # any loader: the spec only has to look compiled
    module.__spec__ = importlib.machinery.ModuleSpec("exllamav3_ext", loader=loader, origin=origin)

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def kernel(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"exllamav3_ext.{name}: ropepatch doctor's CPU stand-in has no kernels")

        return kernel

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


def _import(dist: str, ext: str, stub: Any) -> tuple[Any, list[str]]:
    """Import ``dist``; with a stand-in for its extension when the real one cannot be imported."""
    notes: list[str] = []
    if dist in sys.modules:
        if getattr(sys.modules.get(ext), "__file__", None) is None and ext in sys.modules:
            notes.append(f"{ext} is a CPU stand-in: only {dist}'s Python RoPE code runs")
        return sys.modules[dist], notes
    if ext not in sys.modules:
        try:
            spec = importlib.util.find_spec(ext)
        except (ImportError, ValueError):
            spec = None
        real = False
        if spec is not None:
            try:
                importlib.import_module(ext)
                real = True
            except Exception:  # noqa: BLE001 - a broken build is as good as none for the probe
                sys.modules.pop(ext, None)
        if not real:
            sys.modules[ext] = stub()
            notes.append(f"{ext} is a CPU stand-in: only {dist}'s Python RoPE code runs")
    try:
        return importlib.import_module(dist), notes
    except BaseException:
        # leave no half-imported package behind for the next attempt (or the user's own import)
        for name in [m for m in sys.modules if m == dist or m.startswith(dist + ".") or m == ext]:
            del sys.modules[name]
        raise


def _write_model(folder: Path, config: Mapping[str, Any]) -> Path:
    data = {**_BASE, **{k: v for k, v in config.items() if v is not None}}
    if not data.get("architectures"):
        data["architectures"] = [_architecture(str(data.get("model_type", "")))]
    data.setdefault("num_key_value_heads", data.get("num_attention_heads"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(data))
    header = b"{}"
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return folder


def _architecture(model_type: str) -> str:
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
        if name:
            return name
    except ImportError:
        pass
    return "LlamaForCausalLM" if model_type in ("", "llama") else f"{model_type.title()}ForCausalLM"


def _model_dir(root: str, config: Mapping[str, Any]) -> Path:
    # the folder is named after the checkpoint, so name-based detection sees what a real load sees
    name = str(config.get("_name_or_path") or "model").replace("/", "__")
    return Path(root) / (re.sub(r"[^\w.-]", "_", name) or "model")


class _ExLlamaProbe:
    name = ""
    distribution = ""
    adapter: str | None = None
    ext = ""
    tolerance: float | None = None

    def problem(self) -> str | None:
        if importlib.util.find_spec(self.distribution) is None:
            return f"{self.distribution} is not installed"
        return None

    def version(self) -> str | None:
        module = sys.modules.get(self.distribution)
        v = getattr(module, "__version__", None) if module is not None else None
        if v is None:
            found = installed_version(self.distribution)
            v = str(found) if found is not None else None
        return v

    def compute(self, config: Mapping[str, Any], seq_len: int, *, patched: bool) -> Computation:
        if not config.get("model_type") and not config.get("architectures"):
            return Computation("unsupported", error="no model_type/architectures: not a config.json ExLlama reads")
        try:
            module, notes = _import(self.distribution, self.ext, _stub_v2 if self.ext == "exllamav2_ext" else _stub_v3)
        except Exception as exc:  # noqa: BLE001
            return Computation("unsupported", error=f"{self.distribution} does not import here: {_short(exc)}")
        clean = {k: v for k, v in config.items() if k != "_name_or_path"}
        with tempfile.TemporaryDirectory(prefix="ropepatch-doctor-") as root:
            folder = _write_model(_model_dir(root, config), clean)
            try:
                comp = self._run(module, folder, seq_len)
            except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
                # an architecture the runtime has no model class for is not a RoPE failure
                status = "unsupported" if "nknown architecture" in str(exc) else "fails"
                error = _short(exc).replace(str(folder.parent) + "/", "")  # no temporary paths in reports
                return Computation(status, error=error, notes=notes)
        comp.notes[:0] = notes
        return comp

    def _run(self, module: Any, folder: Path, seq_len: int) -> Computation:
        raise NotImplementedError


class ExLlamaV3Probe(_ExLlamaProbe):
    """ExLlamaV3: the ``RoPE`` module its attention layers build."""

    name = "exllamav3"
    distribution = "exllamav3"
    adapter = "exllamav3"
    ext = "exllamav3_ext"

    def _run(self, module: Any, folder: Path, seq_len: int) -> Computation:
        rope_mod = importlib.import_module("exllamav3.util.rope")
        config = module.Config.from_directory(str(folder))
        rope = rope_mod.RoPE("cpu", config.rope_settings)
        inv = rope.inv_freq
        if inv.dim() != 1:
            return Computation("unsupported", error=f"angle-table RoPE (inv_freq of shape {tuple(inv.shape)})")
        return Computation(
            "ok",
            inv_freq=[float(x) for x in inv.double().tolist()],
            attention_factor=float(rope.attn_factor),
            detail="RoPE module's inv_freq and attn_factor",
        )


class ExLlamaV2Probe(_ExLlamaProbe):
    """ExLlamaV2: the sin/cos tables its device context builds for ``max_seq_len = seq_len``."""

    name = "exllamav2"
    distribution = "exllamav2"
    adapter = "exllamav2"
    ext = "exllamav2_ext"
    tolerance = TABLE_TOLERANCE

    def _run(self, module: Any, folder: Path, seq_len: int) -> Computation:
        cfg = module.ExLlamaV2Config()
        cfg.model_dir = str(folder)
        cfg.prepare(no_tensors=True)
        cfg.max_seq_len = int(seq_len)
        model = module.ExLlamaV2(cfg, lazy_load=True)
        try:
            owner = importlib.import_module("exllamav2.device").ExLlamaV2DeviceContext
            contexts = model.device_context
        except ImportError:  # 0.1.8 and earlier
            owner = importlib.import_module("exllamav2.model").ExLlamaV2DeviceTensors
            model.device_tensors = contexts = []
        # a device context without its constructor (which opens a CUDA stream), tables built on CPU
        ctx = object.__new__(owner)
        ctx.model, ctx.device_idx, ctx.archparams = model, -1, getattr(cfg.arch, "lm", cfg.arch)
        ctx.prepare_sincos()
        contexts.append(ctx)
        sin, cos = (ctx.sin[0], ctx.cos[0]) if isinstance(ctx.sin, list) else (ctx.sin, ctx.cos)
        sin = sin.reshape(sin.shape[-2], sin.shape[-1])
        cos = cos.reshape(cos.shape[-2], cos.shape[-1])
        inv, attention, residual = frequencies_from_tables(sin, cos)
        if residual > 0.05:
            # not one frequency vector: per-position tables (a dynamic method, row p built for length p+1)
            s, c = _frequency_columns(sin[-1:], cos[-1:])
            return Computation(
                "ok",
                attention_factor=attention,
                row=(int(sin.shape[0]) - 1, s[0].tolist(), c[0].tolist()),
                detail=f"per-position sin/cos tables of {sin.shape[0]} rows; their last row compared",
            )
        return Computation(
            "ok",
            inv_freq=inv,
            attention_factor=attention,
            detail=f"sin/cos tables of {sin.shape[0]} rows, frequencies fitted from them (fp16)",
        )


def _frequency_columns(sin: Any, cos: Any) -> tuple[Any, Any]:
    """One column per frequency: NeoX tables repeat the half (``cat(freqs, freqs)``), GPT-J pairs."""
    import numpy as np

    s = sin.double().cpu().numpy()
    c = cos.double().cpu().numpy()
    half = s.shape[1] // 2
    if np.allclose(s[:, :half], s[:, half:]) and np.allclose(c[:, :half], c[:, half:]):
        return s[:, :half], c[:, :half]
    return s[:, 0::2], c[:, 0::2]


def frequencies_from_tables(sin: Any, cos: Any) -> tuple[list[float], float, float]:
    """``(inv_freq, attention_factor, residual)`` behind rotary tables ``[positions, rotary_dim]``.

    The amplitude is the attention factor; each frequency is the least-squares slope of its
    unwrapped angle against the position; ``residual`` is the largest angle (radians) off that
    line, large when the table is not one frequency vector.
    """
    import numpy as np

    s, c = _frequency_columns(sin, cos)
    attention = float(np.sqrt(s**2 + c**2).mean())
    angle = np.unwrap(np.arctan2(s, c), axis=0)
    p = np.arange(s.shape[0], dtype=np.float64)
    p_centered = p - p.mean()
    slopes = (p_centered[:, None] * (angle - angle.mean(axis=0))).sum(axis=0) / (p_centered**2).sum()
    fitted = angle.mean(axis=0) + p_centered[:, None] * slopes
    residual = float(np.abs(angle - fitted).max())
    return [float(x) for x in slopes], attention, residual
