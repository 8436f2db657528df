"""Mamba-2 (Dao & Gu 2024; transformers ``models/mamba2``, ``Mamba2Mixer`` with its gated
RMSNorm): ``Mamba2ForCausalLM``.
"""

from __future__ import annotations

import math
from typing import Any

from archlab.convert.families.base import _first_id
from archlab.convert.families.ssm import _expand, _PureSSM, _ssm_problems
from archlab.errors import ArchlabError


class Mamba2(_PureSSM):
    name = "mamba2"
    model_type = "mamba2"
    mixer = "mamba2"
    architectures = ("Mamba2ForCausalLM",)

    def model_config(self, hf, arch, ck):
        act = hf.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ArchlabError(f"mamba2: hidden_act={act!r} is not supported (archlab's Mamba-2 uses silu)")
        if hf.get("rms_norm", True) is False:
            raise ArchlabError("mamba2: rms_norm=false (no gated norm) is not supported")
        if hf.get("D_has_hdim", False):
            raise ArchlabError("mamba2: D_has_hdim=true is not supported (archlab keeps D per head)")
        d = hf.get("hidden_size", 4096)
        di = int(hf.get("expand", 2) * d)
        H, P = hf.get("num_heads", 128), hf.get("head_dim", 64)
        if H * P != di:
            raise ArchlabError(f"mamba2: num_heads * head_dim = {H * P} must equal expand * "
                               f"hidden_size = {di}")
        lim = hf.get("time_step_limit", (0.0, float("inf")))
        lim = None if lim is None else [_num(x) for x in lim]
        if lim is not None and lim[0] == 0.0 and math.isinf(lim[1]):
            lim = None
        tied = bool(hf.get("tie_word_embeddings", False))
        p = ck.prefix
        if not ck.has("lm_head.weight"):
            tied = True
        elif ck.differs("lm_head.weight", f"{p}embeddings.weight"):
            tied = False
        n = hf.get("num_hidden_layers", 64)
        return dict(
            arch="decoder", vocab_size=hf.get("vocab_size", 32768), d_model=d, n_layers=n,
            n_heads=1, d_ff=1, layers="S" * n, position="none", norm="rmsnorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5), norm_position="pre", final_norm=True,
            tie_embeddings=tied, init_std=hf.get("initializer_range", 0.1),
            pad_token_id=_first_id(hf.get("pad_token_id")) or 0,
            bos_token_id=_first_id(hf.get("bos_token_id")) or 0,
            eos_token_id=_first_id(hf.get("eos_token_id")) or 0,
            ssm=dict(d_state=hf.get("state_size", 128), d_conv=hf.get("conv_kernel", 4), expand=1,
                     d_inner=di, head_dim=P, n_groups=hf.get("n_groups", 8),
                     chunk_size=hf.get("chunk_size", 256), conv_bias=bool(hf.get("use_conv_bias", True)),
                     proj_bias=bool(hf.get("use_bias", False)), dt_limit=lim,
                     dt_min=hf.get("time_step_min", 0.001), dt_max=hf.get("time_step_max", 0.1),
                     dt_init_floor=hf.get("time_step_floor", 1e-4)),
        )

    def problems(self, cfg):
        return _ssm_problems(cfg, self.name, {"mamba2"}, "none")

    def hf_config(self, cfg, arch):
        s = cfg.ssm_cfg
        lim = s.dt_limit if s.dt_limit is not None else [0.0, float("inf")]
        # transformers writes non-finite floats as {"__float__": "Infinity"} in config.json
        lim = [{"__float__": "Infinity"} if math.isinf(x) else x for x in lim]
        return {
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
            "state_size": s.d_state, "conv_kernel": s.d_conv, "expand": _expand(cfg),
            "num_heads": s.heads(cfg.d_model), "head_dim": s.head_dim, "n_groups": s.n_groups,
            "chunk_size": s.chunk_size, "use_bias": s.proj_bias, "use_conv_bias": s.conv_bias,
            "hidden_act": "silu", "layer_norm_epsilon": cfg.norm_eps, "rms_norm": True,
            "initializer_range": cfg.init_std, "time_step_limit": list(lim),
            "time_step_min": s.dt_min, "time_step_max": s.dt_max, "time_step_floor": s.dt_init_floor,
            "residual_in_fp32": True, "tie_word_embeddings": cfg.tie_embeddings,
            "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
        }


def _num(x: Any) -> float:
    if isinstance(x, dict) and "__float__" in x:  # transformers' JSON form of inf / nan
        return float(x["__float__"])
    return float(x)
