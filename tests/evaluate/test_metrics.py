"""Metric functions against hand-computed values and their reference libraries."""

from __future__ import annotations

import math

import pytest

from archlab.evaluate import (
    classification_metrics,
    length_ratio,
    lm_metrics,
    repetition_rate,
    summarization_metrics,
    translation_metrics,
)


def test_bleu_chrf_perfect_and_signature():
    refs = ["the cat sat on the mat today", "a dog barked at the moon loudly"]
    m = translation_metrics(refs, refs)
    assert m["bleu"] == pytest.approx(100.0) and m["chrf"] == pytest.approx(100.0)
    assert "tok:13a" in m["bleu_signature"] and "version:" in m["chrf_signature"]
    worse = translation_metrics(["the cat sat on a mat", "dogs bark"], refs)
    assert 0 < worse["bleu"] < 100 and 0 < worse["chrf"] < 100


def test_bleu_matches_sacrebleu_directly():
    import sacrebleu

    hyps = ["the cat is on the mat", "there is a dog here"]
    refs = ["the cat sat on the mat", "a dog is here"]
    assert translation_metrics(hyps, refs)["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)


def test_rouge():
    m = summarization_metrics(["the cat sat"], ["the cat sat"])
    assert m == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    m = summarization_metrics(["the cat"], ["the cat sat down"])
    # rouge1: P = 2/2, R = 2/4 -> F = 2/3
    assert m["rouge1"] == pytest.approx(100 * 2 / 3)


def test_classification_accuracy_and_macro_f1():
    preds = [0, 0, 1, 1, 2, 0]
    labels = [0, 1, 1, 1, 2, 2]
    m = classification_metrics(preds, labels, 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per class F1: c0 2*1/(2+2+0)=0.5, c1 2*2/(4+0+1)=0.8, c2 2*1/(2+0+1)=2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_lm_metrics_bits_per_byte():
    m = lm_metrics(total_nll=10 * math.log(2), n_tokens=5, n_bytes=20)
    assert m["bpb"] == pytest.approx(0.5)
    assert m["ppl"] == pytest.approx(4.0)
    with pytest.raises(ValueError):
        lm_metrics(1.0, 0, 1)


def test_length_ratio_and_repetition():
    assert length_ratio(["a b", "c"], ["a b c", "d"]) == pytest.approx(3 / 4)
    assert repetition_rate(["a b c a b c"]) == pytest.approx(1 / 4)
    assert repetition_rate(["a b c d"]) == 0.0
