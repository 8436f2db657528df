"""Task metrics, each from the reference implementation the field reports with.

- BLEU (Papineni et al. 2002) and chrF (Popović 2015) with sacrebleu (Post 2018), whose
  signature (tokenizer, smoothing, version) is recorded next to every score so numbers are
  comparable across papers;
- ROUGE-1/2/L F-measure (Lin 2004) with Google's rouge-score, stemming on;
- accuracy and macro-F1 for classification;
- perplexity and bits per byte for language models: bits per byte divides the summed
  negative log-likelihood by the UTF-8 bytes of the scored text, so models with different
  tokenizers are comparable (Gao et al. 2020, The Pile);
- probe tasks (``archlab.data.probes``): accuracy per scored answer token and exact match per
  example, overall and per evaluation group (length), as the synthetic-task papers report
  them (Arora et al. 2023; Gu & Dao 2023; Jelassi et al. 2024);
- tagging (NER): entity-level precision, recall and F1 with the CoNLL shared tasks'
  ``conlleval`` definition (Tjong Kim Sang & De Meulder 2003), which ``seqeval``'s default
  mode implements (an entity counts only if its type and both boundaries match), and token
  (word) accuracy. In-house, not ``seqeval``: that package pulls in scikit-learn for this one
  function; tests/evaluate/test_metrics.py checks it on conlleval's cases.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any


def translation_metrics(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF of ``hyps`` against one reference each."""
    from sacrebleu.metrics import BLEU, CHRF

    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references")
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(list(hyps), [list(refs)])
    c = chrf.corpus_score(list(hyps), [list(refs)])
    return {"bleu": b.score, "chrf": c.score, "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature())}


def summarization_metrics(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (x100, as papers report them)."""
    from rouge_score import rouge_scorer

    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    tot = Counter()
    for h, r in zip(hyps, refs):
        for k, s in scorer.score(r, h).items():
            tot[k] += s.fmeasure
    n = max(len(hyps), 1)
    return {k: 100.0 * tot[k] / n for k in ("rouge1", "rouge2", "rougeL")}


def classification_metrics(preds: Sequence[int], labels: Sequence[int], n_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (the unweighted mean of per-class F1; a class absent from both
    predictions and labels is left out of the mean)."""
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    n = len(labels)
    acc = sum(int(p == y) for p, y in zip(preds, labels)) / max(n, 1)
    f1s = []
    for c in range(n_classes):
        tp = sum(1 for p, y in zip(preds, labels) if p == c and y == c)
        fp = sum(1 for p, y in zip(preds, labels) if p == c and y != c)
        fn = sum(1 for p, y in zip(preds, labels) if p != c and y == c)
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": acc, "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0}


def lm_metrics(total_nll: float, n_tokens: int, n_bytes: int) -> dict[str, float]:
    """Perplexity per token and bits per UTF-8 byte from a summed NLL in nats."""
    if n_tokens <= 0 or n_bytes <= 0:
        raise ValueError("no tokens scored")
    return {"loss": total_nll / n_tokens, "ppl": math.exp(min(total_nll / n_tokens, 700.0)),
            "bpb": total_nll / (n_bytes * math.log(2)), "tokens": n_tokens, "bytes": n_bytes}


def length_ratio(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Total hypothesis words / total reference words (BLEU's brevity view, in words)."""
    r = sum(len(x.split()) for x in refs)
    return sum(len(x.split()) for x in hyps) / max(r, 1)


def repetition_rate(hyps: Sequence[str], n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier n-gram of the same output: the usual
    symptom of a degenerate decoder (Holtzman et al. 2020; Welleck et al. 2020)."""
    rep = tot = 0
    for h in hyps:
        w = h.split()
        grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
        tot += len(grams)
        rep += len(grams) - len(set(grams))
    return rep / tot if tot else 0.0


def probe_hits(pred: Sequence[int], ref: Sequence[int], scored: Sequence[int]) -> int:
    """Scored positions of one probe answer where the prediction holds the reference token
    (a prediction that ends early misses the positions it lacks)."""
    return sum(1 for j in scored if j < len(pred) and pred[j] == ref[j])


def probe_metrics(preds: Sequence[Sequence[int]], refs: Sequence[Sequence[int]],
                  scored: Sequence[Sequence[int]], groups: Sequence[str | None] | None = None) -> dict[str, float]:
    """Answer accuracy of a probe task.

    ``preds[i]``: the decoded answer tokens of example i; ``refs[i]``: the reference answer;
    ``scored[i]``: the indices of ``refs[i]`` that are scored (the predicted, not given,
    positions). ``token_acc``: scored positions where the prediction holds the reference
    token, over all scored positions (a prediction that ends early is wrong at the positions
    it lacks); ``exact_match``: share of examples with every scored position right. With
    ``groups``, the same per group ``g`` as ``token_acc@g`` and ``exact_match@g``, and ``n@g``
    examples."""
    if not len(preds) == len(refs) == len(scored):
        raise ValueError(f"{len(preds)} predictions, {len(refs)} references, {len(scored)} scored-position lists")
    groups = list(groups) if groups is not None else [None] * len(refs)
    if len(groups) != len(refs):
        raise ValueError(f"{len(groups)} groups for {len(refs)} references")
    tot: dict[str | None, list[int]] = {}  # group -> [correct tokens, scored tokens, exact, examples]
    for p, r, sc, g in zip(preds, refs, scored, groups):
        right = probe_hits(p, r, sc)
        for key in (None,) if g is None else (None, g):
            t = tot.setdefault(key, [0, 0, 0, 0])
            t[0] += right
            t[1] += len(sc)
            t[2] += int(right == len(sc))
            t[3] += 1
    out: dict[str, float] = {}

    def order(k: str | None) -> tuple[int, float, str]:  # overall first, then groups by length
        return (0, 0.0, "") if k is None else (1, float(k) if k.isdigit() else math.inf, k)

    for key in sorted(tot, key=order):
        right, n_tok, exact, n_ex = tot[key]
        suffix = "" if key is None else f"@{key}"
        out[f"token_acc{suffix}"] = right / max(n_tok, 1)
        out[f"exact_match{suffix}"] = exact / max(n_ex, 1)
        if key is not None:
            out[f"n{suffix}"] = n_ex
    if not tot:
        out.update(token_acc=0.0, exact_match=0.0)
    return out


# ---------------------------------------------------------------------------------------------
# tagging (NER)
# ---------------------------------------------------------------------------------------------
def _split_tag(tag: str) -> tuple[str, str]:
    """(prefix, type) of a BIO tag: ("O", "") for outside, ("B", "geo-loc") for B-geo-loc."""
    if tag == "O" or len(tag) < 2 or tag[1] != "-":
        return "O", ""
    return tag[0], tag[2:]


def bio_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of one BIO tag sequence as (type, first, last + 1), by conlleval's rules
    (seqeval's ``get_entities`` in its default mode): an entity starts at a ``B-`` tag, at an
    ``I-`` tag after ``O`` (or at the start), or where the type changes; it ends before an
    ``O``, a ``B-`` or a change of type. So ``I-PER I-PER`` is one PER entity, ``B-PER I-LOC``
    two entities, and ``B-PER B-PER`` two."""
    out: list[tuple[str, int, int]] = []
    start: int | None = None
    prev, prev_type = "O", ""
    for i, t in enumerate([*tags, "O"]):
        tag, typ = _split_tag(t)
        ends = prev != "O" and (tag in ("O", "B") or typ != prev_type)
        if ends and start is not None:
            out.append((prev_type, start, i))
            start = None
        if tag == "B" or (tag == "I" and (prev == "O" or typ != prev_type)):
            start = i
        prev, prev_type = tag, typ
    return out


def entity_counts(gold: Sequence[str], pred: Sequence[str]) -> tuple[int, int, int]:
    """(correct, predicted, gold) entities of one sentence: correct when type, start and end
    all match."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(pred)} predicted tags for {len(gold)} gold tags")
    g, p = set(bio_entities(gold)), set(bio_entities(pred))
    return len(g & p), len(p), len(g)


def _prf(correct: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    prec = correct / n_pred if n_pred else 0.0
    rec = correct / n_gold if n_gold else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return prec, rec, f1


def ner_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Entity-level (micro) precision, recall and F1 over all sentences, as conlleval and
    seqeval report them (0 where undefined: nothing predicted, or nothing to find), token
    accuracy (words whose tag is right, ``O`` included: seqeval's ``accuracy_score``), the
    entity counts, and per entity type precision / recall / F1 / support (``per_type``)."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(pred)} predicted sentences for {len(gold)} gold sentences")
    correct = n_pred = n_gold = right = words = 0
    by_type: dict[str, list[int]] = {}  # type -> [correct, predicted, gold]
    for g, p in zip(gold, pred):
        if len(g) != len(p):
            raise ValueError(f"{len(p)} predicted tags for {len(g)} gold tags")
        ge, pe = set(bio_entities(g)), set(bio_entities(p))
        correct += len(ge & pe)
        n_pred += len(pe)
        n_gold += len(ge)
        for ent_set, slot in ((ge & pe, 0), (pe, 1), (ge, 2)):
            for typ, _, _ in ent_set:
                by_type.setdefault(typ, [0, 0, 0])[slot] += 1
        right += sum(int(a == b) for a, b in zip(g, p))
        words += len(g)
    prec, rec, f1 = _prf(correct, n_pred, n_gold)
    per_type = {}
    for typ in sorted(by_type):
        c, np_, ng = by_type[typ]
        tp, tr, tf = _prf(c, np_, ng)
        per_type[typ] = {"precision": tp, "recall": tr, "f1": tf, "support": ng}
    return {"f1": f1, "precision": prec, "recall": rec, "token_acc": right / max(words, 1),
            "entities_gold": n_gold, "entities_predicted": n_pred, "entities_correct": correct,
            "per_type": per_type}
