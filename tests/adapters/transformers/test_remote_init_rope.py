"""Remote code in the common 2023-24 style: ``_init_rope`` picks a rotary class from
``config.rope_scaling["type"]`` (linear, or a dynamic-NTK class that recomputes its base past the
cache), as Llama's own modelling code did up to transformers 4.47 and remote code copied.

* A model that implements its own config comes out unchanged (same logits with and without
  ropepatch, inside and past ``max_position_embeddings``).
* An override applies without breaking the remote code: its config stays in its own dialect (a
  rewritten one made ``_init_rope`` raise ``KeyError: 'type'``), and the rotary modules it builds
  carry the override. References: transformers' ``ROPE_INIT_FUNCTIONS`` (YaRN), and the remote
  code's own dynamic class at the overridden factor.

The toy is written by the test (tiny dims, seeded weights) and loaded with ``trust_remote_code``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

MAX = 32  # the toy's max_position_embeddings
INSIDE, PAST = 20, 80  # sequence lengths inside and past it

CONFIG_PY = """
from transformers import PretrainedConfig


class ToyLlamaConfig(PretrainedConfig):
    model_type = "toy_llama_2023"

    def __init__(self, vocab_size=128, hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                 max_position_embeddings=32, rope_theta=10000.0, rope_scaling=None, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_hidden_layers = num_hidden_layers
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self._rope_scaling_validation()
        super().__init__(**kwargs)

    def _rope_scaling_validation(self):
        if self.rope_scaling is None:
            return
        if not isinstance(self.rope_scaling, dict) or len(self.rope_scaling) != 2:
            raise ValueError(f"rope_scaling must be {{type, factor}}, got {self.rope_scaling}")
        if self.rope_scaling.get("type") not in ("linear", "dynamic"):
            raise ValueError(f"rope_scaling type must be linear or dynamic, got {self.rope_scaling}")
        factor = self.rope_scaling.get("factor")
        if not isinstance(factor, (int, float)) or factor <= 1.0:
            raise ValueError(f"rope_scaling factor must be a number > 1, got {factor}")
"""

MODELING_PY = '''
import math

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_toyllama import ToyLlamaConfig


class ToyRotaryEmbedding(nn.Module):
    def __init__(self, dim, max_position_embeddings=2048, base=10000, device=None):
        super().__init__()
        self.dim = dim
        self.max_position_embeddings = max_position_embeddings
        self.base = base
        self.register_buffer("inv_freq", self._plain_inv_freq(device), persistent=False)
        self._set_cos_sin_cache(max_position_embeddings, self.inv_freq.device, torch.get_default_dtype())

    def _plain_inv_freq(self, device):
        return 1.0 / (self.base ** (torch.arange(0, self.dim, 2, device=device).float() / self.dim))

    def _set_cos_sin_cache(self, seq_len, device, dtype):
        self.max_seq_len_cached = seq_len
        t = torch.arange(seq_len, device=device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos().to(dtype), persistent=False)
        self.register_buffer("sin_cached", emb.sin().to(dtype), persistent=False)

    def reset(self):
        """Recompute the non-persistent buffers (transformers 5 loads them as uninitialised memory)."""
        self.inv_freq = self._plain_inv_freq(self.inv_freq.device)
        self._set_cos_sin_cache(self.max_position_embeddings, self.inv_freq.device, torch.get_default_dtype())

    def forward(self, x, seq_len=None):
        if seq_len > self.max_seq_len_cached:
            self._set_cos_sin_cache(seq_len, x.device, x.dtype)
        return self.cos_cached[:seq_len].to(x.dtype), self.sin_cached[:seq_len].to(x.dtype)


class ToyLinearScalingRotaryEmbedding(ToyRotaryEmbedding):
    def __init__(self, dim, max_position_embeddings=2048, base=10000, device=None, scaling_factor=1.0):
        self.scaling_factor = scaling_factor
        super().__init__(dim, max_position_embeddings, base, device)

    def _set_cos_sin_cache(self, seq_len, device, dtype):
        self.max_seq_len_cached = seq_len
        t = torch.arange(seq_len, device=device, dtype=self.inv_freq.dtype) / self.scaling_factor
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos().to(dtype), persistent=False)
        self.register_buffer("sin_cached", emb.sin().to(dtype), persistent=False)


class ToyDynamicNTKScalingRotaryEmbedding(ToyRotaryEmbedding):
    def __init__(self, dim, max_position_embeddings=2048, base=10000, device=None, scaling_factor=1.0):
        self.scaling_factor = scaling_factor
        super().__init__(dim, max_position_embeddings, base, device)

    def _set_cos_sin_cache(self, seq_len, device, dtype):
        self.max_seq_len_cached = seq_len
        if seq_len > self.max_position_embeddings:
            ratio = self.scaling_factor * seq_len / self.max_position_embeddings - (self.scaling_factor - 1)
            base = self.base * ratio ** (self.dim / (self.dim - 2))
            inv_freq = 1.0 / (base ** (torch.arange(0, self.dim, 2, device=device).float() / self.dim))
            self.register_buffer("inv_freq", inv_freq, persistent=False)
        t = torch.arange(seq_len, device=device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos().to(dtype), persistent=False)
        self.register_buffer("sin_cached", emb.sin().to(dtype), persistent=False)


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class ToyAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.max_position_embeddings = config.max_position_embeddings
        self.rope_theta = config.rope_theta
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self._init_rope()

    def _init_rope(self):
        # transformers 5 turns a missing rope_scaling into {"rope_type": "default", ...}
        if self.config.rope_scaling is None or self.config.rope_scaling.get("rope_type") == "default":
            self.rotary_emb = ToyRotaryEmbedding(self.head_dim, self.max_position_embeddings, base=self.rope_theta)
            return
        scaling_type = self.config.rope_scaling["type"]
        scaling_factor = self.config.rope_scaling["factor"]
        if scaling_type == "linear":
            cls = ToyLinearScalingRotaryEmbedding
        elif scaling_type == "dynamic":
            cls = ToyDynamicNTKScalingRotaryEmbedding
        else:
            raise ValueError(f"Unknown RoPE scaling type {scaling_type}")
        self.rotary_emb = cls(
            self.head_dim, self.max_position_embeddings, base=self.rope_theta, scaling_factor=scaling_factor
        )

    def forward(self, x, position_ids):
        b, n, h = x.shape
        q, k, v = self.qkv_proj(x).split(h, dim=-1)
        q, k, v = (t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        cos, sin = self.rotary_emb(v, seq_len=n)
        cos, sin = cos[position_ids].unsqueeze(1), sin[position_ids].unsqueeze(1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        scores = q @ k.transpose(2, 3) / math.sqrt(self.head_dim)
        mask = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        out = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, n, h))


class ToyLlamaForCausalLM(PreTrainedModel):
    config_class = ToyLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(ToyAttention(config) for _ in range(config.num_hidden_layers))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, ToyRotaryEmbedding):
            module.reset()

    def forward(self, input_ids, **kwargs):
        n = input_ids.shape[1]
        position_ids = torch.arange(n, device=input_ids.device)[None].expand(input_ids.shape[0], n)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = x + layer(x, position_ids)
        return CausalLMOutput(logits=self.lm_head(x))
'''


def _checkpoint(folder: Path, rope_scaling: dict[str, Any] | None) -> Path:
    """The toy with ``rope_scaling`` in its config.json; the weights are the same for every folder."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "configuration_toyllama.py").write_text(CONFIG_PY)
    (folder / "modeling_toyllama.py").write_text(MODELING_PY)
    config = {
        "model_type": "toy_llama_2023",
        "architectures": ["ToyLlamaForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_toyllama.ToyLlamaConfig",
            "AutoModelForCausalLM": "modeling_toyllama.ToyLlamaForCausalLM",
        },
        "vocab_size": 128,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "max_position_embeddings": MAX,
        "rope_theta": 10000.0,
        "rope_scaling": rope_scaling,
    }
    (folder / "config.json").write_text(json.dumps(config))
    gen = torch.Generator().manual_seed(0)
    weights = {
        "embed_tokens.weight": torch.randn(128, 64, generator=gen) * 0.5,
        "lm_head.weight": torch.randn(128, 64, generator=gen) * 0.2,
    }
    for i in range(2):
        weights[f"layers.{i}.qkv_proj.weight"] = torch.randn(192, 64, generator=gen) * 0.3
        weights[f"layers.{i}.o_proj.weight"] = torch.randn(64, 64, generator=gen) * 0.1
    save_file(weights, str(folder / "model.safetensors"))
    return folder


def _load(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()


IDS = torch.randint(0, 128, (1, PAST), generator=torch.Generator().manual_seed(1))


def _logits(model: Any) -> dict[int, Any]:
    with torch.no_grad():
        return {n: model(IDS[:, :n]).logits for n in (INSIDE, PAST)}


def _yarn_reference() -> tuple[Any, float]:
    """transformers' YaRN for this toy's head (d=16), factor 4 over the original 32 positions."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        max_position_embeddings=4 * MAX,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": MAX,
        },
    )
    inv, attention = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    return inv, float(attention)


def _hand_set(folder: Path, inv: Any, attention: float) -> Any:
    """The plain toy (loaded without ropepatch) with ``inv`` and the attention factor set by hand."""
    import ropepatch

    assert not ropepatch.is_enabled()
    model = _load(folder)
    for layer in model.layers:
        rot = layer.rotary_emb
        assert type(rot).__name__ == "ToyRotaryEmbedding"
        rot.inv_freq = inv.clone()
        rot._set_cos_sin_cache(MAX, inv.device, torch.float32)
        rot.register_forward_hook(lambda _m, _a, out: tuple(o * attention for o in out))
    return model


SCALINGS = [{"type": "dynamic", "factor": 2.0}, {"type": "linear", "factor": 2.0}]


@pytest.mark.parametrize("rope_scaling", SCALINGS, ids=lambda r: r["type"])
def test_a_remote_model_implementing_its_config_comes_out_unchanged(rope_scaling: Any, tmp_path: Path) -> None:
    import ropepatch

    folder = _checkpoint(tmp_path / "acme__toy-remote", rope_scaling)
    plain_folder = _checkpoint(tmp_path / "acme__toy-plain", None)
    without = _logits(_load(folder))
    unscaled = _logits(_load(plain_folder))
    assert not torch.allclose(without[PAST], unscaled[PAST], atol=1e-4)  # the remote class does scale
    ropepatch.enable()
    model = _load(folder)
    assert type(model.layers[0].rotary_emb).__name__.startswith(f"Toy{rope_scaling['type'].capitalize()}")
    assert not hasattr(model.layers[0].rotary_emb, "_ropepatch_rotary")
    assert dict(model.config.rope_scaling)["type"] == rope_scaling["type"]
    got = _logits(model)
    for n in (INSIDE, PAST):
        assert torch.equal(got[n], without[n]), n


@pytest.mark.parametrize("rope_scaling", [*SCALINGS, None], ids=lambda r: r["type"] if r else "plain")
@pytest.mark.parametrize("route", ["kwargs", "per_model", "patch_model"])
def test_a_yarn_override_applies_to_remote_code(
    rope_scaling: Any, route: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ropepatch

    monkeypatch.delenv("ROPEPATCH", raising=False)
    folder = _checkpoint(tmp_path / "acme__toy-remote", rope_scaling)
    inv, attention = _yarn_reference()
    assert attention == pytest.approx(0.1 * torch.log(torch.tensor(4.0)).item() + 1)
    want = _logits(_hand_set(_checkpoint(tmp_path / "acme__toy-plain", None), inv, attention))
    override = {"method": "yarn", "factor": 4.0, "original_max_position_embeddings": MAX}
    if route == "kwargs":
        ropepatch.enable(**override)
        model = _load(folder)
    elif route == "per_model":
        ropepatch.enable(per_model={"*toy-remote*": override})
        model = _load(folder)
    else:
        model = _load(folder)
        assert ropepatch.patch_model(model, **override) is model
    # the remote code still reads its own dialect
    assert model.config.rope_scaling == rope_scaling or dict(model.config.rope_scaling or {}).get("type") == (
        rope_scaling or {}
    ).get("type")
    got = _logits(model)
    for layer in model.layers:
        assert torch.allclose(layer.rotary_emb.inv_freq, inv, rtol=1e-6, atol=0)
    for n in (INSIDE, PAST):
        assert torch.allclose(got[n], want[n], rtol=0, atol=1e-5), (n, (got[n] - want[n]).abs().max())


def test_a_factor_override_keeps_the_remote_method(tmp_path: Path) -> None:
    """``factor=4`` on a dynamic x2 remote checkpoint: dynamic x4, as the remote code itself computes it."""
    import ropepatch

    folder = _checkpoint(tmp_path / "acme__toy-remote", {"type": "dynamic", "factor": 2.0})
    want = _logits(_load(_checkpoint(tmp_path / "acme__toy-x4", {"type": "dynamic", "factor": 4.0})))
    before = _logits(_load(folder))
    assert not torch.allclose(before[PAST], want[PAST], atol=1e-4)
    ropepatch.enable(factor=4.0)
    model = _load(folder)
    assert model.config.rope_scaling["factor"] == 2.0  # the config as the remote code wrote it
    got = _logits(model)
    for n in (INSIDE, PAST):
        assert torch.allclose(got[n], want[n], rtol=0, atol=1e-5), (n, (got[n] - want[n]).abs().max())
