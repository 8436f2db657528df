"""Entity-level NER metrics against hand-worked cases of conlleval's definition (the one
seqeval's default mode implements), and the paired bootstrap of entity F1."""

from __future__ import annotations

import pytest

from archlab.compare.stats import paired_bootstrap_f1
from archlab.evaluate.metrics import bio_entities, entity_counts, ner_metrics


@pytest.mark.parametrize("tags,want", [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
    (["O", "I-PER", "I-PER", "O"], [("PER", 1, 3)]),  # I- after O starts an entity (conlleval)
    (["I-LOC"], [("LOC", 0, 1)]),  # ... so does I- at the start
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3)]),  # a type change ends one, starts another
    (["B-PER", "B-PER"], [("PER", 0, 1), ("PER", 1, 2)]),  # B- always starts a new entity
    (["I-PER", "B-PER", "I-PER"], [("PER", 0, 1), ("PER", 1, 3)]),
    (["B-geo-loc", "I-geo-loc"], [("geo-loc", 0, 2)]),  # types may contain '-'
    (["O", "O"], []),
    ([], []),
])
def test_bio_entities(tags, want):
    assert bio_entities(tags) == want


def test_seqeval_readme_example():
    """seqeval's README example: f1 0.50, accuracy 0.80 (MISC predicted one word too early)."""
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    m = ner_metrics(gold, pred)
    assert (m["precision"], m["recall"], m["f1"], m["token_acc"]) == (0.5, 0.5, 0.5, 0.8)
    assert m["per_type"]["MISC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_type"]["PER"]["f1"] == 1.0


def test_precision_recall_differ_and_boundaries_must_match():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC", "B-ORG"]]  # PER cut short (wrong), LOC right, ORG spurious
    m = ner_metrics(gold, pred)
    assert (m["entities_correct"], m["entities_predicted"], m["entities_gold"]) == (1, 3, 2)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == 0.5
    assert m["f1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    assert m["token_acc"] == 3 / 5
    assert entity_counts(gold[0], pred[0]) == (1, 3, 2)
    # the right type with the wrong boundary, or the right span with the wrong type: no credit
    assert ner_metrics([["B-PER", "I-PER"]], [["B-LOC", "I-LOC"]])["f1"] == 0.0
    # an I- start that conlleval reads as an entity counts as a correct one
    assert ner_metrics([["B-PER", "I-PER"]], [["I-PER", "I-PER"]])["f1"] == 1.0


def test_nothing_to_find_or_nothing_found_is_zero():
    assert ner_metrics([["O", "O"]], [["O", "O"]])["f1"] == 0.0
    m = ner_metrics([["B-X"]], [["O"]])
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="1 predicted tags for 2 gold tags"):
        ner_metrics([["O", "O"]], [["O"]])


def test_paired_bootstrap_f1():
    gold_counts = [[1, 1, 1], [0, 0, 1], [2, 2, 2], [1, 2, 1]] * 10  # [correct, predicted, gold] per sentence
    same = paired_bootstrap_f1(gold_counts, gold_counts, n_samples=200)
    assert same.delta == 0.0 and same.p_value == 1.0
    f1 = 2 * sum(c for c, _, _ in gold_counts) / sum(p + g for _, p, g in gold_counts)
    assert same.score == pytest.approx(f1)
    worse = [[0, p, g] for _, p, g in gold_counts]
    res = paired_bootstrap_f1(gold_counts, worse, n_samples=200)
    assert res.delta == pytest.approx(f1) and res.p_value < 0.05 and res.ci_low > 0
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        paired_bootstrap_f1([[1, 1]], [[1, 1]])
