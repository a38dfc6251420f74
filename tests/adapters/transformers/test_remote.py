"""A toy trust_remote_code checkpoint in the Falcon RefinedWeb style: ``RotaryEmbedding(head_dim,
base=10000)`` that never sees its config, built through transformers' dynamic-module loader."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

CONFIG_PY = """
from transformers import PretrainedConfig


class ToyRWConfig(PretrainedConfig):
    model_type = "toy_refinedweb"

    def __init__(self, vocab_size=128, hidden_size=64, n_head=4, n_layer=2, alibi=False, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.n_head = n_head
        self.n_layer = n_layer
        self.alibi = alibi
        super().__init__(**kwargs)
"""

MODELING_PY = '''
import math

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_toyrw import ToyRWConfig


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class RotaryEmbedding(nn.Module):
    """Base fixed at 10000 and a cos/sin cache keyed by length, as RefinedWeb code does."""

    def __init__(self, head_dim, base=10000):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.seq_len_cached = None
        self.cos_cached = None
        self.sin_cached = None

    def cos_sin(self, seq_len, device, dtype):
        if seq_len != self.seq_len_cached:
            t = torch.arange(seq_len, device=device, dtype=self.inv_freq.dtype)
            freqs = torch.outer(t, self.inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            self.cos_cached, self.sin_cached = emb.cos()[None], emb.sin()[None]
            self.seq_len_cached = seq_len
        return self.cos_cached.to(dtype), self.sin_cached.to(dtype)

    def forward(self, q, k):
        cos, sin = self.cos_sin(q.shape[1], q.device, q.dtype)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.hidden_size // config.n_head
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.maybe_rotary = RotaryEmbedding(self.head_dim)

    def forward(self, x):
        b, n, h = x.shape
        q, k, v = self.qkv(x).split(h, dim=-1)
        shape = lambda t: t.view(b, n, self.n_head, self.head_dim).transpose(1, 2).reshape(b * self.n_head, n, self.head_dim)
        q, k, v = shape(q), shape(k), shape(v)
        q, k = self.maybe_rotary(q, k)
        scores = q @ k.transpose(1, 2) / math.sqrt(self.head_dim)
        mask = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        out = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        out = out.view(b, self.n_head, n, self.head_dim).transpose(1, 2).reshape(b, n, h)
        return self.dense(out)


class ToyRWForCausalLM(PreTrainedModel):
    config_class = ToyRWConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Attention(config) for _ in range(config.n_layer))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        pass  # RefinedWeb-style: leaves non-persistent buffers to the loader

    def forward(self, input_ids, **kwargs):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = x + layer(x)
        return CausalLMOutput(logits=self.lm_head(x))
'''


@pytest.fixture(scope="module")
def remote_checkpoint(tmp_path_factory: Any) -> Path:
    """A folder named like LightOn's Alfred (NTK-YaRN s=4 per the known-checkpoint table), weights seeded."""
    from safetensors.torch import save_file

    import ropepatch

    ropepatch.disable()
    folder = tmp_path_factory.mktemp("remote") / "lightonai__alfred-40b-1023"
    folder.mkdir()
    (folder / "configuration_toyrw.py").write_text(CONFIG_PY)
    (folder / "modeling_toyrw.py").write_text(MODELING_PY)
    config = {
        "model_type": "toy_refinedweb",
        "architectures": ["ToyRWForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_toyrw.ToyRWConfig",
            "AutoModelForCausalLM": "modeling_toyrw.ToyRWForCausalLM",
        },
        "vocab_size": 128,
        "hidden_size": 64,
        "n_head": 4,
        "n_layer": 2,
        "alibi": False,
    }
    (folder / "config.json").write_text(json.dumps(config))
    gen = torch.Generator().manual_seed(0)
    weights = {
        "embed.weight": torch.randn(128, 64, generator=gen) * 0.5,
        "lm_head.weight": torch.randn(128, 64, generator=gen) * 0.2,
    }
    for i in range(2):
        weights[f"layers.{i}.qkv.weight"] = torch.randn(192, 64, generator=gen) * 0.3
        weights[f"layers.{i}.dense.weight"] = torch.randn(64, 64, generator=gen) * 0.1
    save_file(weights, str(folder / "model.safetensors"))
    return folder


def _load(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()


def test_remote_code_rotary_is_patched(remote_checkpoint: Path) -> None:
    import ropepatch

    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(1))
    spec = ropepatch.detect(remote_checkpoint, emit_warnings=False)
    assert spec.method == "ntk-yarn" and spec.effective_factor == 4.0
    inv, attention = spec.frequencies(None)
    # model card formula: b' = b (s+1)^(d/(d-2)), temperature 1 + 0.1 ln s (d=16 here)
    assert attention == pytest.approx(1.138629436111989)
    assert inv[1].item() == pytest.approx((10000 * 5 ** (16 / 14)) ** (-2 / 16), rel=1e-6)

    # reference: the same weights without ropepatch, the table and the temperature set by hand
    reference = _load(remote_checkpoint)
    for layer in reference.layers:
        rot = layer.maybe_rotary
        rot.inv_freq = inv.clone()
        rot.seq_len_cached = None
        rot.register_forward_hook(lambda _m, _a, out: tuple(o * attention for o in out))
    with torch.no_grad():
        expected = reference(ids).logits

    ropepatch.enable()
    model = _load(remote_checkpoint)
    with torch.no_grad():
        got = model(ids).logits
    for layer in model.layers:
        assert torch.allclose(layer.maybe_rotary.inv_freq, inv, rtol=1e-6, atol=0)
    assert torch.allclose(got, expected, rtol=0, atol=1e-5), (got - expected).abs().max()
    ropepatch.disable()
    unpatched = _load(remote_checkpoint)
    for layer in unpatched.layers:  # transformers 5 leaves this buffer uninitialised for remote code
        rot = layer.maybe_rotary
        rot.inv_freq = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
    with torch.no_grad():
        plain = unpatched(ids).logits
    assert not torch.allclose(plain, got, atol=1e-3)


def test_dynamic_method_on_remote_code_is_refused(remote_checkpoint: Path) -> None:
    import ropepatch
    from ropepatch.errors import RopeConfigError

    ropepatch.enable(method="dynamic", factor=4.0, original_max_position_embeddings=2048)
    with pytest.raises(RopeConfigError, match="length"):
        _load(remote_checkpoint)


def test_ntk_margin_vector_d64() -> None:
    """The known-table method's formula against the published Alfred vector (d=64, s=4)."""
    import ropepatch

    spec = ropepatch.detect(
        {"model_type": "falcon", "hidden_size": 256, "num_attention_heads": 4}, method="ntk-yarn", factor=4.0
    )
    inv, attention = spec.frequencies(None)
    assert inv[1].item() == pytest.approx(0.7119550592178845, rel=1e-6)
    assert inv[31].item() == pytest.approx(2.667042864326648e-05, rel=1e-6)
    assert attention == pytest.approx(1.138629436111989)
    assert math.isclose(attention**2, 1.2964769927807063, rel_tol=1e-12)
