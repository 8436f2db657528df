"""Token classification: a class for every input token, in every family.

Tagging (``tags`` data: named-entity recognition with BIO tags). Each sentence is one model
row ``<cls> text <sep>`` (the classification layout) and a token-classification head (model
``n_tags``: dropout + linear on every final hidden state, BERT's BertForTokenClassification,
Devlin et al. 2019 Sec. 4.3) scores the tags of every token. A word the tokenizer splits into
several sub-tokens is labelled on its first sub-token only (``label_on: first``, BERT's
CoNLL-2003 recipe; the other pieces carry no loss) or on every sub-token (``label_on: all``:
the later pieces of a ``B-X`` word get ``I-X``, so the pieces stay one well-formed entity).
Either way a word's predicted tag is its first sub-token's (how it is scored,
``archlab.evaluate.metrics.ner_metrics``).

Per family, from the hidden states the model returns:

- encoder: bidirectional, every token sees the whole sentence;
- decoder: causal, **each token sees only its left context** (the tag of a word is decided
  before the words after it are read; reports say so);
- prefix-LM: the whole row is one bidirectional prefix (as the contrastive objective reads
  texts), so it tags like an encoder with the decoder's weights;
- encoder-decoder: the encoder's states (the decoder does not run). The tags are aligned
  with the input tokens, which the encoder already reads bidirectionally; running the decoder
  over the input again (teacher-forced, cross-attending to the encoder) would cost a second
  stack per token to give each tag what the encoder's state already has, plus a causal read
  of its left context only. The encoder alone is also how T5-style encoders are used for
  token tasks (and Sentence-T5's ST5-Enc for embeddings, Ni et al. 2022). The decoder's
  weights are then unused (counted in the parameters, not the FLOPs).

Answers of a probe task (``mqar``: the pair data of ``archlab.data.probes``): the value at
each query position is classified over the vocabulary. The row is ``<cls> source <sep>
target`` with every predicted target token (those not in ``Example.tgt_given``) replaced by
``<mask>`` and labelled with that token (-100 elsewhere), and the classes are the LM head's
(the vocabulary: a value is a symbol, one token each); the given query keys and filler stay in
the row. This is how an encoder, which cannot generate, answers MQAR (Zoology, Arora et al.
2023, scores the value positions the same way); it runs on the other families too (a causal
decoder then sees the key before each masked slot, but nothing after it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from archlab.errors import ConfigError
from archlab.objectives.base import (
    IGNORE,
    Batch,
    Example,
    LossOutput,
    Objective,
    pad_labels,
    pad_sequences,
    with_aux,
)

LABEL_ON = ("first", "all")


class TokenClassification(Objective):
    """One class per token (tags, or a probe's answer symbols); see the module docstring."""

    name = "token-classification"
    archs = ("encoder", "decoder", "prefix-lm", "encoder-decoder")
    needs = "tags"

    def __init__(self, special, arch: str, max_len: int = 512, *, label_on: str = "first",  # noqa: ANN001
                 **kw: Any) -> None:
        super().__init__(special, arch, max_len, **kw)
        if label_on not in LABEL_ON:
            raise ConfigError(f"objective token-classification: label_on {label_on!r} is not valid; choose "
                              f"one of: {', '.join(LABEL_ON)}")
        self.label_on = label_on

    # ---- lengths ------------------------------------------------------------------------
    def cut_pair(self, src: Sequence[int], tgt: Sequence[int]) -> tuple[list[int], list[int]]:
        """A probe pair cut to the budgets: ``train.max_source_len`` / ``max_target_len`` when
        set, else the source first within ``max_len - 2`` (``<cls>``, ``<sep>``) and the target
        in the room left."""
        b = self.budget
        s = list(src[: b.max_source if b.max_source is not None else max(self.max_len - 2, 0)])
        room = b.max_target if b.max_target is not None else max(self.max_len - 2 - len(s), 0)
        return s, list(tgt[:room])

    @property
    def context(self) -> int | None:
        """Longest model row with explicit budgets (None: not explicit): ``<cls> text <sep>``,
        or ``<cls> source <sep> target`` of a probe pair."""
        b = self.budget
        if b.max_source is None:
            return None
        return b.max_source + 2 + (b.max_target or 0)

    def truncated(self, ex: Example) -> bool:
        if ex.src is not None:
            s, t = self.cut_pair(ex.src, ex.tgt or [])
            return len(s) < len(ex.src) or len(t) < len(ex.tgt or [])
        return len(ex.ids) > self.text_budget

    def batch_length(self, ex: Example) -> int:
        """A probe pair: :meth:`PairBudget.batch_length`, the length every family's layout is
        batched at (the same examples per step as the generative entries); a sentence: its
        tokens as cut plus ``<cls>`` and ``<sep>``."""
        if ex.src is not None:
            return self.budget.batch_length(len(ex.src), len(ex.tgt or []))
        return min(len(ex.ids), self.text_budget) + 2

    # ---- batches ------------------------------------------------------------------------
    def token_labels(self, ex: Example) -> list[int]:
        """Labels of ``ex``'s tokens as cut (no specials): the word's tag on its first
        sub-token; on later sub-tokens the continuation tag (``label_on: all``) or -100."""
        if ex.word_ids is None or ex.tags is None:
            raise ConfigError("objective token-classification needs tags data (words with tags, e.g. "
                              "data.task=wnut16-ner) or the mqar probe")
        if self.label_on == "all" and ex.cont_tags is None:
            raise ConfigError("objective token-classification: label_on all needs the tag set "
                              "(tokenize_examples(..., names=Dataset.label_names))")
        out = []
        prev = -1
        for w in ex.word_ids[: self.text_budget]:
            if w != prev:
                out.append(ex.tags[w])
            elif self.label_on == "all":
                assert ex.cont_tags is not None
                out.append(ex.cont_tags[w])
            else:
                out.append(IGNORE)
            prev = w
        return out

    def build(self, examples: Sequence[Example], rng: np.random.Generator) -> Batch:
        if examples and examples[0].src is not None:
            return self._build_answers(examples)
        sp = self.special
        rows = [[sp.cls, *ex.ids[: self.text_budget], sp.sep] for ex in examples]
        labels = [[IGNORE, *self.token_labels(ex), IGNORE] for ex in examples]
        ids, mask = pad_sequences(rows, sp.pad)
        return self._framed({"input_ids": ids, "attention_mask": mask,
                             "tag_labels": pad_labels(labels, ids.shape[1])})

    def _build_answers(self, examples: Sequence[Example]) -> Batch:
        sp = self.special
        rows, labels = [], []
        for ex in examples:
            s, t = self.cut_pair(ex.src or [], ex.tgt or [])
            given = set(ex.tgt_given or ())
            row, lab = [sp.cls, *s, sp.sep], [IGNORE] * (len(s) + 2)
            for j, tok in enumerate(t):
                row.append(tok if j in given else sp.mask)
                lab.append(IGNORE if j in given else tok)
            rows.append(row)
            labels.append(lab)
        ids, mask = pad_sequences(rows, sp.pad)
        return self._framed({"input_ids": ids, "attention_mask": mask, "labels": pad_labels(labels, ids.shape[1])})

    def _framed(self, batch: Batch) -> Batch:
        if self.arch == "prefix-lm":  # every row is one bidirectional prefix (pads are masked keys)
            B, T = batch["input_ids"].shape
            batch["prefix_lengths"] = torch.full((B,), T, dtype=torch.long)
        return batch

    # ---- forward ------------------------------------------------------------------------
    def forward(self, model: Any, batch: Batch, head: Any = None, classify_tokens: bool = False) -> Any:
        if self.arch == "encoder-decoder":  # the encoder's states; the decoder does not run
            return model(batch["input_ids"], batch["attention_mask"], encoder_only=True, return_logits=False,
                         head=head, classify_tokens=classify_tokens)
        return model(batch["input_ids"], batch["attention_mask"], prefix_lengths=batch.get("prefix_lengths"),
                     return_logits=False, head=head, classify_tokens=classify_tokens)

    def loss(self, model: Any, batch: Batch) -> LossOutput:
        smoothing = self.label_smoothing if model.training else 0.0
        if "tag_labels" not in batch:  # probe answers: the LM head over the vocabulary
            out = self.forward(model, batch, head=_answer_head(batch["labels"], smoothing))
            return with_aux(out.head_out, out, model.training)
        out = self.forward(model, batch, classify_tokens=True)
        y = batch["tag_labels"]  # (B, T)
        sel = y != IGNORE
        n = int(sel.sum())
        if n == 0:  # still touches the head, so every parameter has a gradient (DDP)
            return with_aux(LossOutput(out.token_logits.sum() * 0.0, 0, 0), out, model.training)
        logits = out.token_logits[sel].float()  # (N, n_tags)
        loss = F.cross_entropy(logits, y[sel], label_smoothing=smoothing)
        correct = int((logits.argmax(-1) == y[sel]).sum())
        return with_aux(LossOutput(loss, n, correct), out, model.training)

    @torch.no_grad()
    def predict(self, model: Any, batch: Batch) -> torch.Tensor:
        """(B, T) predicted class per position: the arg-max tag everywhere (tags data), or the
        arg-max symbol at the labelled answer slots and -100 elsewhere (probe pairs)."""
        if "tag_labels" in batch:
            return self.forward(model, batch, classify_tokens=True).token_logits.argmax(-1)
        labels = batch["labels"]
        sel = labels != IGNORE

        def head(hidden: torch.Tensor, lm: Any) -> torch.Tensor:
            out = torch.full_like(labels, IGNORE)
            if bool(sel.any()):
                out[sel] = lm.logits(hidden[sel]).argmax(-1)
            return out

        return self.forward(model, batch, head=head).head_out


def _answer_head(labels: torch.Tensor, label_smoothing: float) -> Any:
    """Cross-entropy over the vocabulary at the labelled positions (the answer slots), inside
    the forward, with the number right (token accuracy of the validation pass)."""

    def head(hidden: torch.Tensor, lm: Any) -> LossOutput:  # hidden (B, T, C), labels (B, T)
        sel = labels != IGNORE
        n = int(sel.sum())
        if n == 0:
            return LossOutput(lm.logits(hidden[:1, :1]).sum() * 0.0, 0, 0)
        logits = lm.logits(hidden[sel]).float()  # (N, V)
        target = labels[sel]
        loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
        return LossOutput(loss, n, int((logits.argmax(-1) == target).sum()))

    return head


__all__ = ["LABEL_ON", "TokenClassification"]
