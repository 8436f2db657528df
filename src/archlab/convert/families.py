"""Hugging Face families: config translation and the explicit weight key maps.

Each family knows, in both directions,

- how an HF ``config.json`` becomes an archlab :class:`ModelConfig` and back, refusing (with one
  line naming the option) anything archlab cannot reproduce exactly;
- which HF tensors make each archlab parameter (:class:`Rule`): archlab fuses the q/k/v
  projections of self-attention into ``attn.qkv`` and k/v of cross-attention into
  ``cross_attn.kv``, keeps a gated MLP's gate and up projections in one ``mlp.w_in`` as
  [gate; up], and stores GPT-2's ``Conv1D`` weights transposed (as ``nn.Linear`` does).

The definitions follow the HF modeling code (transformers ``models/{bert,gpt2,llama,t5,bart,
mistral,roberta,distilbert,marian}``)
and the original papers: BERT (Devlin et al. 2019), GPT-2 (Radford et al. 2019), Llama
(Touvron et al. 2023), T5 (Raffel et al. 2020; v1.1 gated-GELU), BART (Lewis et al. 2020), Mistral
(Jiang et al. 2023), RoBERTa (Liu et al. 2019), DistilBERT (Sanh et al. 2019), Marian
(Junczys-Dowmunt et al. 2018).
HF key names live here and only here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from archlab.config import GATED_ACTIVATIONS, ModelConfig
from archlab.errors import ArchlabError

# HF ACT2FN name -> archlab (ungated) activation. gelu is the exact erf form (BERT, BART);
# gelu_new / gelu_pytorch_tanh are the tanh approximation (GPT-2, T5 v1.1).
_ACT_FROM_HF = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_GATED = {"silu": "swiglu", "gelu": "geglu", "gelu_tanh": "geglu_tanh", "relu": "reglu"}
_UNGATED = {v: k for k, v in _GATED.items()}


@dataclass(frozen=True)
class Rule:
    """One archlab tensor made of HF tensors.

    op: ``copy``; ``cat`` (HF tensors concatenated along dim 0, split by ``sizes`` on export);
    ``T`` (transposed, GPT-2 Conv1D); ``row`` (HF (1, V) buffer <-> archlab (V,)).
    ``alt``: other HF names that hold the same tensor in some checkpoints (import only).
    ``head``: the task head this tensor belongs to (None: backbone, always present).
    """

    ours: str
    theirs: tuple[str, ...]
    op: str = "copy"
    sizes: tuple[int, ...] = ()
    alt: tuple[str, ...] = ()
    head: str | None = None

    def to_ours(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        if self.op == "cat":
            return torch.cat(tensors, 0)
        (t,) = tensors
        if self.op == "T":
            return t.t()
        if self.op == "row":
            return t.reshape(-1)
        return t

    def to_theirs(self, t: torch.Tensor) -> list[torch.Tensor]:
        if self.op == "cat":
            return list(t.split(list(self.sizes), 0))
        if self.op == "T":
            return [t.t()]
        if self.op == "row":
            return [t.reshape(1, -1)]
        return [t]


def _lin(ours: str, theirs: str, bias: bool, *, op: str = "copy", head: str | None = None) -> list[Rule]:
    """weight (+ bias) of one linear layer or norm."""
    out = [Rule(f"{ours}.weight", (f"{theirs}.weight",), op, head=head)]
    if bias:
        out.append(Rule(f"{ours}.bias", (f"{theirs}.bias",), head=head))
    return out


def _cat(ours: str, theirs: list[str], sizes: list[int], bias: bool) -> list[Rule]:
    out = [Rule(f"{ours}.weight", tuple(f"{t}.weight" for t in theirs), "cat", tuple(sizes))]
    if bias:
        out.append(Rule(f"{ours}.bias", tuple(f"{t}.bias" for t in theirs), "cat", tuple(sizes)))
    return out


def _close(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-6)


def _hf_act(name: Any, key: str, family: str) -> str:
    act = _ACT_FROM_HF.get(str(name))
    if act is None:
        raise ArchlabError(f"{family}: {key}={name!r} is not supported; archlab has "
                           f"{', '.join(sorted(_ACT_FROM_HF))}")
    return act


def _first_id(v: Any) -> int | None:
    if isinstance(v, list):  # several eos ids (Llama 3): archlab keeps one, the first
        return int(v[0]) if v else None
    return None if v is None else int(v)


class Family:
    """Base class: a family of HF architectures with one key map."""

    name = ""
    model_type = ""
    prefix = ""  # base-model prefix in task checkpoints ("bert.", "transformer.", "model.")
    architectures: tuple[str, ...] = ()  # importable HF classes
    head_key_prefixes: tuple[str, ...] = ()  # HF tensors of optional task heads
    restorable: tuple[str, ...] = ()  # HF tensors archlab does not model, restored on export
    # what the shared export checks allow (see _common_problems)
    token_types = False  # segment embeddings (type_vocab_size)
    classifies = False  # a sequence-classification head (n_classes)
    sliding_window = False  # attn_window
    pad_aware = False  # pad_aware_positions (RoBERTa)
    cls_act = "tanh"  # cls_activation

    # ---- HF -> archlab ----------------------------------------------------------------------
    def model_config(self, hf: dict[str, Any], arch: str, ck: Any) -> dict[str, Any]:
        """ModelConfig kwargs from HF config.json and a view of the checkpoint's tensors
        (``ck.prefix``: the base-model prefix the checkpoint uses; ``ck.has(key)``; ``ck.differs(a, b)``: both present and different, e.g. an untied head;
        ``ck.nonzero(key)``)."""
        raise NotImplementedError

    def rules(self, cfg: ModelConfig, prefix: str) -> list[Rule]:
        raise NotImplementedError

    def aliases(self, cfg: ModelConfig, prefix: str) -> dict[str, str]:
        """HF tensors that are tied copies of another HF tensor: name -> source."""
        return {}

    def ignored(self, key: str) -> bool:
        """Non-parameter tensors some checkpoints carry (buffers archlab recomputes)."""
        return False

    # ---- archlab -> HF ----------------------------------------------------------------------
    def problems(self, cfg: ModelConfig) -> list[str]:
        raise NotImplementedError

    def export_architecture(self, cfg: ModelConfig) -> str:
        return self.architectures[0]

    def prefix_for(self, arch: str) -> str:
        """Base-model prefix of the tensors of HF class ``arch`` (none for the bare models)."""
        return "" if arch in ("BertModel", "GPT2Model", "BartModel") else self.prefix

    def export_heads(self, arch: str) -> set[str]:
        return set()

    def hf_config(self, cfg: ModelConfig, arch: str) -> dict[str, Any]:
        raise NotImplementedError

    def extra_tensors(self, cfg: ModelConfig, arch: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """HF tensors with no archlab counterpart (written as the neutral value)."""
        return {}

    # ---- shared checks ----------------------------------------------------------------------
    def _common_problems(self, cfg: ModelConfig, *, arch: str, norm: str, pre: bool, final: bool,
                         embedding_norm: bool, position: str, bias: bool | None, gated: bool,
                         mha: bool = True, default_head_dim: bool = True) -> list[str]:
        n = self.name
        p: list[str] = []
        if cfg.arch != arch:
            p.append(f"arch is {cfg.arch} ({n} is {arch})")
        if cfg.norm != norm:
            p.append(f"norm is {cfg.norm} ({n} uses {norm})")
        if (cfg.norm_position == "pre") != pre:
            p.append(f"norm_position is {cfg.norm_position} ({n} is {'pre' if pre else 'post'}-norm)")
        if cfg.use_final_norm != final:
            p.append(f"final_norm is {cfg.use_final_norm} ({n} has {'a' if final else 'no'} final norm)")
        if cfg.embedding_norm != embedding_norm:
            p.append(f"embedding_norm is {cfg.embedding_norm} ({n} needs {embedding_norm})")
        if cfg.position != position:
            p.append(f"position is {cfg.position} ({n} uses {position})")
        if bias is not None and cfg.bias != bias:
            p.append(f"bias is {cfg.bias} ({n} needs {bias})")
        if cfg.gated != gated:
            p.append(f"activation is {cfg.activation} ({n} needs a {'gated' if gated else 'non-gated'} one)")
        if mha and cfg.kv_heads != cfg.n_heads:
            p.append(f"n_kv_heads is {cfg.kv_heads} ({n} has no grouped-query attention)")
        if default_head_dim and cfg.head_dim is not None and cfg.head_dim * cfg.n_heads != cfg.d_model:
            p.append(f"head_dim is {cfg.head_dim} ({n} needs d_model / n_heads)")
        if cfg.type_vocab_size and not self.token_types:
            p.append(f"type_vocab_size is {cfg.type_vocab_size} ({n} has no token types)")
        offset = self.position_offset(cfg)
        if cfg.position == "learned" and cfg.position_offset != offset:
            p.append(f"position_offset is {cfg.position_offset} ({n} uses {offset})")
        if cfg.n_classes and not self.classifies:
            p.append(f"n_classes is {cfg.n_classes} (no {n} classification head is supported)")
        if cfg.attn_window is not None and not self.sliding_window:
            p.append(f"attn_window is {cfg.attn_window} ({n} has no sliding-window attention)")
        if cfg.pad_aware_positions != self.pad_aware:
            p.append(f"pad_aware_positions is {cfg.pad_aware_positions} ({n} needs {self.pad_aware})")
        if cfg.n_classes and cfg.cls_activation != self.cls_act:
            p.append(f"cls_activation is {cfg.cls_activation} ({n}'s classifier uses {self.cls_act})")
        if (cfg.layers is not None or cfg.ffn is not None) and any(
                k != ("attention", "dense") for k in cfg.all_layer_kinds()):
            p.append(f"layers/ffn pattern is {cfg.layers!r}/{cfg.ffn!r} ({n} layers are attention "
                     "+ dense feed-forward)")
        if cfg.has_moe:
            p.append(f"ffn pattern {cfg.ffn!r} has MoE layers ({n} has dense feed-forwards)")
        return p

    def position_offset(self, cfg: ModelConfig) -> int:
        """The first row of the learned position table this family uses."""
        return 2 if self.name == "bart" else 0


# ---------------------------------------------------------------------------------------------
# BERT
# ---------------------------------------------------------------------------------------------


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


def _attn_dropout(cfg: ModelConfig) -> float:
    return cfg.attn_dropout if cfg.attn_dropout is not None else cfg.dropout


# ---------------------------------------------------------------------------------------------
# GPT-2
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Llama
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# T5
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# BART
# ---------------------------------------------------------------------------------------------


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




# ---------------------------------------------------------------------------------------------
# Mistral (Jiang et al. 2023): Llama's block without biases, plus sliding-window attention
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# RoBERTa (Liu et al. 2019): BERT's encoder, fairseq positions, its own LM and classifier heads
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# DistilBERT (Sanh et al. 2019): BERT's post-norm block, no token types, ReLU classifier
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Marian (Junczys-Dowmunt et al. 2018; HF MarianMTModel): the original Transformer's layout
# ---------------------------------------------------------------------------------------------


class Marian(Bart):
    """Post-norm encoder-decoder (Vaswani et al. 2017) as Marian ships it: BART's layer names
    without the embedding LayerNorm, static sinusoidal positions (sines then cosines, from
    position 0; not stored in checkpoints), embeddings scaled by sqrt(d_model) when
    ``scale_embedding``."""

    name = "marian"
    model_type = "marian"
    prefix = "model."
    architectures = ("MarianMTModel",)

    def model_config(self, hf, arch, ck):
        if hf.get("share_encoder_decoder_embeddings", True) is False:
            raise ArchlabError("marian: share_encoder_decoder_embeddings=false is not supported "
                               "(archlab shares one token embedding)")
        dv = hf.get("decoder_vocab_size")
        if dv is not None and dv != hf.get("vocab_size", 58101):
            raise ArchlabError(f"marian: decoder_vocab_size={dv} differs from vocab_size "
                               f"{hf.get('vocab_size')} (archlab has one vocabulary)")
        hf = {"vocab_size": 58101, "pad_token_id": 58100, "eos_token_id": 0,
              "decoder_start_token_id": 58100, "scale_embedding": False, "activation_function": "gelu",
              **hf}
        kw = super().model_config(hf, arch, ck)
        if kw["d_model"] % 2:
            raise ArchlabError(f"marian: d_model={kw['d_model']} is odd (archlab's sinusoid tables "
                               "need an even width)")
        kw.update(position="sinusoidal", sinusoidal_layout="halves", position_offset=0,
                  embedding_norm=False)
        return kw

    def rules(self, cfg, prefix):
        return [r for r in super().rules(cfg, prefix) if not r.ours.startswith(("encoder_embed.", "decoder_embed."))]

    def ignored(self, key):
        # the static tables (HF neither saves nor loads them) and an all-zero final_logits_bias
        return key == "final_logits_bias" or key.endswith(("encoder.embed_positions.weight",
                                                           "decoder.embed_positions.weight"))

    def problems(self, cfg):
        p = self._common_problems(cfg, arch="encoder-decoder", norm="layernorm", pre=False, final=False,
                                  embedding_norm=False, position="sinusoidal", bias=True, gated=False)
        if cfg.position == "sinusoidal" and cfg.sinusoidal_layout != "halves":
            p.append("sinusoidal_layout is interleaved (marian puts the sines first, then the cosines)")
        if cfg.d_model % 2:
            p.append(f"d_model is {cfg.d_model} (marian's table here needs an even width)")
        if not _close(cfg.norm_eps, 1e-5):
            p.append(f"norm_eps is {cfg.norm_eps} (marian's LayerNorm eps is fixed at 1e-5)")
        if cfg.attn_scale is not None and not _close(cfg.attn_scale, cfg.dim_head ** -0.5):
            p.append(f"attn_scale is {cfg.attn_scale} (marian scales by head_dim^-0.5)")
        if cfg.embed_scale != 1.0 and not _close(cfg.embed_scale, math.sqrt(cfg.d_model)):
            p.append(f"embed_scale is {cfg.embed_scale} (marian uses 1 or sqrt(d_model))")
        if cfg.lm_head_scale != 1.0:
            p.append(f"lm_head_scale is {cfg.lm_head_scale} (marian has none)")
        return p

    def prefix_for(self, arch):
        return self.prefix

    def hf_config(self, cfg, arch):
        d = super().hf_config(cfg, arch)
        d.update(decoder_vocab_size=cfg.vocab_size, share_encoder_decoder_embeddings=True)
        return d


FAMILIES: dict[str, Family] = {f.name: f for f in (Bert(), GPT2(), Llama(), T5(), Bart(), Mistral(),
                                                   Roberta(), DistilBert(), Marian())}
# what a model_type without "architectures" is read as
DEFAULT_ARCHITECTURE = {"bert": "BertModel", "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
                        "t5": "T5ForConditionalGeneration", "bart": "BartForConditionalGeneration",
                        "mistral": "MistralForCausalLM", "roberta": "RobertaModel",
                        "distilbert": "DistilBertModel", "marian": "MarianMTModel"}

# state-space and hybrid families (Mamba, Mamba-2, Jamba) live in their own module
from archlab.convert.ssm_families import SSM_DEFAULT_ARCHITECTURE, SSM_FAMILIES  # noqa: E402

FAMILIES.update({f.name: f for f in SSM_FAMILIES})
DEFAULT_ARCHITECTURE.update(SSM_DEFAULT_ARCHITECTURE)

# mixture-of-experts families (Mixtral) live in their own module
from archlab.convert.moe_families import MOE_DEFAULT_ARCHITECTURE, MOE_FAMILIES  # noqa: E402

FAMILIES.update({f.name: f for f in MOE_FAMILIES})
DEFAULT_ARCHITECTURE.update(MOE_DEFAULT_ARCHITECTURE)
MODEL_TYPES = {f.model_type: f for f in FAMILIES.values()}
ARCHITECTURES = {a: f for f in FAMILIES.values() for a in f.architectures}

__all__ = ["ARCHITECTURES", "DEFAULT_ARCHITECTURE", "FAMILIES", "Family", "GATED_ACTIVATIONS", "Rule"]
