"""The transformers probe: build the model's own rotary-embedding module from the config, on CPU.

transformers turns the config dict into its config class (``AutoConfig.for_model``, which runs its
RoPE standardisation and validators); then a minimal model of the architecture's own
``<X>PreTrainedModel`` class builds ``<X>RotaryEmbedding(config)`` and runs ``post_init`` (the
weight initialisation that recomputes ``inv_freq``), so construction takes the same path as
``from_pretrained``/``from_config`` (and, with ropepatch enabled, through the adapter's model
hooks). A forward at the last position of ``seq_len`` runs the length-dependent updates (dynamic
NTK, LongRoPE's switch to the long factors). No attention or MLP weights are built: the rotary
module only reads the config.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from ropepatch.doctor.probe import Computation
from ropepatch.versions import installed_version

__all__ = ["TransformersProbe"]


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TransformersProbe:
    """Hugging Face transformers (4.43+ and 5.x: configs standardised, rotary module per model)."""

    name = "transformers"
    distribution = "transformers"
    adapter: str | None = "transformers"

    def problem(self) -> str | None:
        return None if installed_version(self.distribution) is not None else "transformers is not installed"

    def version(self) -> str | None:
        v = installed_version(self.distribution)
        return str(v) if v is not None else None

    def compute(self, config: Mapping[str, Any], seq_len: int, *, patched: bool) -> Computation:
        model_type = config.get("model_type")
        if not model_type:
            return Computation("unsupported", error="no model_type: not a transformers config.json")
        from transformers import AutoConfig
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        if model_type not in CONFIG_MAPPING:
            return Computation(
                "unsupported",
                error=f"model_type {model_type!r} is not built into transformers {self.version()}; "
                "the checkpoint needs its own modeling code (trust_remote_code)",
            )
        notes: list[str] = []
        with warnings.catch_warnings(record=True) as caught, _captured_logs() as logged:
            warnings.simplefilter("always")
            try:
                cfg = AutoConfig.for_model(**dict(config))
            except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
                return Computation("fails", error=f"config does not load: {_short(exc)}")
            try:
                cls, base = rotary_class(cfg)
            except LookupError as exc:
                return Computation("unsupported", error=str(exc))
            try:
                module = _build(cls, base, cfg)
                inv, attention = _run_at(module, seq_len)
            except Exception as exc:  # noqa: BLE001
                return Computation("fails", error=f"{cls.__name__} fails: {_short(exc)}")
        messages = [str(w.message) for w in caught] + logged
        notes.extend(m.splitlines()[0][:200] for m in messages if "rope" in m.lower())
        rope_type = getattr(module, "rope_type", None)
        return Computation(
            "ok",
            inv_freq=inv,
            attention_factor=attention,
            detail=f"{cls.__name__}, rope_type={rope_type!r}",
            notes=list(dict.fromkeys(notes)),
        )


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _captured_logs() -> Iterator[list[str]]:
    """transformers' RoPE warnings go to the report, not to the terminal."""
    logger = logging.getLogger("transformers")
    capture = _Capture()
    saved = logger.handlers[:], logger.propagate
    logger.handlers = [capture]
    logger.propagate = False
    try:
        yield capture.messages
    finally:
        logger.handlers, logger.propagate = saved


def rotary_class(cfg: Any) -> tuple[Any, Any]:
    """The rotary-embedding class the architecture's model builds (``LlamaRotaryEmbedding``...) and
    the architecture's ``PreTrainedModel`` base class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

    model_type = cfg.model_type
    model_name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type) or MODEL_MAPPING_NAMES.get(model_type)
    module_name = f"transformers.models.{model_type.replace('-', '_')}.modeling_{model_type.replace('-', '_')}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"no modeling module for {model_type!r}: {exc}") from None
    candidates = [
        getattr(module, n)
        for n in dir(module)
        if n.endswith("RotaryEmbedding")
        and isinstance(getattr(module, n), type)
        and getattr(module, n).__module__ == module.__name__
    ]
    if not candidates:
        raise LookupError(f"{module_name} defines no RotaryEmbedding class")
    from transformers import PreTrainedModel

    name = model_name if isinstance(model_name, str) else ""  # a few mapping entries are tuples
    prefix = name.replace("ForCausalLM", "").replace("Model", "")
    chosen = next((c for c in candidates if c.__name__ == f"{prefix}RotaryEmbedding"), None)
    if chosen is None:
        chosen = sorted(candidates, key=lambda c: len(c.__name__))[0]
    bases = [
        getattr(module, n)
        for n in dir(module)
        if n.endswith("PreTrainedModel")
        and isinstance(getattr(module, n), type)
        and issubclass(getattr(module, n), PreTrainedModel)
    ]
    if not bases:
        raise LookupError(f"{module_name} defines no PreTrainedModel class")
    base = next((b for b in bases if b.__name__ == f"{prefix}PreTrainedModel"), bases[0])
    return chosen, base


def _build(rotary_cls: Any, base: Any, cfg: Any) -> Any:
    """``rotary_cls(config)`` built inside a one-module model of the architecture's base class."""

    class RotaryProbeModel(base):  # type: ignore[misc, valid-type]
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.rotary_emb = rotary_cls(config=config)
            self.post_init()

    return RotaryProbeModel(cfg).rotary_emb


def _run_at(module: Any, seq_len: int) -> tuple[list[float], float]:
    import torch

    inv = _inv_freq(module)
    x = torch.zeros(1, 1, 1, dtype=torch.float32)
    position_ids = torch.tensor([[max(0, int(seq_len) - 1)]])
    with torch.no_grad():
        module(x, position_ids)  # runs @dynamic_rope_update for length-dependent types
    inv = _inv_freq(module)
    attention = getattr(module, "attention_scaling", None)
    if attention is None:
        attention = 1.0
    return [float(v) for v in inv.double().tolist()], float(attention)


def _inv_freq(module: Any) -> Any:
    import torch

    inv = getattr(module, "inv_freq", None)
    if isinstance(inv, torch.Tensor):
        return inv
    for name, buf in module.named_buffers(recurse=False):  # layer-typed models: "<type>_inv_freq"
        if name.endswith("inv_freq") and not name.startswith("original"):
            return buf
    raise LookupError(f"{type(module).__name__} has no inv_freq buffer")
