"""BART (Lewis et al. 2020; transformers ``models/bart``): ``BartForConditionalGeneration``,
``BartModel``.
"""

from __future__ import annotations

import math

import torch

from archlab.convert.families.base import Family, Rule, _attn_dropout, _cat, _close, _first_id, _hf_act, _lin
from archlab.errors import ArchlabError


class Bart(Family):
    name = "bart"
    model_type = "bart"
    prefix = "model."
    architectures = ("BartForConditionalGeneration", "BartModel")

    def model_config(self, hf, arch, ck):
        for key in ("normalize_before", "add_final_layer_norm", "normalize_embedding"):
            default = key == "normalize_embedding"
            if bool(hf.get(key, default)) != default:
                raise ArchlabError(f"bart: {key}={hf.get(key)} is not supported (BART is post-norm "
                                   "with layernorm_embedding and no final layer norm)")
        for a, b in (("encoder_attention_heads", "decoder_attention_heads"),
                     ("encoder_ffn_dim", "decoder_ffn_dim")):
            if hf.get(a, 16 if "heads" in a else 4096) != hf.get(b, 16 if "heads" in b else 4096):
                raise ArchlabError(f"bart: {a}={hf.get(a)} differs from {b}={hf.get(b)} "
                                   "(archlab uses one value for both stacks)")
        d = hf.get("d_model", 1024)
        p = ck.prefix
        for side in ("encoder", "decoder"):
            if ck.differs(f"{p}{side}.embed_tokens.weight", f"{p}shared.weight"):
                raise ArchlabError(f"bart: {side}.embed_tokens differs from shared.weight "
                                   "(archlab shares one token embedding)")
        tied = not ck.differs("lm_head.weight", f"{p}shared.weight")
        if hf.get("tie_word_embeddings", True) is False and ck.has("lm_head.weight"):
            tied = False
        bias = ck.nonzero("final_logits_bias")
        n_enc, n_dec = hf.get("encoder_layers", 12), hf.get("decoder_layers", 12)
        return dict(
            arch="encoder-decoder",
            vocab_size=hf.get("vocab_size", 50265),
            d_model=d,
            n_heads=hf.get("encoder_attention_heads", 16),
            n_layers=n_enc,
            n_decoder_layers=n_dec if n_dec != n_enc else None,
            d_ff=hf.get("encoder_ffn_dim", 4096),
            max_seq_len=hf.get("max_position_embeddings", 1024),
            dropout=hf.get("dropout", 0.1),
            attn_dropout=hf.get("attention_dropout", 0.0),
            norm="layernorm",
            norm_eps=1e-5,  # nn.LayerNorm's default, hard-coded in BART
            norm_position="post",
            final_norm=False,
            embedding_norm=True,
            activation=_hf_act(hf.get("activation_function", "gelu"), "activation_function", "bart"),
            position="learned",
            position_offset=2,  # BartLearnedPositionalEmbedding's offset
            bias=True,
            tie_embeddings=tied,
            embed_scale=math.sqrt(d) if hf.get("scale_embedding", False) else 1.0,
            lm_head_bias=bias,
            init_std=hf.get("init_std", 0.02),
            pad_token_id=_first_id(hf.get("pad_token_id", 1)) or 0,
            bos_token_id=_first_id(hf.get("bos_token_id", 0)) or 0,
            eos_token_id=_first_id(hf.get("eos_token_id", 2)) or 0,
            decoder_start_token_id=_first_id(hf.get("decoder_start_token_id", 2)),
        )

    def rules(self, cfg, prefix):
        p = prefix
        C = cfg.d_model
        r = [Rule("embed_tokens.weight", (f"{p}shared.weight",),
                  alt=(f"{p}encoder.embed_tokens.weight", f"{p}decoder.embed_tokens.weight"))]
        for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
            E = f"{p}{side}."
            r.append(Rule(f"{side}_embed.pos.weight", (E + "embed_positions.weight",)))
            r += _lin(f"{side}_embed.norm", E + "layernorm_embedding", True)
            for i in range(n):
                L, A = f"{E}layers.{i}.", f"{side}.blocks.{i}."
                r += _cat(A + "attn.qkv", [L + "self_attn.q_proj", L + "self_attn.k_proj",
                                           L + "self_attn.v_proj"], [C, C, C], True)
                r += _lin(A + "attn.o", L + "self_attn.out_proj", True)
                r += _lin(A + "attn_norm", L + "self_attn_layer_norm", True)
                if side == "decoder":
                    r += _lin(A + "cross_attn.q", L + "encoder_attn.q_proj", True)
                    r += _cat(A + "cross_attn.kv", [L + "encoder_attn.k_proj", L + "encoder_attn.v_proj"],
                              [C, C], True)
                    r += _lin(A + "cross_attn.o", L + "encoder_attn.out_proj", True)
                    r += _lin(A + "cross_norm", L + "encoder_attn_layer_norm", True)
                r += _lin(A + "mlp.w_in", L + "fc1", True)
                r += _lin(A + "mlp.w_out", L + "fc2", True)
                r += _lin(A + "mlp_norm", L + "final_layer_norm", True)
        if cfg.lm_head_bias:
            r.append(Rule("lm_bias", ("final_logits_bias",), "row"))
        if not cfg.tie_embeddings:
            r.append(Rule("lm_head.weight", ("lm_head.weight",)))
        return r

    def aliases(self, cfg, prefix):
        a = {f"{prefix}encoder.embed_tokens.weight": f"{prefix}shared.weight",
             f"{prefix}decoder.embed_tokens.weight": f"{prefix}shared.weight"}
        if cfg.tie_embeddings:
            a["lm_head.weight"] = f"{prefix}shared.weight"
        return a

    def ignored(self, key):
        return key == "final_logits_bias"  # only when all zero (otherwise it is mapped to lm_bias)

    def problems(self, cfg):
        p = self._common_problems(cfg, arch="encoder-decoder", norm="layernorm", pre=False, final=False,
                                  embedding_norm=True, position="learned", bias=True, gated=False)
        if not _close(cfg.norm_eps, 1e-5):
            p.append(f"norm_eps is {cfg.norm_eps} (bart's LayerNorm eps is fixed at 1e-5)")
        if cfg.attn_scale is not None and not _close(cfg.attn_scale, cfg.dim_head ** -0.5):
            p.append(f"attn_scale is {cfg.attn_scale} (bart scales by head_dim^-0.5)")
        if cfg.embed_scale != 1.0 and not _close(cfg.embed_scale, math.sqrt(cfg.d_model)):
            p.append(f"embed_scale is {cfg.embed_scale} (bart uses 1 or sqrt(d_model))")
        if cfg.lm_head_scale != 1.0:
            p.append(f"lm_head_scale is {cfg.lm_head_scale} (bart has none)")
        return p

    def hf_config(self, cfg, arch):
        return {
            "vocab_size": cfg.vocab_size,
            "d_model": cfg.d_model,
            "encoder_layers": cfg.encoder_layers,
            "decoder_layers": cfg.decoder_layers,
            "encoder_attention_heads": cfg.n_heads,
            "decoder_attention_heads": cfg.n_heads,
            "encoder_ffn_dim": cfg.d_ff,
            "decoder_ffn_dim": cfg.d_ff,
            "activation_function": {"gelu_tanh": "gelu_new"}.get(cfg.activation, cfg.activation),
            "dropout": cfg.dropout,
            "attention_dropout": _attn_dropout(cfg),
            "activation_dropout": cfg.dropout,  # archlab's MLP dropout (training only)
            "max_position_embeddings": cfg.max_seq_len,
            "scale_embedding": cfg.embed_scale != 1.0,
            "init_std": cfg.init_std,
            "is_encoder_decoder": True,
            "pad_token_id": cfg.pad_token_id,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "decoder_start_token_id": cfg.start_token_id,
            "forced_eos_token_id": cfg.eos_token_id,
            "tie_word_embeddings": cfg.tie_embeddings,
        }

    def extra_tensors(self, cfg, arch, state):
        if not cfg.lm_head_bias:
            return {"final_logits_bias": torch.zeros(1, cfg.vocab_size)}
        return {}
