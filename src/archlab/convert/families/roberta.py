"""RoBERTa (Liu et al. 2019; transformers ``models/roberta``): BERT's encoder, fairseq
positions, its own LM and classifier heads.
"""

from __future__ import annotations

import torch

from archlab.convert.families.base import Rule, _first_id
from archlab.convert.families.bert import Bert
from archlab.errors import ArchlabError

# BERT tensor name (as Bert.rules spells it) -> RoBERTa's; the backbone names are the same
_ROBERTA_HEADS = {
    "cls.predictions.transform.dense.": "lm_head.dense.",
    "cls.predictions.transform.LayerNorm.": "lm_head.layer_norm.",
    "cls.predictions.decoder.": "lm_head.decoder.",
    "cls.predictions.bias": "lm_head.bias",
    "classifier.": "classifier.out_proj.",
}


class Roberta(Bert):
    name = "roberta"
    model_type = "roberta"
    prefix = "roberta."
    architectures = ("RobertaModel", "RobertaForMaskedLM", "RobertaForSequenceClassification")
    head_key_prefixes = ("roberta.pooler.", "pooler.", "classifier.", "lm_head.")
    restorable = ("pooler.dense.weight", "pooler.dense.bias")  # a RobertaModel's pooler
    pad_aware = True

    def position_offset(self, cfg):
        return cfg.pad_token_id + 1  # create_position_ids_from_input_ids: padding_idx + 1

    def model_config(self, hf, arch, ck):
        mlm = arch == "RobertaForMaskedLM"
        # BERT's reading of the shared keys; the head's tying is checked below with RoBERTa's names
        kw = super().model_config({**hf, "tie_word_embeddings": True}, arch.replace("Roberta", "Bert"), ck)
        kw["tie_embeddings"] = True
        p = ck.prefix
        emb = f"{p}embeddings.word_embeddings.weight"
        if mlm and (ck.differs("lm_head.decoder.weight", emb) or (
                hf.get("tie_word_embeddings", True) is False and ck.has("lm_head.decoder.weight"))):
            kw["tie_embeddings"] = False
        if mlm and kw["activation"] != "gelu":
            raise ArchlabError(f"roberta: hidden_act={hf.get('hidden_act')!r} with the MLM head is not "
                               "supported (RobertaLMHead applies the erf gelu whatever hidden_act is)")
        pad = _first_id(hf.get("pad_token_id", 1))
        pad = 1 if pad is None else pad
        mpe = hf.get("max_position_embeddings", 514)
        if mpe <= pad + 1:
            raise ArchlabError(f"roberta: max_position_embeddings={mpe} leaves no position after "
                               f"padding_idx={pad}")
        bos, eos = _first_id(hf.get("bos_token_id", 0)), _first_id(hf.get("eos_token_id", 2))
        kw.update(max_seq_len=mpe - pad - 1, position_offset=pad + 1, pad_aware_positions=True,
                  pad_token_id=pad, type_vocab_size=hf.get("type_vocab_size", 1),
                  bos_token_id=bos if bos is not None else 0, eos_token_id=eos if eos is not None else 0)
        return kw

    def rules(self, cfg, prefix):
        out = []
        for r in super().rules(cfg, prefix):
            theirs = tuple(self._rename(t, prefix) for t in r.theirs)
            alt = tuple(self._rename(t, prefix) for t in r.alt)
            head = "classifier" if r.head == "pooler" else r.head  # RoBERTa's classifier has no pooler
            out.append(Rule(r.ours, theirs, r.op, r.sizes, alt, head))
        return out

    @staticmethod
    def _rename(name: str, prefix: str) -> str:
        if name.startswith(f"{prefix}pooler.dense."):  # BERT's pooler = RoBERTa's classifier.dense
            return "classifier.dense." + name.rsplit(".", 1)[1]
        for a, b in _ROBERTA_HEADS.items():
            if name.startswith(a):
                return b + name[len(a):]
        return name

    def aliases(self, cfg, prefix):
        a = {"lm_head.decoder.bias": "lm_head.bias"}
        if cfg.tie_embeddings:
            a["lm_head.decoder.weight"] = f"{prefix}embeddings.word_embeddings.weight"
        return a

    def problems(self, cfg):
        p = super().problems(cfg)
        if cfg.mlm_transform and cfg.activation != "gelu":
            p.append(f"activation is {cfg.activation} with an MLM head (RobertaLMHead uses gelu)")
        return p

    def export_architecture(self, cfg):
        if cfg.n_classes:
            return "RobertaForSequenceClassification"
        return "RobertaForMaskedLM" if cfg.mlm_transform else "RobertaModel"

    def prefix_for(self, arch):
        return "" if arch == "RobertaModel" else self.prefix

    def export_heads(self, arch):
        return {"RobertaModel": set(), "RobertaForMaskedLM": {"mlm"},
                "RobertaForSequenceClassification": {"classifier"}}[arch]

    def hf_config(self, cfg, arch):
        d = super().hf_config(cfg, arch)
        bert_only = ("position_embedding_type",)
        for key in bert_only:
            d.pop(key, None)
        d.update(max_position_embeddings=cfg.max_seq_len + cfg.position_offset,
                 bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)
        if arch == "RobertaForSequenceClassification":
            d["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.n_classes)}
            d["label2id"] = {f"LABEL_{i}": i for i in range(cfg.n_classes)}
        return d

    def extra_tensors(self, cfg, arch, state):
        out = {}
        p = self.prefix_for(arch)
        if not cfg.type_vocab_size:
            out[f"{p}embeddings.token_type_embeddings.weight"] = torch.zeros(1, cfg.d_model)
        if arch == "RobertaForMaskedLM" and not cfg.lm_head_bias:
            out["lm_head.bias"] = torch.zeros(cfg.vocab_size)
        if arch == "RobertaModel":  # always has a pooler (see Bert.extra_tensors)
            out["pooler.dense.weight"] = torch.zeros(cfg.d_model, cfg.d_model)
            out["pooler.dense.bias"] = torch.zeros(cfg.d_model)
        return out
