"""Tiny configs shared by the tests."""

from __future__ import annotations

from typing import Any

from archlab.config import ModelConfig

ARCHS = ("encoder", "decoder", "prefix-lm", "encoder-decoder")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "t5-relative", "none")
NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "swiglu", "geglu", "geglu_tanh", "reglu")


def tiny(arch: str = "decoder", **kw: Any) -> ModelConfig:
    base = dict(arch=arch, vocab_size=61, d_model=32, n_heads=4, n_layers=2, d_ff=48,
                max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)
