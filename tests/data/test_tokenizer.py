"""Tokenizer training, round trips, hashing, HF tokenizer.json wrapping."""

from __future__ import annotations

import json

import pytest

from archlab.data import Tokenizer
from archlab.errors import ArchlabError

TEXTS = ["Im Anfang schuf Gott die Himmel und die Erde.", "In the beginning God created the heavens.",
         "Größe, Fußgänger, Ärger — über alles!", "Noah's ark had 2 doors?"] * 20


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_train_roundtrip_and_specials(kind, tmp_path):
    tok = Tokenizer.train(TEXTS, 400, kind=kind, n_sentinels=5, min_frequency=1)
    sp = tok.special
    assert (sp.pad, sp.bos, sp.eos, sp.mask, sp.sep, sp.cls) == (0, 1, 2, 3, 4, 5)
    assert len(sp.sentinels) == 5 and sp.first_normal == 12 and sp.vocab_size == tok.vocab_size
    for text in TEXTS[:4] + ["unseen ẞ ☃ 漢字 emoji 🙂"]:
        assert tok.decode(tok.encode(text)) == text  # byte-level: everything round-trips
    assert all(i >= sp.first_normal for i in tok.encode(TEXTS[0]))
    tok.save(tmp_path / "t")
    again = Tokenizer.load(tmp_path / "t")
    assert again.sha256 == tok.sha256 and again.encode(TEXTS[2]) == tok.encode(TEXTS[2])


def test_hash_detects_changes(tmp_path):
    a = Tokenizer.train(TEXTS, 400, n_sentinels=2, min_frequency=1)
    b = Tokenizer.train(TEXTS[:40] + ["different corpus entirely"] * 10, 400, n_sentinels=2, min_frequency=1)
    assert a.sha256 != b.sha256
    with pytest.raises(ArchlabError, match="tokenizer hash .* differs"):
        b.check_matches(a.sha256, b.vocab_size, "run/tokenizer")
    with pytest.raises(ArchlabError, match=f"tokenizer has {a.vocab_size} tokens but the model was trained with 500"):
        a.check_matches(a.sha256, 500, "run/tokenizer")
    a.save(tmp_path / "t")
    f = tmp_path / "t" / "tokenizer.json"
    data = json.loads(f.read_text())
    vocab = data["model"]["vocab"]
    k1, k2 = list(vocab)[-1], list(vocab)[-2]
    vocab[k1], vocab[k2] = vocab[k2], vocab[k1]  # same size, two ids swapped
    f.write_text(json.dumps(data))
    with pytest.raises(ArchlabError, match="differs"):
        Tokenizer.load(tmp_path / "t")


def test_too_small_vocab():
    with pytest.raises(ArchlabError, match="too small"):
        Tokenizer.train(TEXTS, 100)


def _bert_dir(tmp_path, name: str, padded: bool = False):
    """A BERT-style WordPiece tokenizer directory (tokenizer.json + tokenizer_config.json);
    ``padded``: its tokenizer.json pads and truncates to 8, as all-MiniLM-L6-v2's does to 128."""
    from tokenizers import Tokenizer as T
    from tokenizers import models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "hello": 5, "world": 6}
    t = T(models.WordPiece(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    if padded:
        t.enable_padding(pad_id=0, pad_token="[PAD]", length=8)
        t.enable_truncation(max_length=8)
    d = tmp_path / name
    d.mkdir()
    t.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[PAD]", "cls_token": "[CLS]",
                                                         "sep_token": "[SEP]", "mask_token": "[MASK]"}))
    return d


def test_from_hf_dir_bert_and_gpt2(tmp_path):
    tok = Tokenizer.from_hf_dir(_bert_dir(tmp_path, "bert"))
    sp = tok.special
    assert (sp.pad, sp.bos, sp.eos, sp.cls, sp.sep, sp.mask) == (0, 2, 3, 2, 3, 4)
    assert tok.encode("hello world") == [5, 6]
    with pytest.raises(ArchlabError, match="tokenizer.json: missing"):
        Tokenizer.from_hf_dir(tmp_path)


def test_padding_and_truncation_in_tokenizer_json_are_ignored(tmp_path):
    """all-MiniLM-L6-v2's tokenizer.json pads and truncates to 128: archlab must neither pad a short
    text nor cut a long one (the batcher pads, data.max_len truncates)."""
    tok = Tokenizer.from_hf_dir(_bert_dir(tmp_path, "padded", padded=True))
    assert tok.encode("hello world") == [5, 6]  # not padded to 8
    assert len(tok.encode(" ".join(["hello"] * 20))) == 20  # not cut to 8
