"""Hugging Face families: config translation and the explicit weight key maps.

Each family knows, in both directions,

- how an HF ``config.json`` becomes an archlab :class:`ModelConfig` and back, refusing (with one
  line naming the option) anything archlab cannot reproduce exactly;
- which HF tensors make each archlab parameter (:class:`Rule`).

Layout: :mod:`~archlab.convert.families.base` holds the shared rules and the :class:`Family`
base class; one module per family (``bert``, ``roberta``, ``distilbert``, ``gpt2``, ``llama``,
``mistral``, ``t5``, ``bart``, ``marian``, ``mamba``, ``mamba2``, ``jamba`` with the shared
SSM rules in ``ssm``, ``mixtral``, ``switch``); :mod:`~archlab.convert.families.registry` maps
family names to them. The definitions follow the HF modeling code (transformers
``models/<family>``) and the papers each module cites. HF key names live in this package and
nowhere else.
"""

from __future__ import annotations

from archlab.convert.families.base import ExpertRule, Family, Rule
from archlab.convert.families.registry import ARCHITECTURES, DEFAULT_ARCHITECTURE, FAMILIES, MODEL_TYPES

__all__ = ["ARCHITECTURES", "DEFAULT_ARCHITECTURE", "FAMILIES", "MODEL_TYPES", "ExpertRule", "Family", "Rule"]
