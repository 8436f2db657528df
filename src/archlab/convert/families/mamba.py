"""Mamba (Gu & Dao 2023; transformers ``models/mamba``, ``MambaMixer``): ``MambaForCausalLM``."""

from __future__ import annotations

from archlab.convert.families.base import _first_id
from archlab.convert.families.ssm import _expand, _inner, _PureSSM, _rank, _ssm_problems
from archlab.errors import ArchlabError


class Mamba(_PureSSM):
    name = "mamba"
    model_type = "mamba"
    architectures = ("MambaForCausalLM",)

    def model_config(self, hf, arch, ck):
        act = hf.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ArchlabError(f"mamba: hidden_act={act!r} is not supported (archlab's Mamba uses silu)")
        d = hf.get("hidden_size", 768)
        tied = bool(hf.get("tie_word_embeddings", True))
        p = ck.prefix
        if not ck.has("lm_head.weight"):
            tied = True
        elif ck.differs("lm_head.weight", f"{p}embeddings.weight"):
            tied = False
        n = hf.get("num_hidden_layers", 32)
        return dict(
            arch="decoder", vocab_size=hf.get("vocab_size", 50280), d_model=d, n_layers=n,
            n_heads=1, d_ff=1, layers="M" * n, position="none", norm="rmsnorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5), norm_position="pre", final_norm=True,
            tie_embeddings=tied, init_std=hf.get("initializer_range", 0.1),
            pad_token_id=_first_id(hf.get("pad_token_id")) or 0,
            bos_token_id=_first_id(hf.get("bos_token_id")) or 0,
            eos_token_id=_first_id(hf.get("eos_token_id")) or 0,
            ssm=dict(d_state=hf.get("state_size", 16), d_conv=hf.get("conv_kernel", 4),
                     expand=1, d_inner=_inner(hf, d), dt_rank=_rank(hf.get("time_step_rank"), d),
                     conv_bias=bool(hf.get("use_conv_bias", True)),
                     proj_bias=bool(hf.get("use_bias", False)),
                     dt_min=hf.get("time_step_min", 0.001), dt_max=hf.get("time_step_max", 0.1),
                     dt_init_floor=hf.get("time_step_floor", 1e-4)),
        )

    def problems(self, cfg):
        p = _ssm_problems(cfg, self.name, {"mamba"}, "none")
        if cfg.ssm_cfg.dt_limit is not None:
            p.append("ssm.dt_limit is set (mamba has no dt limit)")
        return p

    def hf_config(self, cfg, arch):
        s = cfg.ssm_cfg
        return {
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
            "state_size": s.d_state, "conv_kernel": s.d_conv, "expand": _expand(cfg),
            "intermediate_size": s.inner(cfg.d_model), "time_step_rank": s.rank(cfg.d_model),
            "use_bias": s.proj_bias, "use_conv_bias": s.conv_bias, "hidden_act": "silu",
            "layer_norm_epsilon": cfg.norm_eps, "initializer_range": cfg.init_std,
            "time_step_min": s.dt_min, "time_step_max": s.dt_max, "time_step_floor": s.dt_init_floor,
            "residual_in_fp32": True, "tie_word_embeddings": cfg.tie_embeddings,
            "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
        }
