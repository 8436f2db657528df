"""Mistral (Jiang et al. 2023; transformers ``models/mistral``): Llama's block without biases,
plus sliding-window attention.
"""

from __future__ import annotations

from archlab.convert.families.llama import Llama
from archlab.errors import ArchlabError


class Mistral(Llama):
    name = "mistral"
    model_type = "mistral"
    architectures = ("MistralForCausalLM",)
    sliding_window = True

    def model_config(self, hf, arch, ck):
        types = hf.get("layer_types")
        if types and len(set(types)) > 1:
            raise ArchlabError(f"mistral: layer_types={sorted(set(types))} is not supported "
                               "(archlab applies one attn_window to every layer)")
        for key in ("attention_bias", "mlp_bias"):
            if hf.get(key):
                raise ArchlabError(f"mistral: {key}=true is not supported (Mistral has no biases)")
        kw = super().model_config(hf, arch, ck)
        w = hf.get("sliding_window")
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise ArchlabError(f"mistral: sliding_window={w!r} is not valid (a positive integer or null)")
        kw["attn_window"] = w  # HF: key j visible from query i when i - sliding_window < j <= i
        return kw

    def problems(self, cfg):
        p = super().problems(cfg)
        if cfg.bias:
            p.append("bias is True (mistral has no biases)")
        return p

    def hf_config(self, cfg, arch):
        d = super().hf_config(cfg, arch)
        for key in ("attention_bias", "mlp_bias"):
            d.pop(key)
        d["sliding_window"] = cfg.attn_window
        return d
