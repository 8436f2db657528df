"""The data layer's own types: the special-token ids a tokenizer defines, and one example as
token ids. Objectives consume both (``archlab.objectives`` re-exports them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens objectives insert (from the tokenizer)."""

    pad: int = 0
    bos: int = 1
    eos: int = 2
    mask: int = 3
    sep: int = 4
    cls: int = 5
    sentinels: tuple[int, ...] = ()  # T5 span-corruption sentinels <extra_id_0>, ...
    vocab_size: int = 0  # random replacement range for MLM (0: unknown, no random swaps)
    first_normal: int = 0  # ids below this (and the sentinels) are special, never sampled

    def special_ids(self) -> set[int]:
        return {self.pad, self.bos, self.eos, self.mask, self.sep, self.cls, *self.sentinels}


@dataclass
class Example:
    """One training example as token ids (no special tokens added yet)."""

    ids: list[int] = field(default_factory=list)  # text (LM objectives, classification)
    src: list[int] | None = None  # seq2seq source
    tgt: list[int] | None = None  # seq2seq target
    label: int | None = None  # classification
    # indices into ``tgt`` of target tokens that are given, not predicted: teacher-forced in
    # training (label -100) and forced, not generated, when decoding (the query keys of MQAR's
    # interleaved layout, Arora et al. 2023); None: every target token is predicted
    tgt_given: list[int] | None = None
