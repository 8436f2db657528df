"""Tiny configs shared by the tests, and the layer options to sweep.

The option choices are read from ModelConfig's ``Literal`` field types, so a choice added
there is swept by every test that uses these tuples, instead of going untested."""

from __future__ import annotations

import typing
from typing import Any

from archlab.config import ModelConfig


def choices(field: str) -> tuple[str, ...]:
    """The values ``ModelConfig.<field>`` accepts (its ``Literal`` type)."""
    tp = typing.get_type_hints(ModelConfig)[field]
    if typing.get_origin(tp) is not typing.Literal:
        raise TypeError(f"ModelConfig.{field} is {tp}, not a Literal")
    return typing.get_args(tp)


ARCHS = choices("arch")
POSITIONS = choices("position")
NORMS = choices("norm")
NORM_POSITIONS = choices("norm_position")
ACTIVATIONS = choices("activation")
POOLINGS = choices("pooling")


def tiny(arch: str = "decoder", **kw: Any) -> ModelConfig:
    base = dict(arch=arch, vocab_size=61, d_model=32, n_heads=4, n_layers=2, d_ff=48,
                max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)
