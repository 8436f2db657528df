"""Probe task generators (archlab.data.probes): answers follow from the input, seeds repeat,
lengths are as asked, held-out examples are new, options are checked, and the given target
positions carry no loss."""

from __future__ import annotations

import numpy as np
import pytest

from archlab.config import apply_overrides, from_dict
from archlab.data import DataConfig, Tokenizer, corpus_texts, load_dataset, tokenize_examples
from archlab.data.datasets import check_symbols, score_kind
from archlab.data.probes import NOISE, PROBES, TRIGGER
from archlab.errors import ConfigError
from archlab.objectives import IGNORE, make_objective

SMALL = {"n_train": 300, "n_valid": 20, "n_test": 20}


def load(task: str, seed: int = 1234, **options):
    return load_dataset(DataConfig(task=task, seed=seed, options={**SMALL, **options}))


# ---- answers computable from the input ------------------------------------------------------
def solve_mqar(ex) -> list[str | None]:
    """The answer at every target position from the source (pairs) and the given tokens:
    None where the position is given. Interleaved: a value follows its query key."""
    s = ex.source.split()
    table = dict(zip(s[0::2], s[1::2]))
    t = ex.target.split()
    given = set(ex.tgt_given)
    return [None if j in given else table[t[j - 1]] for j in range(len(t))]


def test_mqar_interleaved_answers_follow_from_the_pairs():
    ds = load("mqar", vocab_size=64, n_pairs=6, seq_len=40, n_queries=4)
    for ex in ds.train + ds.test:
        want = solve_mqar(ex)
        t = ex.target.split()
        assert [t[j] for j, w in enumerate(want) if w is not None] == [w for w in want if w is not None]
        scored = [j for j in range(len(t)) if j not in set(ex.tgt_given)]
        assert len(scored) == 4  # one value per query
        keys = ex.source.split()[0::2]
        assert len(set(keys)) == 6 and all(int(k) < 32 for k in keys)  # distinct keys, lower half
        assert all(int(t[j]) >= 32 for j in scored)  # values from the upper half
        assert len({t[j - 1] for j in scored}) == 4  # distinct keys queried


def test_mqar_source_layout():
    ds = load("mqar", vocab_size=64, n_pairs=6, n_queries=3, queries="source")
    for ex in ds.train:
        s = ex.source.split()
        table = dict(zip(s[0:12:2], s[1:12:2]))
        assert len(s) == 12 + 3 and ex.tgt_given is None
        assert ex.target.split() == [table[k] for k in s[12:]]
    same = load("mqar", vocab_size=64, n_pairs=6, n_queries=3, queries="source", seq_len=18)  # 12 + 3 + 3
    assert same.train == ds.train


def test_selective_copy_answer_is_the_data_tokens_in_order():
    ds = load("selective-copy", seq_len=50, n_tokens=7, vocab=5)
    for ex in ds.train + ds.test:
        s = ex.source.split()
        assert len(s) == 50
        assert ex.target.split() == [x for x in s if x != NOISE]
        assert len(ex.target.split()) == 7 and all(0 <= int(x) < 5 for x in ex.target.split())


def test_induction_answer_follows_the_trigger():
    ds = load("induction", train_len=20, eval_lens=[20, 40, 160], vocab=4)
    for ex in ds.train + ds.test:
        s = ex.source.split()
        assert s[-1] == TRIGGER and s.count(TRIGGER) == 2
        assert ex.target == s[s.index(TRIGGER) + 1] != TRIGGER


def test_copy_target_is_the_source():
    ds = load("copy", vocab=5, min_len=3, max_len=9, eval_lens=[9, 30])
    for ex in ds.train + ds.test:
        assert ex.target == ex.source


# ---- lengths ----------------------------------------------------------------------------------
def test_lengths_as_asked():
    ds = load("mqar", vocab_size=64, n_pairs=6, seq_len=40)
    assert {len(ex.source.split()) + len(ex.target.split()) for ex in ds.train} == {40}
    ds = load("copy", vocab=5, min_len=3, max_len=9, eval_lens=[9, 18, 36])
    lens = {len(ex.source.split()) for ex in ds.train}
    assert min(lens) == 3 and max(lens) == 9
    assert all(3 <= len(ex.source.split()) <= 9 for ex in ds.valid)
    by_group = {}
    for ex in ds.test:
        by_group.setdefault(ex.group, set()).add(len(ex.source.split()))
    assert by_group == {"9": {9}, "18": {18}, "36": {36}}
    assert sum(1 for ex in ds.test if ex.group == "36") == SMALL["n_test"]


def test_extrapolation_test_split_holds_every_eval_length():
    ds = load("induction", train_len=16, vocab=4)  # default eval_lens: 1, 2, 4, 8 x train_len
    assert ds.notes["eval_lens"] == [16, 32, 64, 128]
    assert {len(ex.source.split()) for ex in ds.train + ds.valid} == {16}
    groups = {ex.group: len(ex.source.split()) for ex in ds.test}
    assert groups == {"16": 16, "32": 32, "64": 64, "128": 128}
    assert len({ex.group for ex in ds.test[:12]}) == 4  # shuffled: a prefix holds every length
    long = load("induction", train_len=16, vocab=4, eval_lens=[1024])  # 64 x is allowed
    assert {len(ex.source.split()) for ex in long.test} == {1024}


# ---- seeds ------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", list(PROBES))
def test_same_seed_same_examples(task):
    a, b, c = load(task), load(task), load(task, seed=99)
    for split in ("train", "valid", "test"):
        assert getattr(a, split) == getattr(b, split)
        assert getattr(a, split) != getattr(c, split)


@pytest.mark.parametrize("task", list(PROBES))
def test_held_out_sources_are_not_training_sources(task):
    ds = load(task, **({"vocab": 3, "min_len": 1, "max_len": 4, "eval_lens": [4]} if task == "copy" else {}))
    seen = {ex.source for ex in ds.train}
    assert not any(ex.source in seen for ex in ds.valid + ds.test)
    assert score_kind(ds) == "probe" and ds.kind == "pair"


# ---- options ----------------------------------------------------------------------------------
@pytest.mark.parametrize("task,options,msg", [
    ("mqar", {"n_pair": 3}, "unknown key data.options.n_pair; valid keys here: n_pairs, n_queries"),
    ("mqar", {"n_pairs": 8, "seq_len": 30}, "data.options.seq_len: 30 leaves 14 tokens after 8 pairs"),
    ("mqar", {"queries": "after"}, "data.options.queries: 'after' is not valid; choose one of: interleaved, source"),
    ("mqar", {"queries": "source", "seq_len": 64}, "data.options.seq_len: with queries: source an example is 32"),
    ("mqar", {"n_queries": 9}, "data.options.n_queries: must be in [1, n_pairs=8]"),
    ("mqar", {"vocab_size": 10}, "data.options.vocab_size: 10 symbols cannot hold 8 distinct keys"),
    ("selective-copy", {"n_tokens": 20, "seq_len": 10}, "data.options.n_tokens: 20 data tokens do not fit"),
    ("induction", {"train_len": 8, "eval_lens": [8, 1000]}, "data.options.eval_lens: 1000 is outside [3, 512]"),
    ("copy", {"min_len": 5, "max_len": 3}, "data.options.min_len: need 1 <= min_len <= max_len"),
    ("copy", {"n_train": 0}, "data.options.n_train: must be >= 1"),
])
def test_bad_options_are_one_line_errors(task, options, msg):
    with pytest.raises(ConfigError) as e:
        load_dataset(DataConfig(task=task, options=options))
    assert msg in str(e.value) and "\n" not in str(e.value)
    assert f"data.task={task}" in str(e.value)


def test_options_on_another_task_are_an_error():
    with pytest.raises(ConfigError, match="data.task=sentiment takes no options; only the probe tasks"):
        load_dataset(DataConfig(task="sentiment", options={"n_pairs": 8}))


def test_dotted_overrides_reach_the_options():
    raw = apply_overrides({"task": "mqar"}, ["options.n_pairs=4", "options.seq_len=24", "options.vocab_size=32",
                                             "options.n_train=50"])
    ds = load_dataset(from_dict(DataConfig, raw, prefix="data"))
    assert {len(ex.source.split()) for ex in ds.train} == {8}


# ---- tokenizer and layout -----------------------------------------------------------------------
def word_tokenizer(ds):
    return Tokenizer.train(corpus_texts(ds), 400, kind="word", n_sentinels=0)


@pytest.mark.parametrize("task", list(PROBES))
def test_word_tokenizer_makes_every_symbol_one_token(task):
    ds = load(task, **({"vocab_size": 128} if task == "mqar" else {}))
    tok = word_tokenizer(ds)
    check_symbols(ds, tok)
    assert tok.vocab_size == 7 + len(ds.symbols)
    ex = ds.test[-1]
    assert len(tok.encode(ex.source)) == len(ex.source.split())
    assert tok.decode(tok.encode(ex.target)) == ex.target


def test_subword_tokenizer_is_refused_for_a_probe_task():
    ds = load("mqar", vocab_size=512)
    bpe = Tokenizer.train(corpus_texts(ds), 300, kind="bpe", n_sentinels=0)
    with pytest.raises(ConfigError, match="probe tasks need tokenizer.kind: word"):
        check_symbols(ds, bpe)


@pytest.mark.parametrize("arch", ["decoder", "prefix-lm", "encoder-decoder"])
def test_given_target_positions_carry_no_loss(arch):
    ds = load("mqar", vocab_size=64, n_pairs=6, seq_len=40)
    tok = word_tokenizer(ds)
    exs = tokenize_examples(ds.train[:4], tok)
    obj = make_objective("seq2seq", tok.special, arch, 64)
    b = obj.build(exs, np.random.default_rng(0))
    for i, ex in enumerate(exs):
        labels = b["labels"][i].tolist()
        start = 0 if arch == "encoder-decoder" else len(ex.src) + 1  # labels of the target start here
        tgt_labels = labels[start : start + len(ex.tgt)]
        for j, t in enumerate(ex.tgt):
            assert tgt_labels[j] == (IGNORE if j in set(ex.tgt_given) else t)
        assert labels[start + len(ex.tgt)] == tok.special.eos
        assert sum(x != IGNORE for x in labels) == len(ex.tgt) - len(ex.tgt_given) + 1  # values + <eos>
        # the given tokens are still read: they are the decoder's inputs
        inputs = (b["decoder_input_ids"] if arch == "encoder-decoder" else b["input_ids"])[i].tolist()
        assert inputs[start + 1 : start + 1 + len(ex.tgt)] == ex.tgt
