"""Probe tasks: small generated tasks on which the published comparisons of attention,
state-space and hybrid models measured specific capabilities (recall, selective copying,
induction, copying, length extrapolation). Generated from ``data.seed``, no download.

Every example is a (source, target) pair of whitespace-separated symbols; the word-level
tokenizer (``tokenizer.kind: word``) makes each symbol one token, so a decoder-only or
prefix-LM model reads ``<bos> source <sep>`` and emits the target, and an encoder-decoder
encodes the source and decodes the target (``archlab.objectives.layout``).

- ``mqar``: multi-query associative recall (Arora et al. 2023, "Zoology", Sec. 3 / App. E):
  key-value pairs ``k1 v1 ... kD vD``, then queries of their keys; each query must be answered
  with its value. Keys come from the lower half of the vocabulary and values from the upper
  half, both without repetition inside an example, as Zoology's ``multiquery_ar``.
  ``queries: interleaved`` (default) follows Zoology's layout: the target is the query region
  of ``seq_len - 2 D`` tokens, a query key followed by its value at slots drawn with Zoology's
  power-law gaps (``power_a = 0.01``, short gaps favoured) and random filler symbols elsewhere;
  every target token but the values is *given* (teacher-forced, no loss, forced when decoding:
  ``TextExample.tgt_given``), so only values are predicted and scored. ``queries: source``
  puts the query keys after the pairs in the source and the target is their values only (the
  layout of the Mamba paper's synthetic tasks; a tiny decoder learned it far more slowly).
- ``selective-copy``: selective copying (Gu & Dao 2023, "Mamba", Sec. 4.1.1 and App. E.1):
  ``n_tokens`` data symbols at random positions of a ``seq_len`` input otherwise filled with
  a noise symbol ``_``; the target is the data symbols in order. (The paper: length 4096,
  16 data tokens, a vocabulary of 16 including the noise token.)
- ``induction``: induction heads (Mamba Sec. 4.1.2; Olsson et al. 2022): random symbols with
  one trigger ``@`` followed by the answer symbol somewhere, and the trigger again as the
  last input token; the target is the answer. Trained at ``train_len`` and tested at every
  ``eval_lens`` length (the paper: trained at 256, tested up to 2^20).
- ``copy``: copying a random string (Jelassi et al. 2024, "Repeat After Me"): the target is the
  source; training strings have lengths uniform in [``min_len``, ``max_len``] and the test
  split holds strings of every ``eval_lens`` length (at and beyond the training lengths).

Test examples of ``induction`` and ``copy`` carry ``group`` = their length ("512"), so the
scores are also reported per length (``token_acc@512``). Held-out examples never repeat a
training source.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from archlab.data.types import DataConfig, Dataset, TextExample
from archlab.errors import ArchlabError, ConfigError

NOISE = "_"  # selective-copy filler
TRIGGER = "@"  # induction's special token
MAX_EXTRAPOLATION = 64  # longest evaluation length / training length


@dataclass
class ProbeOptions:
    """Options every probe task takes (``data.options``)."""

    n_train: int = 10000
    n_valid: int = 200  # at the training length(s)
    n_test: int = 500  # per evaluation length (induction, copy)

    def check(self, raw: dict[str, Any]) -> None:
        for key in ("n_train", "n_valid", "n_test"):
            if getattr(self, key) < 1:
                raise _bad(key, f"must be >= 1, got {getattr(self, key)}")


@dataclass
class MQAROptions(ProbeOptions):
    vocab_size: int = 8192  # keys from the lower half, values from the upper half (Zoology)
    n_pairs: int = 8  # key-value pairs D
    # source + target tokens (Zoology's input_seq_len): the pairs, then a query region with
    # filler (interleaved); queries: source has no filler (2 n_pairs + 2 n_queries)
    seq_len: int = 64
    n_queries: int | None = None  # keys queried (distinct); None: every key (Zoology)
    queries: Literal["interleaved", "source"] = "interleaved"

    @property
    def queried(self) -> int:
        return self.n_pairs if self.n_queries is None else self.n_queries

    def check(self, raw: dict[str, Any]) -> None:
        super().check(raw)
        if self.n_pairs < 1:
            raise _bad("n_pairs", f"must be >= 1, got {self.n_pairs}")
        if self.vocab_size < 2 * self.n_pairs:
            raise _bad("vocab_size", f"{self.vocab_size} symbols cannot hold {self.n_pairs} distinct keys "
                       f"and values (keys and values take half each); need >= {2 * self.n_pairs}")
        if not 1 <= self.queried <= self.n_pairs:
            raise _bad("n_queries", f"must be in [1, n_pairs={self.n_pairs}], got {self.queried}")
        if self.queries == "source":  # no filler: pairs and query keys, then the values
            need = 2 * self.n_pairs + 2 * self.queried
            if "seq_len" in raw and self.seq_len != need:
                raise _bad("seq_len", f"with queries: source an example is {need} tokens (2 x n_pairs + "
                           f"2 x n_queries, no filler), got {self.seq_len}; filler needs queries: interleaved")
            return
        region = self.seq_len - 2 * self.n_pairs
        if region < 2 * self.queried:
            raise _bad("seq_len", f"{self.seq_len} leaves {region} tokens after {self.n_pairs} pairs, fewer "
                       f"than the {2 * self.queried} that {self.queried} queries (key, value) take; need "
                       f">= {2 * self.n_pairs + 2 * self.queried}")


@dataclass
class SelectiveCopyOptions(ProbeOptions):
    seq_len: int = 256  # input tokens, data and noise (the paper: 4096)
    n_tokens: int = 16  # data tokens to copy
    vocab: int = 16  # data symbols (the noise symbol comes on top)

    def check(self, raw: dict[str, Any]) -> None:
        super().check(raw)
        for key in ("seq_len", "n_tokens", "vocab"):
            if getattr(self, key) < 1:
                raise _bad(key, f"must be >= 1, got {getattr(self, key)}")
        if self.n_tokens > self.seq_len:
            raise _bad("n_tokens", f"{self.n_tokens} data tokens do not fit seq_len={self.seq_len}")


@dataclass
class InductionOptions(ProbeOptions):
    train_len: int = 256  # input tokens in training (the paper: 256)
    eval_lens: list[int] | None = None  # test input lengths; None: 1, 2, 4 and 8 x train_len
    vocab: int = 16  # symbols besides the trigger (the paper: 16)

    @property
    def lengths(self) -> list[int]:
        return list(self.eval_lens) if self.eval_lens is not None else [self.train_len * k for k in (1, 2, 4, 8)]

    def check(self, raw: dict[str, Any]) -> None:
        super().check(raw)
        if self.train_len < 3:
            raise _bad("train_len", f"must be >= 3 (trigger, answer, final trigger), got {self.train_len}")
        if self.vocab < 2:
            raise _bad("vocab", f"must be >= 2, got {self.vocab}")
        _check_lengths(self.lengths, 3, self.train_len, "train_len")


@dataclass
class CopyOptions(ProbeOptions):
    vocab: int = 26  # symbols of the strings
    min_len: int = 1  # training string lengths, uniform in [min_len, max_len]
    max_len: int = 32
    eval_lens: list[int] | None = None  # test string lengths; None: 1, 2 and 4 x max_len

    @property
    def lengths(self) -> list[int]:
        return list(self.eval_lens) if self.eval_lens is not None else [self.max_len * k for k in (1, 2, 4)]

    def check(self, raw: dict[str, Any]) -> None:
        super().check(raw)
        if self.vocab < 2:
            raise _bad("vocab", f"must be >= 2, got {self.vocab}")
        if not 1 <= self.min_len <= self.max_len:
            raise _bad("min_len", f"need 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}")
        _check_lengths(self.lengths, 1, self.max_len, "max_len")


def _bad(key: str, msg: str) -> ConfigError:
    return ConfigError(f"data.options.{key}: {msg}")


def _check_lengths(lengths: list[int], low: int, train: int, train_key: str) -> None:
    if not lengths:
        raise _bad("eval_lens", "must list at least one length")
    hi = MAX_EXTRAPOLATION * train
    for n in lengths:
        if not low <= n <= hi:
            raise _bad("eval_lens", f"{n} is outside [{low}, {hi}] ({MAX_EXTRAPOLATION} x {train_key}={train})")
    if len(set(lengths)) != len(lengths):
        raise _bad("eval_lens", f"lengths repeat: {lengths}")


def _digits(n: int) -> list[str]:
    return [str(i) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# generators: (rng, options, length) -> one example; length is the evaluation length or None
# ---------------------------------------------------------------------------------------------
def _mqar(rng: np.random.Generator, o: MQAROptions, length: int | None) -> TextExample:
    half = o.vocab_size // 2
    keys = rng.choice(half, size=o.n_pairs, replace=False)
    values = rng.choice(o.vocab_size - half, size=o.n_pairs, replace=False) + half
    context = np.empty(2 * o.n_pairs, dtype=np.int64)
    context[0::2], context[1::2] = keys, values
    q = rng.permutation(o.n_pairs)[: o.queried]  # which pairs are queried, in order
    if o.queries == "source":
        src = [*context.tolist(), *keys[q].tolist()]
        return TextExample(source=_join(src), target=_join(values[q].tolist()))
    region_len = o.seq_len - 2 * o.n_pairs
    slots = region_len // 2
    # Zoology's gaps: slot i (0-based) drawn with probability ~ (i + 1) ** (a - 1), a = 0.01,
    # without replacement, so most queries sit close to the pairs. Drawn as the top of
    # log p + Gumbel noise (the Gumbel-top-k trick, Kool et al. 2019): the same distribution as
    # successive draws without replacement, and much faster than numpy's weighted choice
    a = 0.01
    logp = (a - 1) * np.log(np.arange(1, slots + 1, dtype=np.float64))
    gaps = np.argsort(-(logp + rng.gumbel(size=slots)), kind="stable")[: o.queried]
    region = rng.integers(0, o.vocab_size, size=region_len)  # filler: random symbols (given)
    region[2 * gaps], region[2 * gaps + 1] = keys[q], values[q]
    is_given = np.ones(region_len, dtype=bool)
    is_given[2 * gaps + 1] = False  # the values: predicted and scored
    given = np.flatnonzero(is_given).tolist()
    return TextExample(source=_join(context.tolist()), target=_join(region.tolist()), tgt_given=given)


def _selective_copy(rng: np.random.Generator, o: SelectiveCopyOptions, length: int | None) -> TextExample:
    pos = np.sort(rng.choice(o.seq_len, size=o.n_tokens, replace=False))
    data = rng.integers(0, o.vocab, size=o.n_tokens)
    seq = [NOISE] * o.seq_len
    for i, d in zip(pos.tolist(), data.tolist()):
        seq[i] = str(d)
    return TextExample(source=" ".join(seq), target=_join(data.tolist()))


def _induction(rng: np.random.Generator, o: InductionOptions, length: int | None) -> TextExample:
    n = length or o.train_len
    seq: list[str] = [str(x) for x in rng.integers(0, o.vocab, size=n).tolist()]
    at = int(rng.integers(0, n - 2))  # trigger at ``at``, answer at at + 1, trigger again last
    seq[at] = seq[-1] = TRIGGER
    return TextExample(source=" ".join(seq), target=seq[at + 1])


def _copy(rng: np.random.Generator, o: CopyOptions, length: int | None) -> TextExample:
    n = length or int(rng.integers(o.min_len, o.max_len + 1))
    s = _join(rng.integers(0, o.vocab, size=n).tolist())
    return TextExample(source=s, target=s)


def _join(xs: list[int]) -> str:
    return " ".join(map(str, xs))



@dataclass(frozen=True)
class Probe:
    options: type[ProbeOptions]
    make: Callable[[np.random.Generator, Any, int | None], TextExample]
    symbols: Callable[[Any], list[str]]  # every symbol the task uses
    answer_symbols: Callable[[Any], int]  # symbols an answer token is drawn from (chance: 1 / this)
    # the lengths trained on (shortest, longest), in the unit of the test groups where there are
    # groups (induction: input tokens; copy: string symbols), else the task's sequence length
    train_lengths: Callable[[Any], tuple[int, int]]
    test_lengths: Callable[[Any], list[int]] | None = None  # grouped test split


def _mqar_len(o: MQAROptions) -> tuple[int, int]:
    n = o.seq_len if o.queries == "interleaved" else 2 * o.n_pairs + 2 * o.queried
    return n, n


PROBES: dict[str, Probe] = {
    "mqar": Probe(MQAROptions, _mqar, lambda o: _digits(o.vocab_size), lambda o: o.vocab_size - o.vocab_size // 2,
                  _mqar_len),
    "selective-copy": Probe(SelectiveCopyOptions, _selective_copy, lambda o: [*_digits(o.vocab), NOISE],
                            lambda o: o.vocab, lambda o: (o.seq_len, o.seq_len)),
    "induction": Probe(InductionOptions, _induction, lambda o: [*_digits(o.vocab), TRIGGER], lambda o: o.vocab,
                       lambda o: (o.train_len, o.train_len), lambda o: o.lengths),
    "copy": Probe(CopyOptions, _copy, lambda o: _digits(o.vocab), lambda o: o.vocab, lambda o: (o.min_len, o.max_len),
                  lambda o: o.lengths),
}


def training_lengths(task: str, options: dict[str, Any]) -> tuple[int, int]:
    """(shortest, longest) length probe ``task`` trains on with ``options``: for the tasks
    tested at several lengths (induction, copy) in the unit of their test groups
    (``token_acc@N``), for the others their sequence length (mqar: input + answer tokens;
    selective-copy: input tokens)."""
    return PROBES[task].train_lengths(probe_options(task, options))


def probe_options(task: str, options: dict[str, Any]) -> ProbeOptions:
    """The checked options of probe ``task`` (unknown keys and bad values: one-line errors)."""
    from archlab.config import from_dict

    spec = PROBES[task]
    try:
        opts = from_dict(spec.options, dict(options), prefix="data.options")
        opts.check(dict(options))
    except ConfigError as e:
        raise ConfigError(f"{e} (data.task={task})") from None
    return opts


def _rng(seed: int, task: str, split: str, length: int | None) -> np.random.Generator:
    # one stream per (seed, task, split, length): a split or length added later leaves the
    # others' examples unchanged
    return np.random.default_rng([seed, zlib.crc32(task.encode()), zlib.crc32(split.encode()), length or 0])


def _held_out(make: Callable[[np.random.Generator], TextExample], rng: np.random.Generator, n: int,
              seen: set[str], where: str) -> list[TextExample]:
    """``n`` examples whose source is not a training source."""
    out: list[TextExample] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 20 * n + 1000:
            raise ArchlabError(f"{where}: found only {len(out)} of {n} examples unlike every training example; "
                               "the task's space is too small (raise the vocabulary or lengths, or lower n_train)")
        ex = make(rng)
        if ex.source not in seen:
            out.append(ex)
    return out


def load_probe(cfg: DataConfig) -> Dataset:
    """Generate the train / validation / test splits of probe task ``cfg.task``."""
    task = cfg.task
    spec = PROBES[task]
    o = probe_options(task, cfg.options)
    train_rng = _rng(cfg.seed, task, "train", None)
    train = [spec.make(train_rng, o, None) for _ in range(o.n_train)]
    seen = {ex.source for ex in train if ex.source is not None}
    valid = _held_out(lambda r: spec.make(r, o, None), _rng(cfg.seed, task, "valid", None), o.n_valid,
                      seen, f"data.task={task} validation")
    notes: dict[str, Any] = {"generated": True, "options": dataclasses.asdict(o),
                             "chance": 1.0 / spec.answer_symbols(o)}
    if spec.test_lengths is None:
        test = _held_out(lambda r: spec.make(r, o, None), _rng(cfg.seed, task, "test", None), o.n_test,
                         seen, f"data.task={task} test")
    else:
        lengths = spec.test_lengths(o)
        test = []
        for n in lengths:
            part = _held_out(lambda r, n=n: spec.make(r, o, n), _rng(cfg.seed, task, "test", n), o.n_test,
                             seen, f"data.task={task} test length {n}")
            for ex in part:
                ex.group = str(n)
            test += part
        # a seeded shuffle, as every split's held-out order (datasets.split_by_key): the first N
        # test examples that evaluation may read (--max-examples, decode.test_examples) then
        # hold every length
        order = _rng(cfg.seed, task, "test-order", None).permutation(len(test))
        test = [test[i] for i in order]
        notes["eval_lens"] = lengths
    return Dataset(train, valid, test, "pair", task, notes=notes, symbols=spec.symbols(o), scoring="probe")
