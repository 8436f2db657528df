"""The data layer's own types: the ``data:`` config, examples as text and as token ids, a
loaded dataset, and the special-token ids a tokenizer defines (objectives re-export the last two)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


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
    # tagging (token classification): per token of ``ids``, the index of the word it belongs
    # to; per word, its tag id, and the tag a word's later sub-tokens get (the I- tag of a
    # B- word: ``data.tags.inside_tags``)
    word_ids: list[int] | None = None
    tags: list[int] | None = None
    cont_tags: list[int] | None = None


# text: one text per example; pair: source -> target (generation); label: text and class;
# pairs: (query, positive) pairs for retrieval (source, target; each query's positive is unique);
# tags: words with one tag each (named entities, BIO: token classification)
Kind = Literal["text", "pair", "label", "pairs", "tags"]


@dataclass
class DataConfig:
    """The ``data:`` section of a run config."""

    task: str = "translation-en-de"  # a bundled task (archlab.data.TASKS) or "file"
    path: str | None = None  # task file: a file, or a directory with train/valid/test files
    # conll: one ``token<TAB>tag`` line per word, a blank (or tab-only) line between sentences
    format: Literal["auto", "text", "jsonl", "tsv", "csv", "conll"] = "auto"
    text_field: str = "text"
    source_field: str = "source"
    target_field: str = "target"
    label_field: str = "label"
    # shares of the examples held out by a seeded hash (datasets.split_by_key); None: the task's
    # default, 0.03 each (wnut16-ner: 0.1 each, its documented 80/10/10 split)
    valid_fraction: float | None = None
    test_fraction: float | None = None
    seed: int = 1234  # split seed (the training order has its own seed, train.seed)
    max_examples: int | None = None  # keep a seeded sample of this many training examples
    max_source_chars: int | None = None  # pairs: drop pairs whose source is longer (all splits)
    max_target_chars: int | None = None  # pairs: drop pairs whose target is longer
    min_chars: int = 1  # drop examples whose text/source/target is shorter
    reverse: bool = False  # pairs: swap source and target (e.g. de -> en)
    # options of a generated probe task (archlab.data.probes: mqar, selective-copy, induction,
    # copy), checked per task; other tasks take none
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextExample:
    text: str | None = None
    source: str | None = None
    target: str | None = None
    label: int | None = None
    # probe tasks: word indices of ``target`` that are given (teacher-forced, not scored;
    # see Example.tgt_given) and the evaluation group (e.g. "512": the input length)
    tgt_given: list[int] | None = None
    group: str | None = None
    # tags tasks: the words of a sentence and their tag ids (``Dataset.label_names``); ``text``
    # is the words joined by spaces (what tokenizers are trained on)
    words: list[str] | None = None
    tags: list[int] | None = None


@dataclass
class Dataset:
    train: list[TextExample]
    valid: list[TextExample]
    test: list[TextExample]
    kind: Kind
    name: str
    label_names: list[str] | None = None  # label tasks: the classes; tags tasks: the tags
    notes: dict[str, Any] = field(default_factory=dict)
    # probe tasks: every symbol the task can produce (one word-level token each, see
    # tokenizer kind ``word``) and the scoring they take ("probe": per-token accuracy and
    # exact match of the answer, archlab.evaluate.metrics.probe_metrics)
    symbols: list[str] | None = None
    scoring: str | None = None


def score_kind(ds: Dataset) -> str:
    """How examples of ``ds`` are scored (archlab.evaluate.runner.score_task's ``kind``):
    ``probe`` for the generated probe tasks (pair data scored by answer accuracy), else the
    data kind (pair | label | text)."""
    return ds.scoring or ds.kind
