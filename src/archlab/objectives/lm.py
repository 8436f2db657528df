"""Language-modelling, sequence-to-sequence and classification objectives."""

from __future__ import annotations

from collections.abc import Sequence

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
from archlab.objectives.layout import lm_sequence, seq2seq_pair

GENERATIVE = ("decoder", "prefix-lm", "encoder-decoder")
DECODERS = ("decoder", "prefix-lm")


class CausalLM(Objective):
    """Next-token prediction over ``<bos> text <eos>`` (Radford et al. 2018).

    On an encoder-decoder model the text is the decoder's target and the encoder reads an
    empty source (a lone ``<eos>``): the T5 paper's "LM" baseline for that architecture is
    prefix-LM (below); this is the plain decoder-side LM.
    """

    name = "causal-lm"
    archs = GENERATIVE

    def build(self, examples: Sequence[Example], rng: np.random.Generator) -> Batch:
        sp = self.special
        inputs, labels = zip(*(lm_sequence(ex.ids, sp, self.max_len) for ex in examples))
        ids, mask = pad_sequences(inputs, sp.pad)
        return {"input_ids": ids, "attention_mask": mask, "labels": pad_labels(labels, ids.shape[1])}

    def forward(self, model, batch, head=None):  # noqa: ANN001
        if self.arch == "encoder-decoder":
            B = batch["input_ids"].shape[0]
            src = torch.full((B, 1), self.special.eos, dtype=torch.long, device=batch["input_ids"].device)
            return model(src, torch.ones_like(src, dtype=torch.bool),
                         decoder_input_ids=batch["input_ids"],
                         decoder_attention_mask=batch["attention_mask"], return_logits=False, head=head)
        return super().forward(model, batch, head)


class PrefixLM(Objective):
    """Prefix language modelling (Raffel et al. 2020 Sec. 3.3.1; Liu et al. 2018): each text is
    split at a uniformly random point; the model reads the prefix and is trained to predict the
    rest. On a prefix-LM the prefix is attended bidirectionally; on a decoder-only model it is
    read causally (loss still on the continuation only); on an encoder-decoder the prefix is the
    encoder input and the continuation the decoder target."""

    name = "prefix-lm"
    archs = GENERATIVE

    def build(self, examples: Sequence[Example], rng: np.random.Generator) -> Batch:
        srcs, tgts = [], []
        for ex in examples:
            ids = ex.ids[: self.max_len - 2]
            cut = int(rng.integers(1, len(ids))) if len(ids) > 1 else len(ids)
            srcs.append(ids[:cut])
            tgts.append(ids[cut:])
        return build_seq2seq(self, srcs, tgts)


class Seq2Seq(Objective):
    """Supervised sequence-to-sequence (translation, summarization).

    encoder-decoder: encoder reads ``source <eos>``, decoder predicts ``target <eos>`` from
    ``<start> target`` (Sutskever et al. 2014; Vaswani et al. 2017). decoder / prefix-LM: one
    sequence ``<bos> source <sep> target <eos>`` with the loss on the target only; a prefix-LM
    attends the ``<bos> source <sep>`` prefix bidirectionally (Raffel et al. 2020 Sec. 3.2.1).
    """

    name = "seq2seq"
    archs = GENERATIVE
    needs = "pair"

    def build(self, examples: Sequence[Example], rng: np.random.Generator) -> Batch:
        return build_seq2seq(self, [ex.src or [] for ex in examples], [ex.tgt or [] for ex in examples],
                             [ex.tgt_given for ex in examples])


def build_seq2seq(obj: Objective, srcs: Sequence[Sequence[int]], tgts: Sequence[Sequence[int]],
                  givens: Sequence[Sequence[int] | None] | None = None) -> Batch:
    """Shared by seq2seq, prefix-LM, span corruption and denoising: a (source, target) pair in
    the layout of ``obj.arch`` (``objectives.layout``, the same definition decoding uses),
    truncated to the objective's source/target budgets. ``givens``: per pair, the target
    indices that are given (no loss; ``Example.tgt_given``)."""
    sp = obj.special
    givens = givens if givens is not None else [None] * len(srcs)
    lay = [seq2seq_pair(obj.arch, *obj.budget.cut_pair(obj.arch, s, t), sp, obj.decoder_start, g)
           for s, t, g in zip(srcs, tgts, givens)]
    if obj.arch == "encoder-decoder":
        ids, mask = pad_sequences([x.encoder or [] for x in lay], sp.pad)
        dids, dmask = pad_sequences([x.decoder for x in lay], sp.pad)
        return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dids,
                "decoder_attention_mask": dmask, "labels": pad_labels([x.labels for x in lay], dids.shape[1])}
    ids, mask = pad_sequences([x.decoder for x in lay], sp.pad)
    return {"input_ids": ids, "attention_mask": mask,
            "labels": pad_labels([x.labels for x in lay], ids.shape[1]),
            "prefix_lengths": torch.tensor([x.prompt_len for x in lay], dtype=torch.long)}


class MaskedLM(Objective):
    """BERT's masked-LM (Devlin et al. 2019, Sec. 3.1): choose ``rate`` (15 %) of the tokens;
    of those, 80 % become ``<mask>``, 10 % a random token, 10 % stay; predict the originals.
    Input is ``<cls> text <sep>``; special tokens are never chosen."""

    name = "masked-lm"
    archs = ("encoder",)

    def __init__(self, special, arch: str, max_len: int = 512, *, rate: float = 0.15, **kw) -> None:  # noqa: ANN001
        super().__init__(special, arch, max_len, **kw)
        if not 0.0 < rate < 1.0:
            raise ConfigError(f"objective masked-lm: rate must be in (0, 1), got {rate}")
        self.rate = rate

    def build(self, examples: Sequence[Example], rng: np.random.Generator) -> Batch:
        sp = self.special
        inputs, labels = [], []
        for ex in examples:
            text = np.asarray(ex.ids[: self.max_len - 2], dtype=np.int64)
            n = len(text)
            lab = np.full(n, IGNORE, dtype=np.int64)
            inp = text.copy()
            if n:
                k = max(1, int(round(self.rate * n)))
                pos = rng.choice(n, size=min(k, n), replace=False)
                lab[pos] = text[pos]
                r = rng.random(len(pos))
                inp[pos[r < 0.8]] = sp.mask
                swap = pos[(r >= 0.8) & (r < 0.9)]
                if len(swap) and sp.vocab_size > sp.first_normal:
                    inp[swap] = rng.integers(sp.first_normal, sp.vocab_size, size=len(swap))
            inputs.append([sp.cls, *inp.tolist(), sp.sep])
            labels.append([IGNORE, *lab.tolist(), IGNORE])
        ids, mask = pad_sequences(inputs, sp.pad)
        return {"input_ids": ids, "attention_mask": mask, "labels": pad_labels(labels, ids.shape[1])}


class Classification(Objective):
    """Sequence classification with the model's pooled head (every family)."""

    name = "classification"
    archs = ("encoder", "decoder", "prefix-lm", "encoder-decoder")
    needs = "label"

    def build(self, examples: Sequence[Example], rng: np.random.Generator) -> Batch:
        sp = self.special
        seqs = [[sp.cls, *ex.ids[: self.text_budget], sp.sep] for ex in examples]
        ids, mask = pad_sequences(seqs, sp.pad)
        y = torch.tensor([ex.label if ex.label is not None else IGNORE for ex in examples])
        return {"input_ids": ids, "attention_mask": mask, "class_labels": y}

    def loss(self, model, batch: Batch) -> LossOutput:  # noqa: ANN001
        out = model(batch["input_ids"], batch["attention_mask"], classify=True)
        logits = out.class_logits
        y = batch["class_labels"]
        loss = F.cross_entropy(logits.float(), y)
        correct = int((logits.argmax(-1) == y).sum())
        return with_aux(LossOutput(loss, int((y != IGNORE).sum()), correct), out, model.training)
