"""The objectives that stand on their own: every one but distillation, which wraps one of them
(its ``base``). Both the full registry (``archlab.objectives.OBJECTIVES``, these plus
distillation) and :mod:`archlab.objectives.distill` build on this one, so neither imports the
other."""

from __future__ import annotations

from typing import Any

from archlab.errors import ConfigError
from archlab.objectives.base import Objective, SpecialTokens
from archlab.objectives.contrastive import Contrastive
from archlab.objectives.denoise import Denoising, SpanCorruption
from archlab.objectives.lm import CausalLM, Classification, MaskedLM, PrefixLM, Seq2Seq
from archlab.objectives.tokcls import TokenClassification

BASE_OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (CausalLM, PrefixLM, MaskedLM, SpanCorruption, Denoising, Seq2Seq, Classification,
                           Contrastive, TokenClassification)
}


def make_base_objective(name: str, special: SpecialTokens, arch: str, max_len: int = 512,
                        **options: Any) -> Objective:
    """Stand-alone objective ``name`` for a model of family ``arch``; errors name the choices."""
    if name not in BASE_OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose one of: {', '.join(BASE_OBJECTIVES)}")
    return BASE_OBJECTIVES[name](special, arch, max_len, **options)


__all__ = ["BASE_OBJECTIVES", "make_base_objective"]
