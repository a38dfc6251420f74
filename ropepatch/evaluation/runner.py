"""Run an evaluation: for each variant, apply it through ropepatch, then score perplexity and passkeys.

The scaling is applied by the transformers adapter, the same code path users get: either
``ropepatch.patch_model(copy, **overrides)`` on a fresh copy of one loaded model per variant
(``strategy="patch"``, the default: loads once, holds the model twice) or a fresh
``from_pretrained`` inside ``ropepatch.temporarily_enabled(**overrides)`` per variant (``strategy="reload"``,
for models that do not fit twice). Every variant starts from the unpatched model: a patch rewrites
the model's config, which must not leak into the next variant's detection. After applying, the model's rotary buffers are read back and
compared with ``RopeSpec.frequencies`` so a variant that did not take effect is reported, not
silently measured as something else.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ropepatch.errors import RopeConfigError
from ropepatch.evaluation.passkey import min_length, model_predictor, passkey_accuracy
from ropepatch.evaluation.perplexity import cut_windows, model_scorer, perplexity_at_length
from ropepatch.evaluation.progress import progress_bar
from ropepatch.evaluation.variants import Variant, applied_spec

__all__ = ["EvalSettings", "LocalModel", "default_lengths", "read_rotary", "run_variants"]


@dataclass
class EvalSettings:
    """What to measure (lengths in tokens)."""

    lengths: list[int]
    windows: int = 8
    stride: int | None = None
    tail_fraction: float = 0.25
    passkey: bool = False
    passkey_lengths: list[int] | None = None
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    trials: int = 4
    seed: int = 0
    progress: bool = True


def default_lengths(original: int, longest: int | None = None) -> list[int]:
    """``L0/2, L0, 2 L0, 4 L0, 8 L0`` (up to ``longest`` when given)."""
    out = [max(2, original // 2), original, 2 * original, 4 * original, 8 * original]
    if longest is not None:
        out = [n for n in out if n <= longest]
    return sorted(set(out))


def read_rotary(model: Any) -> tuple[Any, float | None] | None:
    """The first rotary module's ``inv_freq`` tensor and attention factor, or ``None`` if it has none."""
    import torch

    for module in model.modules():
        inv = getattr(module, "inv_freq", None)
        if isinstance(inv, torch.Tensor) and inv.dim() == 1:
            scaling = getattr(module, "attention_scaling", None)
            return inv.detach().float().cpu(), (float(scaling) if scaling is not None else None)
    return None


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


class LocalModel:
    """A transformers causal LM on disk (or in memory) that variants are applied to."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        model: Any = None,
        dtype: str | None = None,
        device: str | None = None,
        strategy: str = "patch",
        trust_remote_code: bool = False,
    ) -> None:
        if (path is None) == (model is None):
            raise ValueError("give a checkpoint path or a model, not both")
        if strategy not in ("patch", "reload"):
            raise ValueError(f"strategy must be 'patch' or 'reload', got {strategy!r}")
        if model is not None and strategy == "reload":
            raise ValueError("an in-memory model can only be patched; 'reload' needs a path")
        self.path = os.fspath(path) if path is not None else None
        self.dtype = dtype
        self.device = device
        self.strategy = strategy
        self.trust_remote_code = trust_remote_code
        self._model = None
        self._pristine = model
        # the unpatched config: what ropepatch detects from, whatever a patch later does to model.config
        self._config = model.config.to_dict() if model is not None else None
        if model is not None:
            model.eval()

    def _from_pretrained(self) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        if self.path is None:
            raise RopeConfigError("this model handle was made from a model object; it has no path to load from")
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.dtype is not None and self.dtype != "auto":
            kwargs["dtype"] = getattr(torch, self.dtype)
        elif self.dtype == "auto":
            kwargs["dtype"] = "auto"
        model: Any = AutoModelForCausalLM.from_pretrained(self.path, **kwargs)
        if self.device is not None:
            model = model.to(self.device)
        if self._config is None:
            from transformers import AutoConfig

            self._config = AutoConfig.from_pretrained(self.path, trust_remote_code=self.trust_remote_code).to_dict()
        return model.eval()

    def spec(self, variant: Variant) -> Any:
        """The spec ropepatch resolves for this checkpoint under the variant's overrides."""
        from ropepatch.detection import detect

        source: Any = self.path if self.path is not None else self._config
        return detect(source, emit_warnings=False, **variant.overrides)

    def apply(self, variant: Variant) -> Any:
        """A model with ``variant`` applied, built from the unpatched model (see the module docstring)."""
        import ropepatch

        if self.strategy == "reload":
            self._model = None
            with ropepatch.temporarily_enabled(**variant.overrides):
                self._model = self._from_pretrained()
            return self._model
        if self._pristine is None:
            self._pristine = self._model if self._model is not None else self._from_pretrained()
        self._model = None  # free the previous variant's copy first
        model = copy.deepcopy(self._pristine)
        ropepatch.patch_model(model, **variant.overrides)
        self._model = model
        return model

    def check(self, model: Any, variant: Variant) -> dict[str, Any]:
        """Compare the model's rotary buffers with the spec; ``ok`` is False when they disagree.

        ``applied`` describes the spec (see :func:`applied_spec`); its label says ``[model differs]``
        when the model's rotary buffers are not that spec, so no row claims a scaling it did not run.
        """
        spec = self.spec(variant)
        found = read_rotary(model)
        out: dict[str, Any] = {"spec": spec.summary(), "applied": applied_spec(spec)}
        if found is None:
            out.update(ok=None, note="no rotary module with an inv_freq buffer found")
            return out
        inv, scaling = found
        if spec.rotary_dim is None:
            spec = spec.replace(rotary_dim=2 * int(inv.numel()))
        ref, attention = spec.frequencies(None)
        if ref.numel() != inv.numel():
            out.update(ok=False, note=f"rotary size {inv.numel()} != spec's {ref.numel()}")
            out["applied"]["label"] += " [model differs]"
            return out
        rel = float(((inv - ref).abs() / ref.abs()).max())
        out["inv_freq_max_rel_diff"] = rel
        ok = rel <= 1e-5
        if scaling is not None:
            out["attention_factor"] = scaling
            out["attention_factor_rel_diff"] = _rel(scaling, attention)
            ok = ok and out["attention_factor_rel_diff"] <= 1e-5
        out["ok"] = ok
        if not ok:
            out["applied"]["label"] += " [model differs]"
        return out


def run_variants(
    handle: LocalModel,
    variants: Sequence[Variant],
    ids: Sequence[int],
    settings: EvalSettings,
    *,
    tokenizer: Any = None,
    bos: int | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Perplexity (and passkeys with ``settings.passkey``) for every variant; a JSON-safe dict."""
    points: list[dict[str, Any]] = []
    keys: list[dict[str, Any]] = []
    applied: list[dict[str, Any]] = []
    skipped_lengths = set()
    for variant in variants:
        start = time.time()
        model = handle.apply(variant)
        check = handle.check(model, variant)
        applied.append({"label": variant.label, "overrides": variant.describe(), **check})
        if check.get("ok") is False:
            log(f"WARNING {variant.label}: the model's RoPE does not match ropepatch's spec ({check})")
        spec_label = check["applied"]["label"]
        log(f"{variant.label:>14} applies {spec_label}")
        score = model_scorer(model)
        for length in settings.lengths:
            windows = cut_windows(ids, length, max_windows=settings.windows, stride=settings.stride, bos=bos)
            if not windows:
                skipped_lengths.add(length)
                continue
            with progress_bar(len(windows), f"{variant.label} @ {length}", enabled=settings.progress) as advance:
                point = perplexity_at_length(
                    score,
                    windows,
                    method=variant.label,
                    length=length,
                    tail_fraction=settings.tail_fraction,
                    progress=advance,
                )
            points.append(point.to_dict() | {"applied": spec_label})
            log(f"{variant.label:>14} {length:>7}  loss {point.nll:.3f}  last quarter {point.tail_nll:.3f}")
        if settings.passkey and tokenizer is not None:
            shortest = min_length(tokenizer, bos=bos)
            plens = [n for n in (settings.passkey_lengths or settings.lengths) if n >= shortest]
            if len(plens) < len(settings.passkey_lengths or settings.lengths):
                log(f"passkey: lengths under {shortest} tokens cannot hold the prompt; skipped")
            total = len(plens) * len(settings.depths) * settings.trials
            with progress_bar(total, f"{variant.label} passkey", enabled=settings.progress) as advance:
                rows = passkey_accuracy(
                    model_predictor(model),
                    tokenizer,
                    method=variant.label,
                    lengths=plens,
                    depths=settings.depths,
                    trials=settings.trials,
                    seed=settings.seed,
                    bos=bos,
                    progress=advance,
                )
            keys.extend(r.to_dict() | {"applied": spec_label} for r in rows)
        applied[-1]["seconds"] = round(time.time() - start, 2)
    return {
        "perplexity": points,
        "passkey": keys,
        "variants": applied,
        "lengths_without_windows": sorted(skipped_lengths),
    }
