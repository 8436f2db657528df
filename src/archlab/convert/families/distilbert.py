"""DistilBERT (Sanh et al. 2019; transformers ``models/distilbert``): BERT's post-norm block, no
token types, ReLU classifier.
"""

from __future__ import annotations

import torch

from archlab.convert.families.base import Family, Rule, _attn_dropout, _cat, _close, _hf_act, _lin
from archlab.errors import ArchlabError


class DistilBert(Family):
    """A ``sinusoidal_pos_embds`` checkpoint stores its (frozen) sinusoid table as
    ``position_embeddings.weight``; archlab imports it as a learned table holding exactly those
    values. An archlab model with interleaved sinusoidal positions exports with
    ``sinusoidal_pos_embds: true`` and the table written out."""

    name = "distilbert"
    model_type = "distilbert"
    prefix = "distilbert."
    architectures = ("DistilBertModel", "DistilBertForMaskedLM", "DistilBertForSequenceClassification")
    head_key_prefixes = ("vocab_transform.", "vocab_layer_norm.", "vocab_projector.", "pre_classifier.",
                         "classifier.")
    classifies = True
    cls_act = "relu"  # pre_classifier -> ReLU -> dropout -> classifier

    def model_config(self, hf, arch, ck):
        mlm = arch == "DistilBertForMaskedLM"
        n_classes = 0
        if arch == "DistilBertForSequenceClassification":
            labels = hf.get("id2label")
            n_classes = len(labels) if isinstance(labels, dict) and labels else int(hf.get("num_labels", 2))
        p = ck.prefix
        tied = hf.get("tie_word_embeddings", True) is not False and not ck.differs(
            "vocab_projector.weight", f"{p}embeddings.word_embeddings.weight")
        if mlm and not tied and not ck.has("vocab_projector.weight"):
            raise ArchlabError("distilbert: tie_word_embeddings=false but vocab_projector.weight is missing")
        return dict(
            arch="encoder",
            vocab_size=hf.get("vocab_size", 30522),
            d_model=hf.get("dim", 768),
            n_heads=hf.get("n_heads", 12),
            n_layers=hf.get("n_layers", 6),
            d_ff=hf.get("hidden_dim", 3072),
            max_seq_len=hf.get("max_position_embeddings", 512),
            dropout=hf.get("dropout", 0.1),
            attn_dropout=hf.get("attention_dropout", 0.1),
            norm="layernorm",
            norm_eps=1e-12,  # hard-coded in DistilBERT's LayerNorms
            norm_position="post",
            final_norm=False,
            embedding_norm=True,
            activation=_hf_act(hf.get("activation", "gelu"), "activation", "distilbert"),
            position="learned",
            bias=True,
            tie_embeddings=tied or not mlm,
            type_vocab_size=0,
            mlm_transform=mlm,
            lm_head_bias=mlm,
            n_classes=n_classes,
            pooling="first",
            cls_activation="relu",
            init_std=hf.get("initializer_range", 0.02),
            pad_token_id=hf.get("pad_token_id") or 0,
        )

    def rules(self, cfg, prefix):
        p = prefix
        C = cfg.d_model
        r = [Rule("embed_tokens.weight", (f"{p}embeddings.word_embeddings.weight",))]
        if cfg.position == "learned":
            r.append(Rule("encoder_embed.pos.weight", (f"{p}embeddings.position_embeddings.weight",)))
        r += _lin("encoder_embed.norm", f"{p}embeddings.LayerNorm", True)
        for i in range(cfg.n_layers):
            L, A = f"{p}transformer.layer.{i}.", f"encoder.blocks.{i}."
            r += _cat(A + "attn.qkv", [L + "attention.q_lin", L + "attention.k_lin", L + "attention.v_lin"],
                      [C, C, C], True)
            r += _lin(A + "attn.o", L + "attention.out_lin", True)
            r += _lin(A + "attn_norm", L + "sa_layer_norm", True)
            r += _lin(A + "mlp.w_in", L + "ffn.lin1", True)
            r += _lin(A + "mlp.w_out", L + "ffn.lin2", True)
            r += _lin(A + "mlp_norm", L + "output_layer_norm", True)
        if cfg.mlm_transform:
            r += _lin("mlm_transform.0", "vocab_transform", True, head="mlm")
            r += _lin("mlm_transform.2", "vocab_layer_norm", True, head="mlm")
        if cfg.lm_head_bias:
            r.append(Rule("lm_bias", ("vocab_projector.bias",), head="mlm"))
        if not cfg.tie_embeddings:
            r.append(Rule("lm_head.weight", ("vocab_projector.weight",), head="mlm"))
        if cfg.n_classes:
            r += _lin("cls_head.dense", "pre_classifier", True, head="classifier")
            r += _lin("cls_head.out", "classifier", True, head="classifier")
        return r

    def aliases(self, cfg, prefix):
        if cfg.tie_embeddings:
            return {"vocab_projector.weight": f"{prefix}embeddings.word_embeddings.weight"}
        return {}

    def ignored(self, key):
        return key.endswith("embeddings.position_ids")

    def problems(self, cfg):
        pos = cfg.position if cfg.position in ("learned", "sinusoidal") else "learned"
        p = self._common_problems(cfg, arch="encoder", norm="layernorm", pre=False, final=False,
                                  embedding_norm=True, position=pos, bias=True, gated=False)
        if pos == "sinusoidal" and cfg.sinusoidal_layout != "interleaved":
            p.append("sinusoidal_layout is halves (distilbert interleaves sin and cos)")
        if not _close(cfg.norm_eps, 1e-12):
            p.append(f"norm_eps is {cfg.norm_eps} (distilbert's LayerNorm eps is fixed at 1e-12)")
        if cfg.attn_scale is not None and not _close(cfg.attn_scale, cfg.dim_head ** -0.5):
            p.append(f"attn_scale is {cfg.attn_scale} (distilbert scales by head_dim^-0.5)")
        if cfg.embed_scale != 1.0 or cfg.lm_head_scale != 1.0:
            p.append("embed_scale / lm_head_scale are set (distilbert has none)")
        if cfg.n_classes and cfg.pooling_mode != "first":
            p.append(f"pooling is {cfg.pooling} (distilbert classifies the first token)")
        if not cfg.tie_embeddings and not cfg.mlm_transform:
            p.append("tie_embeddings is false without an MLM head (distilbert has no bare output matrix)")
        return p

    def export_architecture(self, cfg):
        if cfg.n_classes:
            return "DistilBertForSequenceClassification"
        return "DistilBertForMaskedLM" if cfg.mlm_transform else "DistilBertModel"

    def prefix_for(self, arch):
        return "" if arch == "DistilBertModel" else self.prefix

    def export_heads(self, arch):
        return {"DistilBertModel": set(), "DistilBertForMaskedLM": {"mlm"},
                "DistilBertForSequenceClassification": {"classifier"}}[arch]

    def hf_config(self, cfg, arch):
        d = {
            "vocab_size": cfg.vocab_size,
            "dim": cfg.d_model,
            "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads,
            "hidden_dim": cfg.d_ff,
            "activation": {"gelu_tanh": "gelu_new"}.get(cfg.activation, cfg.activation),
            "dropout": cfg.dropout,
            "attention_dropout": _attn_dropout(cfg),
            "seq_classif_dropout": cfg.dropout,
            "max_position_embeddings": cfg.max_seq_len,
            "sinusoidal_pos_embds": cfg.position == "sinusoidal",
            "initializer_range": cfg.init_std,
            "pad_token_id": cfg.pad_token_id,
            "tie_word_embeddings": cfg.tie_embeddings,
        }
        if arch == "DistilBertForSequenceClassification":
            d["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.n_classes)}
            d["label2id"] = {f"LABEL_{i}": i for i in range(cfg.n_classes)}
        return d

    def extra_tensors(self, cfg, arch, state):
        out = {}
        if arch == "DistilBertForMaskedLM" and not cfg.lm_head_bias:
            out["vocab_projector.bias"] = torch.zeros(cfg.vocab_size)
        if cfg.position == "sinusoidal":
            from archlab.model.layers import sinusoidal_table

            out[f"{self.prefix_for(arch)}embeddings.position_embeddings.weight"] = sinusoidal_table(
                cfg.max_seq_len, cfg.d_model)
        return out
