"""Hugging Face interoperability: import and export BERT, RoBERTa, DistilBERT, GPT-2, Llama,
Mistral, T5, BART, Marian, Mamba, Mamba-2, Jamba, Mixtral and Switch Transformers.

``from_hf(dir)`` reads a local HF checkpoint directory into an archlab model (and tokenizer);
``to_hf(model_or_dir, out)`` writes one that ``transformers`` loads with the same logits. The
HF key maps live in the package :mod:`archlab.convert.families` (one module per family) and
nowhere else. GGUF files (llama.cpp's format, e.g. the 4-bit SmolLM2-135M of ``archlab models
install``) import as Llama models: ``from_gguf`` / ``from_hf`` take a ``.gguf`` file, a
directory holding one or a model name (:mod:`archlab.convert.gguf`).
"""

from archlab.convert.core import (
    HFImport,
    ImportedState,
    archlab_to_hf,
    detect_family,
    from_gguf,
    from_hf,
    gguf_model_dir,
    hf_config_for,
    hf_family_for,
    hf_model_config,
    hf_to_archlab,
    load_hf_weights,
    resolve_checkpoint,
    to_hf,
)
from archlab.convert.families import ARCHITECTURES, FAMILIES
from archlab.convert.hf_io import HFCheckpoint, read_hf_config

__all__ = [
    "ARCHITECTURES",
    "FAMILIES",
    "HFCheckpoint",
    "HFImport",
    "ImportedState",
    "archlab_to_hf",
    "detect_family",
    "from_gguf",
    "from_hf",
    "gguf_model_dir",
    "hf_config_for",
    "hf_family_for",
    "hf_model_config",
    "hf_to_archlab",
    "load_hf_weights",
    "read_hf_config",
    "resolve_checkpoint",
    "to_hf",
]
