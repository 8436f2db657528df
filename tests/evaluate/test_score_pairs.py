"""Pair-task scoring end to end except the model: outputs that copy the references score BLEU
and chrF 100 exactly (so decoding order, batching by length and the reference pairing are all
right), and one output swapped to another example's reference scores less."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import archlab.generate as gen
from archlab.data import TextExample
from archlab.evaluate.runner import DecodeOptions, score_pairs

# sources of different lengths: decode() batches by length, so results come back reordered
PAIRS = [("a b c d e f g", "the cat sat on the mat today"),
         ("h", "a dog barked at the moon loudly"),
         ("i j k", "it rained all day in the town"),
         ("l m", "we walked home along the river")]


class CharTokenizer:
    special = None

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


def run(monkeypatch, answer) -> dict:
    tok = CharTokenizer()

    def fake_generate(model, inputs, cfg, special=None):
        outs = [tok.encode(answer(tok.decode(x))) for x in inputs]
        return gen.GenerationOutput(outs, [0.0] * len(outs), [True] * len(outs), sum(map(len, outs)))

    monkeypatch.setattr(gen, "generate", fake_generate)
    model = SimpleNamespace(cfg=SimpleNamespace(arch="encoder-decoder"))
    examples = [TextExample(source=s, target=t) for s, t in PAIRS]
    return score_pairs(model, tok, examples, DecodeOptions(batch_size=3))


def test_copying_the_references_scores_100(monkeypatch):
    targets = dict(PAIRS)
    out = run(monkeypatch, lambda src: targets[src])
    assert out["bleu"] == pytest.approx(100.0) and out["chrf"] == pytest.approx(100.0)
    assert out["rougeL"] == pytest.approx(100.0) and out["len_ratio"] == pytest.approx(1.0)
    assert out["_outputs"] == [t for _, t in PAIRS]


def test_a_misplaced_output_scores_less(monkeypatch):
    targets = dict(PAIRS)
    targets["h"] = PAIRS[2][1]  # the second example answers with the third's reference
    out = run(monkeypatch, lambda src: targets[src])
    assert out["bleu"] < 90.0 and out["chrf"] < 90.0
