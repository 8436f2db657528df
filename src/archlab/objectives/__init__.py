"""Training objectives, independent of the backbone: each builds inputs/labels and the loss."""

from __future__ import annotations

from typing import Any

from archlab.errors import ConfigError
from archlab.objectives.base import (
    IGNORE,
    Batch,
    Example,
    LossOutput,
    Objective,
    SpecialTokens,
    pad_labels,
    pad_sequences,
    token_loss,
)
from archlab.objectives.contrastive import Contrastive
from archlab.objectives.denoise import Denoising, SpanCorruption
from archlab.objectives.distill import Distillation
from archlab.objectives.lm import CausalLM, Classification, MaskedLM, PrefixLM, Seq2Seq
from archlab.objectives.registry import BASE_OBJECTIVES
from archlab.objectives.tokcls import TokenClassification

# the stand-alone objectives, then distillation (which wraps one of them)
OBJECTIVES: dict[str, type[Objective]] = {**BASE_OBJECTIVES, Distillation.name: Distillation}


def make_objective(name: str, special: SpecialTokens, arch: str, max_len: int = 512, **options: Any) -> Objective:
    """Objective ``name`` for a model of family ``arch``; errors name the valid choices."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](special, arch, max_len, **options)


__all__ = [
    "IGNORE",
    "OBJECTIVES",
    "Batch",
    "CausalLM",
    "Classification",
    "Contrastive",
    "Denoising",
    "Distillation",
    "Example",
    "LossOutput",
    "MaskedLM",
    "Objective",
    "PrefixLM",
    "Seq2Seq",
    "SpanCorruption",
    "SpecialTokens",
    "TokenClassification",
    "make_objective",
    "pad_labels",
    "pad_sequences",
    "token_loss",
]
