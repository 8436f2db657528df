"""Objectives: how inputs and labels are built from token ids, and the loss.

An objective never changes the backbone; it decides what the model sees and what it must
predict (x-transformers' wrappers; the T5 paper's separation of architecture and objective,
Raffel et al. 2020 Sec. 3.2-3.3). Labels are aligned with the model's outputs (already
shifted) and ``-100`` marks positions without a loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from archlab.data.types import Example, SpecialTokens  # the data layer's types, re-exported here
from archlab.errors import ConfigError
from archlab.objectives.layout import PairBudget
from archlab.objectives.loss import linear_cross_entropy

__all__ = ["IGNORE", "Batch", "Example", "LossOutput", "Objective", "SpecialTokens", "pad_labels",
           "pad_sequences", "token_loss", "lm_loss_head", "with_aux", "model_config"]

IGNORE = -100

Batch = dict[str, torch.Tensor]


def pad_sequences(
    seqs: Sequence[Sequence[int]], pad: int, *, left: bool = False, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad lists of ids to (B, T) ids and a (B, T) bool mask (True for real tokens)."""
    T = max([len(s) for s in seqs] + [length or 0, 1])
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        n = len(s)
        if n == 0:
            continue
        sl = slice(T - n, T) if left else slice(0, n)
        ids[i, sl] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, sl] = True
    return ids, mask


def pad_labels(seqs: Sequence[Sequence[int]], length: int | None = None) -> torch.Tensor:
    T = max([len(s) for s in seqs] + [length or 0, 1])
    out = torch.full((len(seqs), T), IGNORE, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


@dataclass
class LossOutput:
    loss: torch.Tensor  # mean over predicted tokens (or examples, for classification)
    n_tokens: int  # number of predictions the mean is over
    n_correct: int | None = None
    # MoE models: the weighted auxiliary loss included in ``loss`` (training only) and the
    # unweighted terms of this forward, detached ({"balance": .., "z": ..})
    aux_loss: torch.Tensor | None = None
    aux: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def task_loss(self) -> torch.Tensor:
        """The objective's own loss, without the auxiliary terms."""
        return self.loss if self.aux_loss is None else self.loss - self.aux_loss


def with_aux(out: LossOutput, model_out: Any, training: bool) -> LossOutput:
    """Add the MoE layers' auxiliary losses of a forward (``ModelOutput.aux_loss``, weighted
    by ``moe.aux_loss_coef`` / ``z_loss_coef``) to ``out`` in training (evaluation reports the
    plain task loss), and record the unweighted terms detached either way."""
    if not model_out.aux_losses:
        return out
    out.aux = {k: v.detach() for k, v in model_out.aux_losses.items()}
    if training and model_out.aux_loss is not None:
        out.aux_loss = model_out.aux_loss
        out.loss = out.loss + out.aux_loss
    return out


def lm_loss_head(labels: torch.Tensor, label_smoothing: float = 0.0) -> Callable[[torch.Tensor, Any], LossOutput]:
    """A ``head`` for the model's forward (``model(..., head=...)``): cross-entropy over the
    positions whose label is not -100, computed inside the forward pass.

    Only the labelled positions go through the LM head: masked-LM predicts ~15 % of
    positions and seq2seq-on-a-decoder none of the source, so this skips most of the
    (tokens x vocab) head product there (the "sparse prediction" of ModernBERT, Warner et al.
    2024). The head and the loss are fused and chunked (``objectives/loss.py``).
    """

    def head(hidden: torch.Tensor, lm: Any) -> LossOutput:  # hidden (B, T, C), labels (B, T)
        sel = labels != IGNORE  # (B, T)
        n = int(sel.sum())
        if n == 0:  # still touches the head, so every parameter has a gradient (DDP)
            return LossOutput(lm.logits(hidden[:1, :1]).sum() * 0.0, 0)
        if n == labels.numel():
            h, target = hidden.flatten(0, 1), labels.flatten()
        else:
            h, target = hidden[sel], labels[sel]  # (N, C), (N,)
        loss = linear_cross_entropy(lm.transform(h), lm.weight, lm.bias, target, label_smoothing=label_smoothing)
        return LossOutput(loss, n)

    return head


def token_loss(model: Any, hidden: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> LossOutput:
    """:func:`lm_loss_head` applied to hidden states already computed by an unwrapped model
    (benchmarks and tests; training goes through the forward, ``Objective.loss``)."""
    from archlab.model import LMHead

    weight, bias = model.lm_head_weight()
    return lm_loss_head(labels, label_smoothing)(hidden, LMHead(model.lm_head_input, weight, bias))


def model_config(model: Any) -> Any:
    """The model config behind a data-parallel wrapper (DDP keeps the model as ``.module``)."""
    return getattr(model, "module", model).cfg


class Objective:
    """Base class. Subclasses set ``name``, ``archs`` and implement ``build`` (and may override
    ``loss``)."""

    name: ClassVar[str] = ""
    archs: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[str] = "ids"  # which Example fields: ids | pair | label

    def __init__(
        self,
        special: SpecialTokens,
        arch: str,
        max_len: int = 512,
        *,
        decoder_start: int | None = None,
        label_smoothing: float = 0.0,
        max_source_len: int | None = None,
        max_target_len: int | None = None,
        **options: Any,
    ) -> None:
        if options:
            raise ConfigError(f"objective {self.name}: unknown option(s) {', '.join(sorted(options))}")
        if arch not in self.archs:
            raise ConfigError(
                f"objective {self.name} does not fit arch {arch}; it runs on: {', '.join(self.archs)}"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"objective {self.name}: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.special = special
        self.arch = arch
        # training only: evaluation reports the plain cross-entropy (comparable across runs)
        self.label_smoothing = label_smoothing
        self.max_len = max_len  # longest sequence a model input may have (tokens)
        self.decoder_start = special.bos if decoder_start is None else decoder_start
        for key, v in (("max_source_len", max_source_len), ("max_target_len", max_target_len)):
            if v is not None and v < 1:
                raise ConfigError(f"train.{key} must be >= 1 or null, got {v}")
        # source/target token budgets of (source, target) pairs (objectives.layout)
        self.budget = PairBudget(max_len, max_source_len, max_target_len)

    def truncated(self, ex: Example) -> bool:
        """Whether ``build`` cuts tokens of this example (counted per run)."""
        if ex.src is not None and self.needs == "pair":
            return self.budget.truncated(self.arch, ex.src, ex.tgt or [])
        return len(ex.ids) > self.text_budget

    def batch_length(self, ex: Example) -> int:
        """Tokens ``ex`` is budgeted at when batched (:class:`~archlab.data.Batcher`): a pair
        by :meth:`PairBudget.batch_length` (the same for every family with explicit budgets),
        a text as cut plus two specials."""
        if ex.src is not None and self.needs == "pair":
            return self.budget.batch_length(len(ex.src), len(ex.tgt or []))
        return min(len(ex.ids), self.text_budget) + 2

    @property
    def text_budget(self) -> int:
        """Tokens kept of a single text (the source budget when one is set)."""
        return self.budget.max_source if self.budget.max_source is not None else self.max_len - 2

    def build(self, examples: Sequence[Example], rng: np.random.Generator) -> Batch:
        raise NotImplementedError

    def forward(self, model: Any, batch: Batch, head: Any = None) -> Any:
        """Run the model on a built batch (``ModelOutput``; ``hidden`` aligned with ``labels``),
        with an optional ``head`` evaluated inside the forward (``head_out``). Always through
        ``model(...)``, so a data-parallel wrapper's hooks see every use of the weights."""
        if self.arch == "encoder-decoder":
            return model(batch["input_ids"], batch["attention_mask"],
                         decoder_input_ids=batch["decoder_input_ids"],
                         decoder_attention_mask=batch.get("decoder_attention_mask"),
                         return_logits=False, head=head)
        return model(batch["input_ids"], batch["attention_mask"],
                     prefix_lengths=batch.get("prefix_lengths"),
                     token_type_ids=batch.get("token_type_ids"),
                     return_logits=False, head=head)

    def teacher_flops(self, batch: Batch) -> int:
        """Forward FLOPs of models other than the one trained (a distillation teacher)."""
        return 0

    def loss(self, model: Any, batch: Batch) -> LossOutput:
        smoothing = self.label_smoothing if model.training else 0.0
        out = self.forward(model, batch, head=lm_loss_head(batch["labels"], smoothing))
        return with_aux(out.head_out, out, model.training)

    def _clip(self, ids: Sequence[int], room: int) -> list[int]:
        return list(ids[: max(room, 0)])
