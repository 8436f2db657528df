"""Scoring by token classification: tags read at each word's first sub-token (an oracle scores
F1 1.0, noise near nothing), and the mqar probe answered slot by slot with the generative
probes' keys (an oracle scores 1.0, noise chance)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from archlab.data import DataConfig, Tokenizer, corpus_texts, load_dataset, tokenize_examples
from archlab.data.tags import tag_examples
from archlab.errors import ArchlabError
from archlab.evaluate.runner import DecodeOptions, score_task
from archlab.model.transformer import LMHead, ModelOutput
from archlab.objectives import IGNORE, make_objective

NAMES = ["O", "B-geo-loc", "I-geo-loc", "B-person", "I-person"]
LEX = {"john": "B-person", "mary": "B-person", "smith": "I-person", "paris": "B-geo-loc",
       "new": "B-geo-loc", "york": "I-geo-loc", "went": "O", "to": "O", "with": "O", "kathmandu": "B-geo-loc"}


def _sentences(n: int, seed: int = 0) -> list[tuple[list[str], list[str], int]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        who = ["john", "smith"] if rng.random() < 0.5 else ["mary"]
        where = [["paris"], ["new", "york"], ["kathmandu"]][int(rng.integers(3))]
        words = [*who, "went", "to", *where, *(["with", "mary"] if rng.random() < 0.3 else [])]
        out.append((words, [LEX[w] for w in words], i))
    return out


class FakeModel(torch.nn.Module):
    """A stand-in model: token-classification logits looked up per row (``table``: row ids ->
    per-position class ids), or, with ``head``, one-hot hidden states read by an identity LM
    head (``lm_rows``: row ids -> per-position token ids)."""

    def __init__(self, n_tags: int, vocab: int, table=None, arch: str = "encoder") -> None:
        super().__init__()
        self.cfg = SimpleNamespace(arch=arch, n_tags=n_tags, max_seq_len=512, position="rope")
        self.table, self.vocab = table, vocab

    def forward(self, input_ids, attention_mask=None, *, head=None, classify_tokens=False, **kw):  # noqa: ANN001
        B, T = input_ids.shape
        k = self.cfg.n_tags if classify_tokens else self.vocab
        cls = torch.zeros(B, T, dtype=torch.long)
        for b in range(B):
            row = input_ids[b][attention_mask[b].bool()].tolist()
            cls[b, : len(row)] = torch.tensor(self.table(row))
        onehot = torch.nn.functional.one_hot(cls, k).float()  # (B, T, k)
        if classify_tokens:
            return ModelOutput(None, onehot, token_logits=onehot)
        lm = LMHead(lambda h: h, torch.eye(self.vocab), None)
        return ModelOutput(None, onehot, head_out=head(onehot, lm))


def _tags_task(tok_kind: str):
    sents = _sentences(60)
    exs = tag_examples(sents, NAMES, "synthetic")
    texts = [ex.text for ex in exs]
    tok = (Tokenizer.train(texts, 200, kind="word", n_sentinels=0) if tok_kind == "word" else
           Tokenizer.train(["a b c"] * 3, 400, min_frequency=1, n_sentinels=0))  # bpe: every word in pieces
    return exs, tok


@pytest.mark.parametrize("tok_kind", ["word", "bpe"])
def test_tag_oracle_scores_1_and_noise_scores_near_0(tok_kind):
    exs, tok = _tags_task(tok_kind)
    obj = make_objective("token-classification", tok.special, "encoder", 512)
    first = {}  # row -> the gold tag at each word's first piece, O elsewhere (later pieces, specials)
    for ex in tokenize_examples(exs, tok, NAMES):
        row = obj.build([ex], np.random.default_rng(0))
        lab = row["tag_labels"][0].tolist()
        first[tuple(row["input_ids"][0].tolist())] = [max(x, 0) if x != IGNORE else 0 for x in lab]
    if tok_kind == "bpe":
        assert any(len(set(ex.word_ids)) < len(ex.word_ids) for ex in tokenize_examples(exs, tok))
    oracle = FakeModel(len(NAMES), tok.vocab_size, lambda row: first[tuple(row)])
    res = score_task(oracle, tok, exs, "tags", DecodeOptions(batch_size=7), objective="token-classification",
                     label_names=NAMES)
    assert res["f1"] == 1.0 and res["precision"] == 1.0 and res["recall"] == 1.0 and res["token_acc"] == 1.0
    assert res["entities_gold"] == sum(t.startswith("B-") for ex in exs for t in (NAMES[i] for i in ex.tags))
    rows = res["_outputs_rows"]
    assert len(rows) == len(exs) and rows[0]["gold"] == rows[0]["pred"] == [NAMES[t] for t in exs[0].tags]
    rng = np.random.default_rng(1)
    noise = FakeModel(len(NAMES), tok.vocab_size, lambda row: rng.integers(0, len(NAMES), len(row)).tolist())
    res = score_task(noise, tok, exs, "tags", DecodeOptions(), objective="token-classification", label_names=NAMES)
    assert res["f1"] < 0.25 and abs(res["token_acc"] - 1 / len(NAMES)) < 0.08
    # read at the last piece of each word instead of the first, the same tags score far lower
    if tok_kind == "bpe":
        at_last = {}
        for ex in tokenize_examples(exs, tok, NAMES):
            row = [tok.special.cls, *ex.ids, tok.special.sep]
            w = ex.word_ids
            at_last[tuple(row)] = [0, *[ex.tags[w[k]] if k + 1 == len(w) or w[k + 1] != w[k] else 0
                                        for k in range(len(w))], 0]
        late = FakeModel(len(NAMES), tok.vocab_size, lambda row: at_last[tuple(row)])
        assert score_task(late, tok, exs, "tags", DecodeOptions(), objective="token-classification",
                          label_names=NAMES)["f1"] < 0.5


def test_tags_need_a_token_classification_model():
    exs, tok = _tags_task("word")
    model = FakeModel(len(NAMES), tok.vocab_size, lambda row: [0] * len(row))
    with pytest.raises(ArchlabError, match="scored by a model trained with objective token-classification"):
        score_task(model, tok, exs, "tags", DecodeOptions(), objective="classification", label_names=NAMES)
    model.cfg.n_tags = 3
    with pytest.raises(ArchlabError, match="the model has 3 tags"):
        score_task(model, tok, exs, "tags", DecodeOptions(), objective="token-classification", label_names=NAMES)


def _mqar():
    ds = load_dataset(DataConfig(task="mqar", options={"vocab_size": 64, "n_pairs": 6, "seq_len": 40,
                                                       "n_train": 100, "n_valid": 10, "n_test": 100}))
    tok = Tokenizer.train(corpus_texts(ds), 400, kind="word", n_sentinels=0)
    return ds, tok


def test_mqar_by_token_classification_oracle_and_noise():
    ds, tok = _mqar()
    mask = tok.special.mask
    values = sorted({tok.encode(str(v))[0] for v in range(32, 64)})  # the upper half: the answer symbols

    def oracle(row):
        sep = row.index(tok.special.sep)
        src = row[1:sep]
        kv = dict(zip(src[0::2], src[1::2]))
        # a masked slot follows its query key (interleaved layout): its value is the key's
        return [kv[row[p - 1]] if t == mask else 0 for p, t in enumerate(row)]

    res = score_task(FakeModel(0, tok.vocab_size, oracle), tok, ds.test, "probe", DecodeOptions(),
                     objective="token-classification")
    assert res["token_acc"] == 1.0 and res["exact_match"] == 1.0
    rng = np.random.default_rng(0)
    noise = FakeModel(0, tok.vocab_size, lambda row: rng.choice(values, len(row)).tolist())
    res = score_task(noise, tok, ds.test, "probe", DecodeOptions(), objective="token-classification")
    assert abs(res["token_acc"] - ds.notes["chance"]) < 0.03 and res["exact_match"] == 0.0
    assert {"token_acc", "exact_match"} <= set(res) and res["decoding"].startswith("token classification")
    # the given positions are the reference's: a model right only there scores 0
    res = score_task(FakeModel(0, tok.vocab_size, lambda row: list(row)), tok, ds.test, "probe", DecodeOptions(),
                     objective="token-classification")
    assert res["token_acc"] == 0.0
