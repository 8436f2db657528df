"""What the report tests and fits: every entry against the best of its budget scale by a paired
bootstrap over the test examples, seed paired with seed by seed id (:mod:`archlab.compare.stats`);
the significance-aware winner per scale; saturating power laws of quality and validation loss
against training FLOPs; loss spikes of the training curves."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from archlab.compare import stats as S
from archlab.compare.report.aggregate import _num, load_outputs, normalize, primary_metric

N_BOOTSTRAP = 1000  # sacrebleu's default number of paired-bootstrap resamples


def _rouge_l(outputs: list[dict[str, Any]]) -> list[float]:
    from rouge_score import rouge_scorer

    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [100.0 * sc.score(o["reference"], o["hypothesis"])["rougeL"].fmeasure for o in outputs]


def _pair_test(key: str, task_kind: str, mine: list[dict[str, Any]], best: list[dict[str, Any]],
               n_samples: int) -> S.PairedResult | None:
    """One seed pairing: ``mine`` against ``best`` on the same test examples (None when the
    two runs did not score the same examples, or the metric has no per-example form)."""
    if len(mine) != len(best) or len(mine) < 2:
        return None
    if task_kind == "pair":
        refs = [o.get("reference") for o in best]
        if refs != [o.get("reference") for o in mine]:
            return None
        if key in ("bleu", "chrf"):
            res = S.paired_bootstrap_mt({"sys": [o["hypothesis"] for o in mine],
                                         "base": [o["hypothesis"] for o in best]}, refs, "base",
                                        metrics=(key,), n_samples=n_samples)
            return res["sys"][key]
        if key == "rougeL":
            return S.paired_bootstrap_mean(_rouge_l(mine), _rouge_l(best), n_samples=n_samples)
        return None
    if task_kind == "pairs" and (key == "mrr" or key.startswith("recall_at_")):
        # retrieval: per-query reciprocal ranks (or hits at k), paired by query
        queries = [o.get("query") for o in best]
        if queries != [o.get("query") for o in mine]:
            return None
        if key == "mrr":
            return S.paired_bootstrap_mean([float(o["rr"]) for o in mine], [float(o["rr"]) for o in best],
                                           n_samples=n_samples)
        k = int(key[len("recall_at_"):])
        return S.paired_bootstrap_mean([float(o["rank"] <= k) for o in mine], [float(o["rank"] <= k) for o in best],
                                       n_samples=n_samples)
    if task_kind == "tags" and key == "f1":
        # NER: corpus entity F1 recomputed per resample of sentences from their entity counts
        if [o.get("gold") for o in best] != [o.get("gold") for o in mine]:
            return None
        counts = [[[o["correct"], o["predicted"], o["gold_entities"]] for o in rows] for rows in (mine, best)]
        return S.paired_bootstrap_f1(counts[0], counts[1], n_samples=n_samples)
    if task_kind == "probe" and key in ("token_acc", "exact_match"):
        # probe answers, paired by example: exact match is 0/1 per example; token accuracy is
        # right / scored tokens summed over examples, so each example counts its right tokens
        # x N / (all scored tokens): their mean is token_acc exactly (examples of one test set
        # score the same tokens in both runs)
        if [o.get("reference") for o in best] != [o.get("reference") for o in mine] \
                or any("scored" not in o for o in (*mine, *best)):
            return None
        if key == "exact_match":
            return S.paired_bootstrap_mean([float(o["right"] == o["scored"]) for o in mine],
                                           [float(o["right"] == o["scored"]) for o in best], n_samples=n_samples)
        w = len(best) / max(sum(o["scored"] for o in best), 1)
        return S.paired_bootstrap_mean([o["right"] * w for o in mine], [o["right"] * w for o in best],
                                       n_samples=n_samples)
    if task_kind == "label" and key == "accuracy":
        labels = [o.get("label") for o in best]
        if labels != [o.get("label") for o in mine]:
            return None
        return S.paired_bootstrap_mean([float(o["prediction"] == o["label"]) for o in mine],
                                       [float(o["prediction"] == o["label"]) for o in best],
                                       n_samples=n_samples)
    return None


def significance(results: list[dict[str, Any]], agg: list[dict[str, Any]], task_kind: str,
                 out_dir: Path | None, *, n_samples: int = N_BOOTSTRAP) -> None:
    """Add to each aggregated row (in place) its comparison with the best entry of its scale:
    ``best`` (that entry), ``delta`` (mean difference of the primary metric), ``p_value``
    (largest over seed pairings; None without per-example outputs), ``p_values`` (per
    paired seed), ``ci`` (bootstrap 95 % half-width of the entry's own score, mean over
    seeds) and ``test`` (what was tested)."""
    key, _, higher = primary_metric(results, task_kind)
    rows = [normalize(r) for r in results]
    cache: dict[int, list[dict[str, Any]] | None] = {}

    def outputs(r: dict[str, Any]) -> list[dict[str, Any]] | None:
        if id(r) not in cache:
            cache[id(r)] = load_outputs(out_dir, r)
        return cache[id(r)]

    for scale in sorted({a["scale"] for a in agg}):
        group = [a for a in agg if a["scale"] == scale and _num(a.get(key))]
        if not group:
            continue
        best = max(group, key=lambda a: a[key] if higher else -a[key])
        by_seed = {(r["entry"], r["seed"]): r for r in rows if r["scale"] == scale}
        for a in group:
            a["best"] = best["entry"]
            a["delta"] = a[key] - best[key]
            a["p_value"], a["p_values"], a["ci"], a["test"] = None, {}, None, None
            pairs: list[S.PairedResult | None] = []
            cis = []
            for seed in a["seeds"]:
                mine, theirs = by_seed.get((a["entry"], seed)), by_seed.get((best["entry"], seed))
                if mine is None or theirs is None:
                    continue
                om, ob = outputs(mine), outputs(theirs)
                if om is None or ob is None:
                    continue
                res = _pair_test(key, task_kind, om, ob, n_samples)
                if res is None:
                    continue
                cis.append(res.ci)
                if a is not best:
                    pairs.append(res)
                    a["p_values"][str(seed)] = res.p_value
            if cis and all(c is not None for c in cis):
                a["ci"] = statistics.fmean(cis)
            if pairs:
                a["p_value"] = S.combine_seed_pairings(pairs)
                a["test"] = ("paired bootstrap (sacrebleu)" if key in ("bleu", "chrf") else
                             "paired bootstrap (sentences, F1 from summed entity counts)" if task_kind == "tags"
                             else "paired bootstrap (per example)") + f", {len(pairs)} seed pairing(s)"


def winners(agg: list[dict[str, Any]], results: list[dict[str, Any]], task_kind: str) -> list[S.Winner]:
    """The significance-aware winner at each scale (see :func:`archlab.compare.stats.pick_winner`)."""
    key, _, higher = primary_metric(results, task_kind)
    rows = [normalize(r) for r in results]
    out = []
    for scale in sorted({a["scale"] for a in agg}):
        group = [a for a in agg if a["scale"] == scale and _num(a.get(key))]
        if not group:
            continue
        # each entry's score by seed id: pick_winner pairs seed s with seed s (never by position)
        scores = {a["entry"]: {r["seed"]: r[key] for r in rows
                               if r["entry"] == a["entry"] and r["scale"] == scale and _num(r.get(key))}
                  for a in group}
        pv = {a["entry"]: a.get("p_value") for a in group}
        out.append(S.pick_winner(scale, scores, higher_is_better=higher, p_values=pv))
    return out


def power_law_fits(agg: list[dict[str, Any]], results: list[dict[str, Any]],
                   task_kind: str) -> dict[str, dict[str, dict[str, Any]]]:
    """Per entry, the saturating power law of the primary metric and of the validation loss
    against training FLOPs, over every seed and scale (entries with at least 4 budgets whose
    points a power law fits with alpha inside its search range)."""
    key, _, higher = primary_metric(results, task_kind)
    rows = [normalize(r) for r in results]
    fits: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in dict.fromkeys(a["entry"] for a in agg):
        mine = [r for r in rows if r["entry"] == entry and _num(r.get("train_flops"))]
        for metric, hib in ((key, higher), ("val_loss", False)):
            pts = [(r["train_flops"], r[metric], r["scale"]) for r in mine if _num(r.get(metric))]
            # budgets are the scales: seeds of one scale train slightly different token counts,
            # so their FLOPs differ a little without being another budget
            n_scales = len({p[2] for p in pts})
            if n_scales < 4:
                continue
            f = S.fit_power_law([p[0] for p in pts], [p[1] for p in pts], higher_is_better=hib)
            # alpha at its search bound: the points do not follow a saturating power law
            # (e.g. quality jumps between two budgets); no curve is drawn or tabled
            if f is not None and not f.at_bound:
                fits.setdefault(entry, {})[metric] = {**f.as_dict(), "n_budgets": n_scales}
    return fits


def spikes(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Loss spikes of every run's training curve: ``{entry, seed, scale, step, loss, median, ratio}``."""
    out = []
    for r in results:
        curve = [c for c in r.get("train_curve") or [] if c.get("loss") is not None]
        for sp in S.loss_spikes([c["step"] for c in curve], [c["loss"] for c in curve]):
            out.append({"entry": r["entry"], "seed": r["seed"], "scale": float(r.get("scale") or 1.0), **sp})
    return out

