"""The prompt layout, defined once: how a (source, target) pair or a text becomes the model's
input in training (``objectives``) and how an input becomes the decoding prompt
(``archlab.generate``). Both sides call these functions, so a training example's prompt part
is, token for token, the prompt the model is later decoded from.

Layouts (``GenerationConfig.prompt_layout``):

- ``seq2seq`` (seq2seq, prefix-LM, span-corruption and denoising objectives): an encoder-decoder
  encodes ``source <eos>`` and its decoder starts from ``<start>``, then ``target <eos>``
  (Sutskever et al. 2014; Vaswani et al. 2017); a decoder-only or prefix-LM model reads one
  sequence ``<bos> source <sep> target <eos>`` (Raffel et al. 2020 Sec. 3.2.1), the prompt being
  ``<bos> source <sep>`` (a prefix-LM attends to it bidirectionally);
- ``lm`` (causal-LM): ``<bos> text <eos>``; the prompt is ``<bos> text`` (an encoder-decoder
  encodes an empty source, ``<eos>``);
- ``raw``: ids as given (converted Hugging Face models with their own conventions).

Truncation: a source is cut to ``max_source`` tokens and a target to ``max_target`` tokens,
special tokens not counted. With explicit budgets (``train.max_source_len`` /
``train.max_target_len``; ``archlab compare`` always sets both) every family sees exactly the
same source and target tokens; a decoder-only context then holds ``max_source + max_target + 3``
tokens. Without them the budgets fill ``max_len`` as each family's layout allows (an
encoder-decoder keeps ``max_len - 1`` of each side, a decoder-only sequence shares ``max_len``
between them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

IGNORE = -100
DECODER_ONLY = ("decoder", "prefix-lm")


def layout_for_objective(objective: str | None) -> str:
    """The prompt layout a model trained with ``objective`` is decoded with (None: a bare model
    directory without a run, ``raw``). The one place ``archlab generate``, ``archlab evaluate``
    and ``archlab compare`` take it from."""
    if objective is None:
        return "raw"
    return "lm" if objective == "causal-lm" else "seq2seq"


@dataclass(frozen=True)
class PairBudget:
    """Token budgets of a (source, target) pair, special tokens excluded; None: fill ``max_len``
    as the family's layout allows (see the module docstring)."""

    max_len: int = 512
    max_source: int | None = None
    max_target: int | None = None

    @property
    def explicit(self) -> bool:
        return self.max_source is not None and self.max_target is not None

    def source_budget(self, arch: str) -> int:
        if self.max_source is not None:
            return self.max_source
        return max(self.max_len - (1 if arch not in DECODER_ONLY else 3), 0)

    def cut_source(self, arch: str, src: Sequence[int]) -> list[int]:
        return list(src[: self.source_budget(arch)])

    def cut_pair(self, arch: str, src: Sequence[int], tgt: Sequence[int]) -> tuple[list[int], list[int]]:
        s = self.cut_source(arch, src)
        if self.max_target is not None:
            room = self.max_target
        elif arch in DECODER_ONLY:  # the rest of <bos> src <sep> tgt <eos> within max_len + 1
            room = max(self.max_len - 2 - len(s), 1)
        else:
            room = max(self.max_len - 1, 0)
        return s, list(tgt[:room])

    def truncated(self, arch: str, src: Sequence[int], tgt: Sequence[int]) -> bool:
        s, t = self.cut_pair(arch, src, tgt)
        return len(s) < len(src) or len(t) < len(tgt)

    def context(self, arch: str) -> int | None:
        """Longest model input of the layout with explicit budgets (None: not explicit)."""
        if not self.explicit:
            return None
        assert self.max_source is not None and self.max_target is not None
        if arch in DECODER_ONLY:
            return self.max_source + self.max_target + 2  # <bos> src <sep> tgt (inputs drop <eos>)
        return max(self.max_source, self.max_target) + 1

    def batch_length(self, src_len: int, tgt_len: int) -> int:
        """Tokens a pair is budgeted at when batched: both sides as cut plus three specials.
        With explicit budgets this is the same for every family (the cut is), so token-budget
        batching puts the same examples into the same batches whatever the layout; without
        them, the decoder-only cut (the longer layout) is used for every family too."""
        if self.explicit:
            assert self.max_source is not None and self.max_target is not None
            return min(src_len, self.max_source) + min(tgt_len, self.max_target) + 3
        s = min(src_len, self.source_budget("decoder"))
        return s + min(tgt_len, max(self.max_len - 2 - s, 1)) + 3


@dataclass(frozen=True)
class TaskLayout:
    """Lengths of one task's examples as each family runs them, defined once: the context a
    run needs (``train.max_len``), and the length an example is budgeted at when batched,
    which is the same for every family. ``archlab compare`` sizes contexts with it, the
    trainer's batcher groups examples with it (through :meth:`Objective.batch_length`), and
    :func:`counted_tokens` gives the tokens the trainer counts per example (FLOPs per token).

    ``kind``: ``pair`` (source, target), ``pairs`` ((query, positive) for retrieval), ``label``
    (a text and a class), ``tags`` (words with a tag each) or ``text``."""

    kind: str
    max_len: int
    max_source: int | None = None
    max_target: int | None = None

    @property
    def budget(self) -> PairBudget:
        return PairBudget(self.max_len, self.max_source, self.max_target)

    def context(self, arch: str, objective: str | None = None) -> int:
        """``train.max_len`` of a run of ``arch`` (and ``objective``): the longest model input
        of the shared budgets in the family's layout (a decoder-only sequence holds source,
        target and three specials, less the ``<eos>`` its inputs drop; a classified or tagged
        text ``<cls> text <sep>``; a retrieval pair's longer text so framed; a probe pair
        answered by token classification ``<cls> source <sep> target`` in every family);
        without budgets, ``max_len``."""
        if self.kind == "pair" and objective == "token-classification" and self.budget.explicit:
            assert self.max_source is not None and self.max_target is not None
            return self.max_source + self.max_target + 2
        if self.kind == "pair" and self.budget.explicit:
            ctx = self.budget.context(arch)
            assert ctx is not None
            return ctx
        if self.kind in ("label", "tags") and self.max_source is not None:
            return self.max_source + 2
        if self.kind == "pairs" and self.max_source is not None and self.max_target is not None:
            # (contrastive) each text is its own row <cls> text <sep>, queries and positives stacked
            return max(self.max_source, self.max_target) + 2
        return self.max_len


def batch_tokens(batch: Any) -> int:
    """Real (unpadded) tokens of a built batch, encoder and decoder inputs together: what the
    trainer counts as tokens trained."""
    n = int(batch["attention_mask"].sum())
    if "decoder_attention_mask" in batch:
        n += int(batch["decoder_attention_mask"].sum())
    return n


def counted_tokens(objective: Any, examples: Sequence[Any], seed: int = 0) -> float:
    """Mean tokens the trainer counts per example of ``examples`` under ``objective`` (its
    family's layout, budgets and framing tokens): built, not restated, so that FLOPs per
    example / this is FLOPs per counted token for every objective, random ones included."""
    import numpy as np

    if not examples:
        return 1.0
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(0, len(examples), 256):
        total += batch_tokens(objective.build(list(examples[i : i + 256]), rng))
    return total / len(examples)


@dataclass
class PairLayout:
    """One pair laid out for training: encoder ids (encoder-decoder), decoder inputs, labels
    aligned with the decoder inputs (-100: no loss), and the prompt length (its first tokens)."""

    encoder: list[int] | None
    decoder: list[int]
    labels: list[int]
    prompt_len: int


def seq2seq_prompt(arch: str, src: Sequence[int], special: Any, decoder_start: int) -> tuple[list[int], list[int] | None]:
    """(decoder prompt, encoder ids or None) of an already truncated source."""
    if arch == "encoder-decoder":
        return [decoder_start], [*src, special.eos]
    return [special.bos, *src, special.sep], None


def seq2seq_pair(arch: str, src: Sequence[int], tgt: Sequence[int], special: Any, decoder_start: int,
                 given: Sequence[int] | None = None) -> PairLayout:
    """The training layout of an already truncated pair: the prompt, then ``target <eos>``.
    ``given``: indices of target tokens that are given, not predicted (they stay in the
    inputs, teacher-forced, and carry no loss: the query keys of MQAR's interleaved layout,
    Arora et al. 2023); indices past a truncated target are dropped."""
    prompt, enc = seq2seq_prompt(arch, src, special, decoder_start)
    tail = [*tgt, special.eos]
    seq = prompt + tail
    labels = list(tail)
    for j in given or ():
        if 0 <= j < len(tgt):
            labels[j] = IGNORE
    # the model predicts token i+1 from tokens <= i: inputs drop the last token, labels the
    # first, and positions inside the prompt (but its last) carry no loss
    return PairLayout(enc, seq[:-1], [IGNORE] * (len(prompt) - 1) + labels, len(prompt))


def lm_prompt(arch: str, text: Sequence[int], special: Any) -> tuple[list[int], list[int] | None]:
    """(decoder prompt, encoder ids or None) continuing ``text`` (causal-LM layout)."""
    return [special.bos, *text], ([special.eos] if arch == "encoder-decoder" else None)


def lm_sequence(text: Sequence[int], special: Any, max_len: int) -> tuple[list[int], list[int]]:
    """(inputs, labels) of ``<bos> text <eos>``, at most ``max_len`` inputs."""
    seq = [special.bos, *text[: max_len - 1], special.eos][: max_len + 1]
    return seq[:-1], seq[1:]
