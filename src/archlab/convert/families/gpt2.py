"""GPT-2 (Radford et al. 2019; transformers ``models/gpt2``): ``GPT2LMHeadModel``, ``GPT2Model``."""

from __future__ import annotations

from archlab.convert.families.base import Family, Rule, _attn_dropout, _close, _first_id, _hf_act, _lin
from archlab.errors import ArchlabError


class GPT2(Family):
    name = "gpt2"
    model_type = "gpt2"
    prefix = "transformer."
    architectures = ("GPT2LMHeadModel", "GPT2Model")

    def model_config(self, hf, arch, ck):
        if hf.get("scale_attn_by_inverse_layer_idx"):
            raise ArchlabError("gpt2: scale_attn_by_inverse_layer_idx=true is not supported "
                               "(a different attention scale per layer)")
        if hf.get("add_cross_attention"):
            raise ArchlabError("gpt2: add_cross_attention=true is not supported")
        d = hf.get("n_embd", 768)
        p = ck.prefix
        tied = not ck.differs("lm_head.weight", f"{p}wte.weight")
        if arch == "GPT2LMHeadModel" and hf.get("tie_word_embeddings", True) is False:
            if not ck.has("lm_head.weight"):
                raise ArchlabError("gpt2: tie_word_embeddings=false but lm_head.weight is missing")
            tied = False
        eos = _first_id(hf.get("eos_token_id", 50256))
        bos = _first_id(hf.get("bos_token_id", 50256))
        pad = _first_id(hf.get("pad_token_id"))
        return dict(
            arch="decoder",
            vocab_size=hf.get("vocab_size", 50257),
            d_model=d,
            n_heads=hf.get("n_head", 12),
            n_layers=hf.get("n_layer", 12),
            d_ff=hf.get("n_inner") or 4 * d,
            max_seq_len=hf.get("n_positions", 1024),
            dropout=hf.get("resid_pdrop", 0.1),
            attn_dropout=hf.get("attn_pdrop", 0.1),
            norm="layernorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            norm_position="pre",
            final_norm=True,
            activation=_hf_act(hf.get("activation_function", "gelu_new"), "activation_function", "gpt2"),
            position="learned",
            bias=True,
            tie_embeddings=tied,
            attn_scale=None if hf.get("scale_attn_weights", True) else 1.0,
            init_std=hf.get("initializer_range", 0.02),
            bos_token_id=bos if bos is not None else 0,
            eos_token_id=eos if eos is not None else 0,
            pad_token_id=pad if pad is not None else (eos if eos is not None else 0),
        )

    def rules(self, cfg, prefix):
        p = prefix
        r = [Rule("embed_tokens.weight", (f"{p}wte.weight",)),
             Rule("decoder_embed.pos.weight", (f"{p}wpe.weight",))]
        for i in range(cfg.n_layers):
            L, A = f"{p}h.{i}.", f"decoder.blocks.{i}."
            r += _lin(A + "attn_norm", L + "ln_1", True)
            r += _lin(A + "attn.qkv", L + "attn.c_attn", True, op="T")
            r += _lin(A + "attn.o", L + "attn.c_proj", True, op="T")
            r += _lin(A + "mlp_norm", L + "ln_2", True)
            r += _lin(A + "mlp.w_in", L + "mlp.c_fc", True, op="T")
            r += _lin(A + "mlp.w_out", L + "mlp.c_proj", True, op="T")
        r += _lin("decoder.final_norm", f"{p}ln_f", True)
        if not cfg.tie_embeddings:
            r.append(Rule("lm_head.weight", ("lm_head.weight",)))
        return r

    def aliases(self, cfg, prefix):
        return {"lm_head.weight": f"{prefix}wte.weight"} if cfg.tie_embeddings else {}

    def ignored(self, key):
        return key.endswith((".attn.bias", ".attn.masked_bias"))  # causal-mask buffers of old checkpoints

    def problems(self, cfg):
        p = self._common_problems(cfg, arch="decoder", norm="layernorm", pre=True, final=True,
                                  embedding_norm=False, position="learned", bias=True, gated=False)
        if cfg.attn_scale is not None and not (_close(cfg.attn_scale, cfg.dim_head ** -0.5)
                                               or cfg.attn_scale == 1.0):
            p.append(f"attn_scale is {cfg.attn_scale} (gpt2 scales by head_dim^-0.5 or not at all)")
        if cfg.embed_scale != 1.0:
            p.append(f"embed_scale is {cfg.embed_scale} (gpt2 does not scale embeddings)")
        if cfg.lm_head_scale != 1.0 or cfg.lm_head_bias:
            p.append("lm_head_scale / lm_head_bias are set (gpt2's head is a plain projection)")
        return p

    def hf_config(self, cfg, arch):
        return {
            "vocab_size": cfg.vocab_size,
            "n_positions": cfg.max_seq_len,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.d_ff,
            "activation_function": {"gelu_tanh": "gelu_new"}.get(cfg.activation, cfg.activation),
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": _attn_dropout(cfg),
            "layer_norm_epsilon": cfg.norm_eps,
            "initializer_range": cfg.init_std,
            "scale_attn_weights": cfg.attn_scale != 1.0,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id if cfg.pad_token_id != cfg.eos_token_id else None,
            "tie_word_embeddings": cfg.tie_embeddings,
        }
