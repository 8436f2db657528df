"""The registry of Hugging Face families: family name -> handler (:class:`Family`), and the
lookups :mod:`archlab.convert.core` detects a checkpoint's family with.

It imports every family module and none imports it, so there is no import cycle: a family
module imports :mod:`archlab.convert.families.base` (and the family it extends) only.
"""

from __future__ import annotations

from archlab.convert.families.bart import Bart
from archlab.convert.families.base import Family
from archlab.convert.families.bert import Bert
from archlab.convert.families.distilbert import DistilBert
from archlab.convert.families.gpt2 import GPT2
from archlab.convert.families.jamba import Jamba
from archlab.convert.families.llama import Llama
from archlab.convert.families.mamba import Mamba
from archlab.convert.families.mamba2 import Mamba2
from archlab.convert.families.marian import Marian
from archlab.convert.families.mistral import Mistral
from archlab.convert.families.mixtral import Mixtral
from archlab.convert.families.roberta import Roberta
from archlab.convert.families.switch import SwitchTransformers
from archlab.convert.families.t5 import T5

# The order is the tie-break of core.hf_family_for (a model two families represent equally
# well exports as the earlier one, e.g. a plain encoder as bert, not distilbert).
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Bert(), GPT2(), Llama(), T5(), Bart(), Mistral(), Roberta(), DistilBert(), Marian(),
    Mamba(), Mamba2(), Jamba(),
    Mixtral(), SwitchTransformers(),
)}
# what a model_type without "architectures" in its config is read as: the family's first class
DEFAULT_ARCHITECTURE: dict[str, str] = {f.model_type: f.architectures[0] for f in FAMILIES.values()}
MODEL_TYPES: dict[str, Family] = {f.model_type: f for f in FAMILIES.values()}
ARCHITECTURES: dict[str, Family] = {a: f for f in FAMILIES.values() for a in f.architectures}

__all__ = ["ARCHITECTURES", "DEFAULT_ARCHITECTURE", "FAMILIES", "MODEL_TYPES"]
