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
  them (Arora et al. 2023; Gu & Dao 2023; Jelassi et al. 2024).
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
