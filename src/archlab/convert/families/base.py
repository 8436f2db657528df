"""The shared rules of the Hugging Face families: :class:`Rule` (one archlab tensor made of
HF tensors) and :class:`ExpertRule` (stacked experts), the helpers that spell the rules of one
linear layer or a fused projection, the HF activation names, and :class:`Family`, the base
class every family module derives from (with the export checks families share).

archlab fuses the q/k/v projections of self-attention into ``attn.qkv`` and k/v of
cross-attention into ``cross_attn.kv``, keeps a gated MLP's gate and up projections in one
``mlp.w_in`` as [gate; up], stores GPT-2's ``Conv1D`` weights transposed (as ``nn.Linear``
does) and a mixture of experts' weights stacked as (E, out, in).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from archlab.config import ModelConfig
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


@dataclass(frozen=True)
class ExpertRule(Rule):
    """archlab's stacked (E, out, in) expert tensor <-> E per-expert HF tensors (``per`` of
    them per expert, concatenated along dim 0: [w1; w3] for w_in), or one fused 3-D tensor
    (an ``alt`` name)."""

    per: int = 1

    def to_ours(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        if len(tensors) == 1 and tensors[0].dim() == 3:  # fused (transformers 5 in memory)
            return tensors[0]
        groups = [tensors[i:i + self.per] for i in range(0, len(tensors), self.per)]
        return torch.stack([torch.cat(g, 0) for g in groups])

    def to_theirs(self, t: torch.Tensor) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for e in range(t.shape[0]):
            out += list(t[e].chunk(self.per, 0)) if self.per > 1 else [t[e]]
        return [x.contiguous() for x in out]


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


def _attn_dropout(cfg: ModelConfig) -> float:
    return cfg.attn_dropout if cfg.attn_dropout is not None else cfg.dropout


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
        if cfg.n_tags:  # (archlab's tag head maps to no HF *ForTokenClassification export yet)
            p.append(f"n_tags is {cfg.n_tags} (token-classification heads are not exported)")
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
