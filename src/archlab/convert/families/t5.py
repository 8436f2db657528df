"""T5 (Raffel et al. 2020; v1.0 ReLU and v1.1 gated-GELU; transformers ``models/t5``):
``T5ForConditionalGeneration``.
"""

from __future__ import annotations

from archlab.config import ModelConfig
from archlab.convert.families.base import (
    _GATED,
    _UNGATED,
    Family,
    Rule,
    _cat,
    _close,
    _first_id,
    _hf_act,
    _lin,
)
from archlab.errors import ArchlabError


class T5(Family):
    name = "t5"
    model_type = "t5"
    prefix = ""
    architectures = ("T5ForConditionalGeneration",)

    def model_config(self, hf, arch, ck):
        if hf.get("is_encoder_decoder", True) is False or hf.get("is_decoder"):
            raise ArchlabError("t5: only encoder-decoder T5 (T5ForConditionalGeneration) is supported")
        proj = str(hf.get("feed_forward_proj", "relu"))
        parts = proj.split("-")
        gated = parts[0] == "gated"
        if len(parts) > 2 or (len(parts) == 2 and not gated):
            raise ArchlabError(f"t5: feed_forward_proj={proj!r} is not valid (relu, gated-gelu, ...)")
        act_name = "gelu_new" if proj == "gated-gelu" else parts[-1]  # HF's legacy alias
        act = _hf_act(act_name, "feed_forward_proj", "t5")
        d, h = hf.get("d_model", 512), hf.get("num_heads", 8)
        d_kv = hf.get("d_kv", 64)
        n_enc = hf.get("num_layers", 6)
        n_dec = hf.get("num_decoder_layers") or n_enc
        if ck.differs("encoder.embed_tokens.weight", "shared.weight") or ck.differs(
                "decoder.embed_tokens.weight", "shared.weight"):
            raise ArchlabError("t5: encoder/decoder embed_tokens differ from shared.weight "
                               "(archlab shares one token embedding)")
        # Output scale d_model^-0.5 (Mesh TensorFlow) was tied to tie_word_embeddings in HF's T5;
        # transformers >= 5 stores it explicitly as scale_decoder_outputs.
        scale = hf.get("scale_decoder_outputs")
        if scale is None:
            scale = hf.get("tie_word_embeddings", True) is not False
        tied = not ck.has("lm_head.weight") or not ck.differs("lm_head.weight", "shared.weight")
        pad = _first_id(hf.get("pad_token_id", 0)) or 0
        eos = _first_id(hf.get("eos_token_id", 1))
        start = _first_id(hf.get("decoder_start_token_id"))
        bos = _first_id(hf.get("bos_token_id"))
        return dict(
            arch="encoder-decoder",
            vocab_size=hf.get("vocab_size", 32128),
            d_model=d,
            n_heads=h,
            head_dim=d_kv if d_kv * h != d else None,
            n_layers=n_enc,
            n_decoder_layers=n_dec if n_dec != n_enc else None,
            d_ff=hf.get("d_ff", 2048),
            max_seq_len=hf.get("n_positions", 512),
            dropout=hf.get("dropout_rate", 0.1),
            norm="rmsnorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-6),
            norm_position="pre",
            final_norm=True,
            activation=_GATED[act] if gated else act,
            position="t5-relative",
            rel_buckets=hf.get("relative_attention_num_buckets", 32),
            rel_max_distance=hf.get("relative_attention_max_distance", 128),
            bias=False,
            tie_embeddings=tied,
            attn_scale=1.0,  # T5 folds 1/sqrt(d_kv) into the initialisation of q (Mesh TF)
            lm_head_scale=d ** -0.5 if scale else 1.0,
            init_std=0.02,
            pad_token_id=pad,
            eos_token_id=eos if eos is not None else 1,
            bos_token_id=bos if bos is not None else pad,
            decoder_start_token_id=start if start is not None else pad,
        )

    def _mlp(self, cfg: ModelConfig, ours: str, theirs: str) -> list[Rule]:
        if cfg.gated:
            r = _cat(ours + "mlp.w_in", [theirs + "DenseReluDense.wi_0", theirs + "DenseReluDense.wi_1"],
                     [cfg.d_ff, cfg.d_ff], False)
        else:
            r = _lin(ours + "mlp.w_in", theirs + "DenseReluDense.wi", False)
        return r + _lin(ours + "mlp.w_out", theirs + "DenseReluDense.wo", False)

    def rules(self, cfg, prefix):
        q = cfg.n_heads * cfg.dim_head
        r = [Rule("embed_tokens.weight", ("shared.weight",),
                  alt=("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"))]
        for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
            for i in range(n):
                L, A = f"{side}.block.{i}.layer.", f"{side}.blocks.{i}."
                S = L + "0.SelfAttention."
                r += _lin(A + "attn_norm", L + "0.layer_norm", False)
                r += _cat(A + "attn.qkv", [S + "q", S + "k", S + "v"], [q, q, q], False)
                r += _lin(A + "attn.o", S + "o", False)
                if side == "decoder":
                    X = L + "1.EncDecAttention."
                    r += _lin(A + "cross_norm", L + "1.layer_norm", False)
                    r += _lin(A + "cross_attn.q", X + "q", False)
                    r += _cat(A + "cross_attn.kv", [X + "k", X + "v"], [q, q], False)
                    r += _lin(A + "cross_attn.o", X + "o", False)
                ff = L + ("2." if side == "decoder" else "1.")
                r += _lin(A + "mlp_norm", ff + "layer_norm", False)
                r += self._mlp(cfg, A, ff)
            r.append(Rule(f"{side}.rel_bias.embedding.weight",
                          (f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",)))
            r += _lin(f"{side}.final_norm", f"{side}.final_layer_norm", False)
        if not cfg.tie_embeddings:
            r.append(Rule("lm_head.weight", ("lm_head.weight",)))
        return r

    def aliases(self, cfg, prefix):
        a = {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}
        if cfg.tie_embeddings:
            a["lm_head.weight"] = "shared.weight"
        return a

    def ignored(self, key):
        # created by older transformers for the decoder's cross-attention and never used
        return key == "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"

    def problems(self, cfg):
        p = self._common_problems(cfg, arch="encoder-decoder", norm="rmsnorm", pre=True, final=True,
                                  embedding_norm=False, position="t5-relative", bias=False,
                                  gated=cfg.gated, default_head_dim=False)
        if cfg.attn_scale != 1.0:
            p.append(f"attn_scale is {cfg.attn_scale} (t5 does not scale attention logits: 1.0)")
        if cfg.embed_scale != 1.0 or cfg.lm_head_bias:
            p.append("embed_scale / lm_head_bias are set (t5 has none)")
        if cfg.lm_head_scale != 1.0 and not _close(cfg.lm_head_scale, cfg.d_model ** -0.5):
            p.append(f"lm_head_scale is {cfg.lm_head_scale} (t5 uses 1 or d_model^-0.5)")
        act = _UNGATED.get(cfg.activation, cfg.activation)
        if act not in ("relu", "gelu", "gelu_tanh", "silu"):
            p.append(f"activation is {cfg.activation} (no t5 feed_forward_proj)")
        return p

    def hf_config(self, cfg, arch):
        scaled = cfg.lm_head_scale != 1.0
        act = _UNGATED.get(cfg.activation, cfg.activation)
        if cfg.gated:
            proj = "gated-gelu" if act == "gelu_tanh" else f"gated-{act}"  # gated-gelu means gelu_new
            if act == "gelu":
                proj = "gated-gelu_python"  # the exact erf GELU under a name HF parses
        else:
            proj = {"gelu_tanh": "gelu_new"}.get(act, act)
        return {
            "vocab_size": cfg.vocab_size,
            "d_model": cfg.d_model,
            "d_kv": cfg.dim_head,
            "d_ff": cfg.d_ff,
            "num_layers": cfg.encoder_layers,
            "num_decoder_layers": cfg.decoder_layers,
            "num_heads": cfg.n_heads,
            "relative_attention_num_buckets": cfg.rel_buckets,
            "relative_attention_max_distance": cfg.rel_max_distance,
            "dropout_rate": cfg.dropout,
            "layer_norm_epsilon": cfg.norm_eps,
            "feed_forward_proj": proj,
            # transformers < 5 derives the output scale from tie_word_embeddings, >= 5 reads
            # scale_decoder_outputs; an untied head is written as lm_head.weight either way.
            "tie_word_embeddings": scaled,
            "scale_decoder_outputs": scaled,
            "is_encoder_decoder": True,
            "n_positions": cfg.max_seq_len,  # informational (relative positions have no limit)
            "pad_token_id": cfg.pad_token_id,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "decoder_start_token_id": cfg.start_token_id,
        }

    def extra_tensors(self, cfg, arch, state):
        if cfg.tie_embeddings and cfg.lm_head_scale == 1.0:
            # tied but unscaled (T5 v1.1 style config with tie_word_embeddings=false): write the
            # head explicitly so that every transformers version uses the same matrix
            return {"lm_head.weight": state["embed_tokens.weight"]}
        return {}
