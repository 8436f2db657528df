"""Llama (Touvron et al. 2023; transformers ``models/llama``): ``LlamaForCausalLM``."""

from __future__ import annotations

from archlab.convert.families.base import (
    _GATED,
    _UNGATED,
    Family,
    Rule,
    _attn_dropout,
    _cat,
    _close,
    _first_id,
    _hf_act,
    _lin,
)
from archlab.errors import ArchlabError


class Llama(Family):
    name = "llama"
    model_type = "llama"
    prefix = "model."
    architectures = ("LlamaForCausalLM",)

    def model_config(self, hf, arch, ck):
        rp = hf.get("rope_parameters") or {}
        rs = hf.get("rope_scaling") or {}
        if not isinstance(rp, dict) or not isinstance(rs, dict):
            raise ArchlabError("llama: rope_parameters / rope_scaling must be objects")
        for src, key in ((rs, "rope_scaling"), (rp, "rope_parameters")):
            kind = src.get("rope_type", src.get("type", "default"))
            if kind != "default":
                raise ArchlabError(f"llama: {key} type {kind!r} is not supported (archlab has plain RoPE)")
        frac = rp.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
        if frac != 1.0:
            raise ArchlabError(f"llama: partial_rotary_factor={frac} is not supported")
        theta = rp.get("rope_theta", hf.get("rope_theta", 10000.0))
        attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
        if attn_bias != mlp_bias:
            raise ArchlabError(f"llama: attention_bias={attn_bias} with mlp_bias={mlp_bias} is not "
                               "supported (archlab has one bias flag for all projections)")
        act = _hf_act(hf.get("hidden_act", "silu"), "hidden_act", "llama")
        if act not in _GATED:
            raise ArchlabError(f"llama: hidden_act={hf.get('hidden_act')!r} has no gated form in archlab")
        d, h = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
        head_dim = hf.get("head_dim") or d // h
        p = ck.prefix
        tied = bool(hf.get("tie_word_embeddings", False))
        if not ck.has("lm_head.weight"):
            tied = True  # HF ties a missing head to the embeddings
        elif ck.differs("lm_head.weight", f"{p}embed_tokens.weight"):
            tied = False
        eos = _first_id(hf.get("eos_token_id", 2))
        bos = _first_id(hf.get("bos_token_id", 1))
        pad = _first_id(hf.get("pad_token_id"))
        return dict(
            arch="decoder",
            vocab_size=hf.get("vocab_size", 32000),
            d_model=d,
            n_heads=h,
            n_kv_heads=hf.get("num_key_value_heads") or h,
            head_dim=head_dim if head_dim * h != d else None,
            n_layers=hf.get("num_hidden_layers", 32),
            d_ff=hf.get("intermediate_size", 11008),
            max_seq_len=hf.get("max_position_embeddings", 2048),
            dropout=0.0,
            attn_dropout=float(hf.get("attention_dropout", 0.0) or 0.0),
            norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            norm_position="pre",
            final_norm=True,
            activation=_GATED[act],
            position="rope",
            rope_theta=float(theta),
            bias=attn_bias,
            tie_embeddings=tied,
            init_std=hf.get("initializer_range", 0.02),
            bos_token_id=bos if bos is not None else 0,
            eos_token_id=eos if eos is not None else 0,
            pad_token_id=pad if pad is not None else (eos if eos is not None else 0),
        )

    def rules(self, cfg, prefix):
        p = prefix
        q, kv = cfg.n_heads * cfg.dim_head, cfg.kv_heads * cfg.dim_head
        r = [Rule("embed_tokens.weight", (f"{p}embed_tokens.weight",))]
        for i in range(cfg.n_layers):
            L, A = f"{p}layers.{i}.", f"decoder.blocks.{i}."
            r += _lin(A + "attn_norm", L + "input_layernorm", False)
            r += _cat(A + "attn.qkv", [L + "self_attn.q_proj", L + "self_attn.k_proj", L + "self_attn.v_proj"],
                      [q, kv, kv], cfg.bias)
            r += _lin(A + "attn.o", L + "self_attn.o_proj", cfg.bias)
            r += _lin(A + "mlp_norm", L + "post_attention_layernorm", False)
            r += _cat(A + "mlp.w_in", [L + "mlp.gate_proj", L + "mlp.up_proj"], [cfg.d_ff, cfg.d_ff], cfg.bias)
            r += _lin(A + "mlp.w_out", L + "mlp.down_proj", cfg.bias)
        r += _lin("decoder.final_norm", f"{p}norm", False)
        if not cfg.tie_embeddings:
            r.append(Rule("lm_head.weight", ("lm_head.weight",)))
        return r

    def aliases(self, cfg, prefix):
        return {"lm_head.weight": f"{prefix}embed_tokens.weight"} if cfg.tie_embeddings else {}

    def ignored(self, key):
        return key.endswith("rotary_emb.inv_freq")

    def problems(self, cfg):
        p = self._common_problems(cfg, arch="decoder", norm="rmsnorm", pre=True, final=True,
                                  embedding_norm=False, position="rope", bias=None, gated=True,
                                  mha=False, default_head_dim=False)
        if cfg.attn_scale is not None and not _close(cfg.attn_scale, cfg.dim_head ** -0.5):
            p.append(f"attn_scale is {cfg.attn_scale} (llama scales by head_dim^-0.5)")
        if cfg.embed_scale != 1.0 or cfg.lm_head_scale != 1.0 or cfg.lm_head_bias:
            p.append("embed_scale / lm_head_scale / lm_head_bias are set (llama has none)")
        return p

    def hf_config(self, cfg, arch):
        act = _UNGATED[cfg.activation]
        return {
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "intermediate_size": cfg.d_ff,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.kv_heads,
            "head_dim": cfg.dim_head,
            "hidden_act": {"gelu_tanh": "gelu_pytorch_tanh"}.get(act, act),
            "max_position_embeddings": cfg.max_seq_len,
            "rms_norm_eps": cfg.norm_eps,
            # transformers >= 5 reads rope_parameters, older versions rope_theta / rope_scaling
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "rope_theta": cfg.rope_theta,
            "rope_scaling": None,
            "attention_bias": cfg.bias,
            "mlp_bias": cfg.bias,
            "attention_dropout": _attn_dropout(cfg),
            "initializer_range": cfg.init_std,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id,
            "tie_word_embeddings": cfg.tie_embeddings,
        }
