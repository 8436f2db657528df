"""archlab.model: one Stack, one attention module, one mask builder, every family."""

from archlab.model.attention import Attention, KVCache
from archlab.model.flops import FlopCount, ParamCount, count_params, flops_per_example, flops_per_token
from archlab.model.masks import AttnMask, build_mask
from archlab.model.presets import get_preset, preset_names
from archlab.model.transformer import Block, LMHead, ModelOutput, Stack, Transformer, build_model, pool_states

__all__ = [
    "Attention",
    "AttnMask",
    "Block",
    "FlopCount",
    "KVCache",
    "LMHead",
    "ModelOutput",
    "ParamCount",
    "Stack",
    "Transformer",
    "build_mask",
    "build_model",
    "count_params",
    "flops_per_example",
    "flops_per_token",
    "get_preset",
    "pool_states",
    "preset_names",
]
