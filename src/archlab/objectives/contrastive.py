"""Sentence embeddings by contrastive learning with in-batch negatives (a bi-encoder).

Each example is a (query, positive) pair: ``Example.src`` and ``Example.tgt`` (a
``TextExample``'s source and target). Both texts are read by the same model (one tower with
shared weights, Sentence-BERT's siamese set-up; Reimers & Gurevych 2019), each framed as
``<cls> text <sep>`` (the classification layout, for every family), pooled to one vector and
L2-normalised. The loss is InfoNCE over the batch (van den Oord et al. 2018; the
MultipleNegativesRankingLoss of Sentence-BERT, Henderson et al. 2017): query i must pick its own
positive among the B positives of the batch,

    loss = CE(cos(q_i, p_j) / temperature, j = i),

temperature 0.05 by default (SimCSE, Gao et al. 2021; sentence-transformers' scale 20).
``symmetric: true`` adds the same loss from the positives' side, (CE(S) + CE(S^T)) / 2 (CLIP,
Radford et al. 2021).

Pooling per family (``pooling: auto``), always from the hidden states the model returns:

- encoder: mean over the real tokens (Sentence-BERT's best pooling, and all-MiniLM-L6-v2's
  published recipe: mean pooling, then L2 normalisation);
- decoder: the last real token, ``<sep>``, the only position that has seen the whole text
  under a causal mask (cpt-text, Neelakantan et al. 2022; E5-Mistral); right padding is
  skipped, so a text's embedding does not depend on its batch;
- prefix-LM: the whole text is one bidirectional prefix, mean over it;
- encoder-decoder: the encoder alone, mean over its states (Sentence-T5's ST5-Enc mean, Ni et
  al. 2022, and the GTR dual encoders built from T5, Ni et al. 2021). The decoder's first
  state (ST5-EncDec) costs a decoder pass for no retrieval gain in those papers; here the
  decoder does not run, so an encoder-decoder entry's decoder weights are unused (its
  parameter count includes them).

``pooling: mean | last | first`` forces one mode for any family.

Queries and positives run through the model in one forward, stacked as 2B rows (so a
data-parallel wrapper sees one forward per micro-batch); the shorter side is padded to the
longer. Queries are cut to ``train.max_source_len`` tokens and positives to
``train.max_target_len`` (special tokens not counted; without budgets ``max_len - 2``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from archlab.errors import ConfigError
from archlab.model.transformer import pool_states
from archlab.objectives.base import Batch, Example, LossOutput, Objective, pad_sequences, with_aux

POOLINGS = ("auto", "mean", "last", "first")
AUTO_POOLING = {"encoder": "mean", "decoder": "last", "prefix-lm": "mean", "encoder-decoder": "mean"}


class Contrastive(Objective):
    """In-batch-negatives InfoNCE over (query, positive) pairs; see the module docstring."""

    name = "contrastive"
    archs = ("encoder", "decoder", "prefix-lm", "encoder-decoder")
    needs = "pair"

    def __init__(self, special, arch: str, max_len: int = 512, *, temperature: float = 0.05,  # noqa: ANN001
                 symmetric: bool = False, pooling: str = "auto", **kw: Any) -> None:
        super().__init__(special, arch, max_len, **kw)
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature <= 0:
            raise ConfigError(f"objective contrastive: temperature must be a number > 0, got {temperature!r}")
        if not isinstance(symmetric, bool):
            raise ConfigError(f"objective contrastive: symmetric must be true or false, got {symmetric!r}")
        if pooling not in POOLINGS:
            raise ConfigError(f"objective contrastive: pooling {pooling!r} is not valid; choose one of: "
                              f"{', '.join(POOLINGS)}")
        self.temperature = float(temperature)
        self.symmetric = symmetric
        self.pooling = AUTO_POOLING[arch] if pooling == "auto" else pooling

    # ---- lengths ------------------------------------------------------------------------
    @property
    def query_budget(self) -> int:
        """Tokens kept of a query (special tokens not counted)."""
        return self.budget.max_source if self.budget.max_source is not None else self.max_len - 2

    @property
    def positive_budget(self) -> int:
        return self.budget.max_target if self.budget.max_target is not None else self.max_len - 2

    @property
    def context(self) -> int | None:
        """Longest model row with explicit budgets (a text and its two specials); None: not explicit."""
        if not self.budget.explicit:
            return None
        return max(self.query_budget, self.positive_budget) + 2

    def truncated(self, ex: Example) -> bool:
        return len(ex.src or []) > self.query_budget or len(ex.tgt or []) > self.positive_budget

    def batch_length(self, ex: Example) -> int:
        """Both texts share one padded forward: a pair costs two rows of its longer side (with
        ``<cls>``/``<sep>``), the same for every family."""
        q, p = min(len(ex.src or []), self.query_budget), min(len(ex.tgt or []), self.positive_budget)
        return 2 * (max(q, p) + 2)

    # ---- batches ------------------------------------------------------------------------
    def text_batch(self, texts: Sequence[Sequence[int]], budget: int | None = None) -> Batch:
        """Texts (token ids) as model rows ``<cls> text <sep>``, right-padded, cut to ``budget``
        tokens (default: the query budget)."""
        sp = self.special
        n = self.query_budget if budget is None else budget
        ids, mask = pad_sequences([[sp.cls, *list(t)[:n], sp.sep] for t in texts], sp.pad)
        batch = {"input_ids": ids, "attention_mask": mask}
        if self.arch == "prefix-lm":  # every row is one bidirectional prefix (pads are masked keys)
            batch["prefix_lengths"] = torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long)
        return batch

    def build(self, examples: Sequence[Example], rng: np.random.Generator) -> Batch:
        sp = self.special
        rows = ([[sp.cls, *(ex.src or [])[: self.query_budget], sp.sep] for ex in examples]
                + [[sp.cls, *(ex.tgt or [])[: self.positive_budget], sp.sep] for ex in examples])
        ids, mask = pad_sequences(rows, sp.pad)  # (2B, T): B queries, then their B positives
        B = len(examples)
        batch = {"input_ids": ids, "attention_mask": mask,
                 # query i's positive is column i of the similarity matrix
                 "class_labels": torch.arange(B, dtype=torch.long)}
        if self.arch == "prefix-lm":
            batch["prefix_lengths"] = torch.full((2 * B,), ids.shape[1], dtype=torch.long)
        return batch

    # ---- forward ------------------------------------------------------------------------
    def forward(self, model: Any, batch: Batch, head: Any = None) -> Any:
        if self.arch == "encoder-decoder":  # the encoder's states; the decoder does not run
            return model(batch["input_ids"], batch["attention_mask"], token_type_ids=batch.get("token_type_ids"),
                         encoder_only=True, return_logits=False, head=head)
        return super().forward(model, batch, head)

    def embed(self, model: Any, batch: Batch) -> tuple[torch.Tensor, Any]:
        """(L2-normalised embeddings (N, C) in float32, the model output) of the rows of ``batch``."""
        out = self.forward(model, batch)
        pooled = pool_states(out.hidden, batch["attention_mask"].bool(), self.pooling)  # (N, C)
        return F.normalize(pooled.float(), dim=-1), out

    def loss(self, model: Any, batch: Batch) -> LossOutput:
        emb, out = self.embed(model, batch)
        y = batch["class_labels"]  # (B,)
        B = y.shape[0]
        q, p = emb[:B], emb[B:]  # (B, C) each
        sim = q @ p.T / self.temperature  # (B, B) cosine / temperature
        loss = F.cross_entropy(sim, y)
        if self.symmetric:
            loss = 0.5 * (loss + F.cross_entropy(sim.T, y))
        correct = int((sim.argmax(-1) == y).sum())  # in-batch top-1 accuracy
        return with_aux(LossOutput(loss, B, correct), out, model.training)


__all__ = ["AUTO_POOLING", "POOLINGS", "Contrastive"]
