"""BERT (Devlin et al. 2019; transformers ``models/bert``): ``BertModel``, ``BertForMaskedLM``,
``BertForSequenceClassification``.
"""

from __future__ import annotations

import torch

from archlab.convert.families.base import Family, Rule, _attn_dropout, _cat, _close, _hf_act, _lin
from archlab.errors import ArchlabError


class Bert(Family):
    name = "bert"
    model_type = "bert"
    token_types = True
    classifies = True
    prefix = "bert."
    architectures = ("BertModel", "BertForMaskedLM", "BertForSequenceClassification")
    head_key_prefixes = ("bert.pooler.", "pooler.", "classifier.", "cls.predictions.")
    restorable = ("pooler.dense.weight", "pooler.dense.bias")  # a BertModel's pooler

    def model_config(self, hf, arch, ck):
        pet = hf.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise ArchlabError(f"bert: position_embedding_type={pet!r} is not supported (only absolute)")
        for key in ("is_decoder", "add_cross_attention"):
            if hf.get(key):
                raise ArchlabError(f"bert: {key}=true is not supported (archlab imports BERT as an encoder)")
        mlm = arch == "BertForMaskedLM"
        n_classes = 0
        if arch == "BertForSequenceClassification":
            labels = hf.get("id2label")
            n_classes = len(labels) if isinstance(labels, dict) and labels else int(hf.get("num_labels", 2))
        p = ck.prefix
        tied = hf.get("tie_word_embeddings", True) is not False and not ck.differs(
            "cls.predictions.decoder.weight", f"{p}embeddings.word_embeddings.weight")
        if mlm and not tied and not ck.has("cls.predictions.decoder.weight"):
            raise ArchlabError("bert: tie_word_embeddings=false but cls.predictions.decoder.weight is missing")
        return dict(
            arch="encoder",
            vocab_size=hf.get("vocab_size", 30522),
            d_model=hf.get("hidden_size", 768),
            n_heads=hf.get("num_attention_heads", 12),
            n_layers=hf.get("num_hidden_layers", 12),
            d_ff=hf.get("intermediate_size", 3072),
            max_seq_len=hf.get("max_position_embeddings", 512),
            dropout=hf.get("hidden_dropout_prob", 0.1),
            attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            norm="layernorm",
            norm_eps=hf.get("layer_norm_eps", 1e-12),
            norm_position="post",
            final_norm=False,
            embedding_norm=True,
            activation=_hf_act(hf.get("hidden_act", "gelu"), "hidden_act", "bert"),
            position="learned",
            bias=True,
            tie_embeddings=tied or not mlm,
            type_vocab_size=hf.get("type_vocab_size", 2),
            mlm_transform=mlm,
            lm_head_bias=mlm,
            n_classes=n_classes,
            pooling="first",
            init_std=hf.get("initializer_range", 0.02),
            pad_token_id=hf.get("pad_token_id") or 0,
        )

    def rules(self, cfg, prefix):
        p = prefix
        C = cfg.d_model
        r = [Rule("embed_tokens.weight", (f"{p}embeddings.word_embeddings.weight",)),
             Rule("encoder_embed.pos.weight", (f"{p}embeddings.position_embeddings.weight",))]
        if cfg.type_vocab_size:
            r.append(Rule("encoder_embed.types.weight", (f"{p}embeddings.token_type_embeddings.weight",)))
        r += _lin("encoder_embed.norm", f"{p}embeddings.LayerNorm", True)
        for i in range(cfg.n_layers):
            L, A = f"{p}encoder.layer.{i}.", f"encoder.blocks.{i}."
            r += _cat(A + "attn.qkv", [L + "attention.self.query", L + "attention.self.key",
                                       L + "attention.self.value"], [C, C, C], True)
            r += _lin(A + "attn.o", L + "attention.output.dense", True)
            r += _lin(A + "attn_norm", L + "attention.output.LayerNorm", True)
            r += _lin(A + "mlp.w_in", L + "intermediate.dense", True)
            r += _lin(A + "mlp.w_out", L + "output.dense", True)
            r += _lin(A + "mlp_norm", L + "output.LayerNorm", True)
        if cfg.mlm_transform:
            r += _lin("mlm_transform.0", "cls.predictions.transform.dense", True, head="mlm")
            r += _lin("mlm_transform.2", "cls.predictions.transform.LayerNorm", True, head="mlm")
        if cfg.lm_head_bias:
            r.append(Rule("lm_bias", ("cls.predictions.bias",), alt=("cls.predictions.decoder.bias",), head="mlm"))
        if not cfg.tie_embeddings:
            r.append(Rule("lm_head.weight", ("cls.predictions.decoder.weight",), head="mlm"))
        if cfg.n_classes:
            r += _lin("cls_head.dense", f"{p}pooler.dense", True, head="pooler")
            r += _lin("cls_head.out", "classifier", True, head="classifier")
        return r

    def aliases(self, cfg, prefix):
        a = {"cls.predictions.decoder.bias": "cls.predictions.bias"}
        if cfg.tie_embeddings:
            a["cls.predictions.decoder.weight"] = f"{prefix}embeddings.word_embeddings.weight"
        return a

    def ignored(self, key):
        return key.endswith(("embeddings.position_ids", "embeddings.token_type_ids"))

    def problems(self, cfg):
        p = self._common_problems(cfg, arch="encoder", norm="layernorm", pre=False, final=False,
                                  embedding_norm=True, position="learned", bias=True, gated=False)
        if cfg.attn_scale is not None and not _close(cfg.attn_scale, cfg.dim_head ** -0.5):
            p.append(f"attn_scale is {cfg.attn_scale} (bert scales by head_dim^-0.5)")
        if cfg.embed_scale != 1.0:
            p.append(f"embed_scale is {cfg.embed_scale} (bert does not scale embeddings)")
        if cfg.lm_head_scale != 1.0:
            p.append(f"lm_head_scale is {cfg.lm_head_scale} (bert has none)")
        if cfg.n_classes and cfg.pooling_mode != "first":
            p.append(f"pooling is {cfg.pooling} (bert classifies the first token)")
        if not cfg.tie_embeddings and not cfg.mlm_transform:
            p.append("tie_embeddings is false without an MLM head (bert has no bare output matrix)")
        return p

    def export_architecture(self, cfg):
        if cfg.n_classes:
            return "BertForSequenceClassification"
        return "BertForMaskedLM" if cfg.mlm_transform else "BertModel"

    def export_heads(self, arch):
        return {"BertModel": {"pooler"}, "BertForMaskedLM": {"mlm"},
                "BertForSequenceClassification": {"pooler", "classifier"}}[arch]

    def hf_config(self, cfg, arch):
        d = {
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "intermediate_size": cfg.d_ff,
            "hidden_act": {"gelu_tanh": "gelu_new"}.get(cfg.activation, cfg.activation),
            "hidden_dropout_prob": cfg.dropout,
            "attention_probs_dropout_prob": _attn_dropout(cfg),
            "max_position_embeddings": cfg.max_seq_len,
            "type_vocab_size": max(cfg.type_vocab_size, 1),
            "initializer_range": cfg.init_std,
            "layer_norm_eps": cfg.norm_eps,
            "pad_token_id": cfg.pad_token_id,
            "position_embedding_type": "absolute",
            "tie_word_embeddings": cfg.tie_embeddings,
        }
        if arch == "BertForSequenceClassification":
            d["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.n_classes)}
            d["label2id"] = {f"LABEL_{i}": i for i in range(cfg.n_classes)}
        return d

    def extra_tensors(self, cfg, arch, state):
        out = {}
        p = "" if arch == "BertModel" else "bert."
        if not cfg.type_vocab_size:  # one all-zero token type adds nothing
            out[f"{p}embeddings.token_type_embeddings.weight"] = torch.zeros(1, cfg.d_model)
        if arch == "BertForMaskedLM" and not cfg.lm_head_bias:
            out["cls.predictions.bias"] = torch.zeros(cfg.vocab_size)
        if arch == "BertModel" and not cfg.n_classes:
            # BertModel always has a pooler; archlab has none without a classification head. The
            # importer's copy is restored when available, else zeros: pooler_output = tanh(0) = 0
            # and last_hidden_state is unaffected.
            out["pooler.dense.weight"] = torch.zeros(cfg.d_model, cfg.d_model)
            out["pooler.dense.bias"] = torch.zeros(cfg.d_model)
        return out
