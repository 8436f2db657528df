"""The compare report: results.json / results.csv (one row per entry, seed and budget scale),
report.md and a self-contained report.html (tables, plots as inline PNG, sample outputs,
verdict).

Every run row may carry (older results lack them; the report then leaves those parts out):
``scale`` (budget multiplier, 1.0), ``train_flops`` / ``tune_flops`` (total FLOPs of the run
and of the entry's tuning), ``tuned`` (chosen hyper-parameters), ``curve`` (validation rows
``{step, tokens, loss, ...}``), ``train_curve`` (``{step, tokens, loss}``), ``outputs_path``
(JSONL of the scored test examples, relative to the compare directory: pair tasks
``{source, reference, hypothesis}``, label tasks ``{label, prediction}``), ``ablation``
(source-ablation scores, :func:`archlab.evaluate.ablation.source_ablation`),
``examples_truncated`` and ``truncated_fraction``.

Significance: at each budget scale, every entry is compared with the best entry (best mean
of the primary metric) by a paired bootstrap over the test examples, seed paired with seed
(sacrebleu's own test for BLEU / chrF; per-example scores for accuracy and ROUGE-L,
:mod:`archlab.compare.stats`); the largest p-value over the seed pairings is reported, and a
winner is called only when it is below 0.05 and, with several seeds, the gap also exceeds
the seed-to-seed spread and holds in every seed (:func:`archlab.compare.stats.pick_winner`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from archlab.compare import stats as S
from archlab.config import to_dict

# primary quality metric per task kind: (key, label, higher is better)
PRIMARY = {
    "pair": ("bleu", "BLEU", True),
    "label": ("accuracy", "accuracy", True),
    "text": ("ppl", "perplexity", False),
}
# Latencies closer than this (relative) are reported as no clear difference. Four timings of the
# demo's same three trained models (interleaved, fastest of 3 per example; three back to back,
# one in a fresh-clone demo run) put the prefix-LM/decoder latency ratio between 0.936 and 1.029
# and the encoder-decoder/decoder ratio between 1.035 and 1.094: about 10 points of spread.
LATENCY_TIE = 0.10
SUMMARY_PRIMARY = ("rougeL", "ROUGE-L", True)
# A model that keeps more than this share of its score when every source is replaced by another
# test example's source writes much the same output whatever it reads: it ignores its input.
# Models that read their input fall to the score of unrelated text (BLEU of about 1-2).
ABLATION_KEEP = 0.5
ABLATION_MIN_SCORE = 1.0  # below this the normal score is itself noise; no ratio is judged
N_BOOTSTRAP = 1000  # sacrebleu's default number of paired-bootstrap resamples

CSV_FIELDS = [
    "entry", "arch", "objective", "pretrain_objective", "seed", "scale", "layers", "d_model", "d_ff", "params",
    "active_params",
    "flops_per_example", "train_flops_per_example", "budget_deviation", "train_steps", "train_tokens",
    "train_flops", "tune_flops", "tuned", "lr", "train_time_s", "peak_memory_bytes", "val_loss", "bleu", "chrf",
    "rouge1", "rouge2", "rougeL", "accuracy", "macro_f1", "ppl", "bpb", "ablation_bleu", "ablation_chrf",
    "ablation_rougeL", "len_ratio", "repetition_rate", "decode_tokens_per_s", "latency_ms_per_example",
    "kv_cache_bytes_per_example", "ssm_state_bytes_per_example", "decode_state_bytes_per_example", "num_beams",
    "examples_truncated", "truncated_fraction", "outputs_path",
]
_GROUP_KEYS = ("entry", "arch", "objective", "pretrain_objective", "layers", "d_model", "d_ff", "num_beams")


def primary_metric(results: list[dict[str, Any]], task_kind: str) -> tuple[str, str, bool]:
    if task_kind == "pair" and results and results[0].get("bleu") is None and "rougeL" in results[0]:
        return SUMMARY_PRIMARY
    return PRIMARY[task_kind]


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if _num(v)]
    if not vals:
        return float("nan"), float("nan")
    if len(vals) == 1:
        return float(vals[0]), 0.0
    return statistics.fmean(vals), statistics.stdev(vals)


def normalize(r: dict[str, Any], tokens_per_example: float | None = None) -> dict[str, Any]:
    """A run row with the optional fields filled in: ``scale`` 1.0, the ablation scores as
    ``ablation_<metric>`` columns, and ``train_flops`` estimated from the tokens trained when
    the row predates it (tokens x training FLOPs per example / typical example tokens)."""
    out = dict(r)
    out["scale"] = float(r.get("scale") or 1.0)
    for k, v in (r.get("ablation") or {}).items():
        out[f"ablation_{k}"] = v
    if out.get("train_flops") is None and tokens_per_example and _num(r.get("train_tokens")) \
            and _num(r.get("train_flops_per_example")):
        out["train_flops"] = r["train_tokens"] * r["train_flops_per_example"] / max(tokens_per_example, 1e-9)
        out["train_flops_estimated"] = True
    if isinstance(out.get("tuned"), dict):
        out["tuned"] = out["tuned"] or None
    return out


def decode_state_bytes(a: dict[str, Any]) -> float | None:
    """Decoding state per example: attention K/V (cross-attention included) plus the Mamba
    layers' states; results written before the SSM state was recorded hold K/V only."""
    v = a.get("decode_state_bytes_per_example")
    return v if _num(v) else a.get("kv_cache_bytes_per_example")


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per entry and budget scale: mean and standard deviation over seeds of every
    numeric field (``<key>`` and ``<key>_std``), entries in first-seen order, scales ascending."""
    order: list[str] = []
    by: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in results:
        r = normalize(r)
        if r["entry"] not in order:
            order.append(r["entry"])
        by.setdefault((r["entry"], float(r.get("scale") or 1.0)), []).append(r)
    out = []
    for name in order:
        for scale in sorted(s for e, s in by if e == name):
            rows = sorted(by[(name, scale)], key=lambda r: r["seed"])
            agg: dict[str, Any] = {k: rows[0].get(k) for k in _GROUP_KEYS}
            agg["scale"] = scale
            agg["seeds"] = [r["seed"] for r in rows]
            tuned = [r.get("tuned") for r in rows if r.get("tuned")]
            agg["tuned"] = tuned[0] if tuned and all(t == tuned[0] for t in tuned) else (tuned or None)
            for k in CSV_FIELDS:
                if k in agg or k == "seed":
                    continue
                vals = [r.get(k) for r in rows]
                if all(_num(v) for v in vals if v is not None) and any(_num(v) for v in vals):
                    m, s = _mean_std(vals)
                    agg[k] = m
                    agg[k + "_std"] = s
            out.append(agg)
    return out


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _human(n: float | None, unit: str = "") -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    for suffix, div in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def _pm(row: dict[str, Any], key: str, digits: int = 2) -> str:
    if row.get(key) is None or (isinstance(row.get(key), float) and math.isnan(row[key])):
        return "-"
    s = row.get(key + "_std", 0.0)
    if len(row["seeds"]) > 1:
        return f"{row[key]:.{digits}f} ± {s:.{digits}f}"
    return f"{row[key]:.{digits}f}"


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_is(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _scale(s: float) -> str:
    return f"×{s:g}"


def quality_columns(task_kind: str, results: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    if task_kind == "pair":
        if results and results[0].get("bleu") is not None:
            return [("bleu", "BLEU", 2), ("chrf", "chrF", 1)]
        return [("rouge1", "ROUGE-1", 2), ("rouge2", "ROUGE-2", 2), ("rougeL", "ROUGE-L", 2)]
    if task_kind == "label":
        return [("accuracy", "accuracy", 3), ("macro_f1", "macro-F1", 3)]
    return [("ppl", "ppl", 2), ("bpb", "bits/byte", 3)]


# ---------------------------------------------------------------------------------------------
# significance: paired bootstrap of every entry against the best, per scale, seed with seed
# ---------------------------------------------------------------------------------------------
def load_outputs(out_dir: Path | None, row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The scored test examples of one run (``outputs_path``), or None when absent."""
    rel = row.get("outputs_path")
    if not rel or out_dir is None:
        return None
    path = Path(out_dir) / rel
    if not path.exists():
        return None
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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
                             "paired bootstrap (per example)") + f", {len(pairs)} seed pairing(s)"


def winners(agg: list[dict[str, Any]], results: list[dict[str, Any]], task_kind: str) -> list[S.Winner]:
    """The significance-aware winner at each scale (see :func:`archlab.compare.stats.pick_winner`)."""
    key, _, higher = primary_metric(results, task_kind)
    rows = [normalize(r) for r in results]
    out = []
    for scale in sorted({a["scale"] for a in agg}):
        group = [a for a in agg if a["scale"] == scale and _num(a.get(key))]
        if not group:
            continue
        scores = {a["entry"]: [r[key] for r in sorted(rows, key=lambda r: r["seed"])
                               if r["entry"] == a["entry"] and r["scale"] == scale and _num(r.get(key))]
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


# ---------------------------------------------------------------------------------------------
# verdict
# ---------------------------------------------------------------------------------------------
def _quality_line(w: S.Winner, by: dict[str, dict[str, Any]], key: str, label: str, prefix: str,
                  short: bool = False) -> str:
    lead = by[w.leader]
    if w.runner_up is None:
        return f"{prefix}**{w.leader}** is the only entry with a {label} ({_pm(lead, key)})."
    second = by[w.runner_up]
    n_seeds = len(lead["seeds"])
    test = lead.get("test") or second.get("test")
    if w.entry is not None:
        line = (f"{prefix}**{w.entry}** wins on {label} ({_pm(lead, key)}), {w.gap:.2f} ahead of "
                f"{w.runner_up} ({_pm(second, key)})")
        if w.p_value is not None:
            line += f": significant, paired bootstrap {_p_is(w.p_value)}"
            if not short:
                line += (" (the largest over the seed pairings; ahead in every seed, by more than the "
                         "seed-to-seed spread)" if n_seeds > 1 else
                         " over test examples; with one seed the seed-to-seed spread is unknown")
        else:
            line += f": {w.reason} (no per-example outputs for a paired test)"
        return line + "."
    line = (f"{prefix}no clear winner on {label}: **{w.leader}** leads ({_pm(lead, key)}) "
            f"{w.runner_up} ({_pm(second, key)}) by {w.gap:.2f}")
    if w.p_value is None and test is None and n_seeds < 2:
        return line + (", but with one seed and no per-example outputs for a paired test the difference "
                       "is not established (run more seeds).")
    line += f", {w.reason}"
    if w.p_value is None and test is None:
        line += " (no per-example outputs for a paired test)"
    return line + "."


def verdict(agg: list[dict[str, Any]], task_kind: str, results: list[dict[str, Any]], *,
            spike_list: list[dict[str, Any]] | None = None,
            tuning: list[dict[str, Any]] | None = None, tune_metric: str = "val_loss") -> list[str]:
    key, label, higher = primary_metric(results, task_kind)
    for a in agg:
        a.setdefault("scale", 1.0)
    lines = []
    ws = winners(agg, results, task_kind) if results else []
    scales = sorted({a["scale"] for a in agg})
    if ws:
        if len(scales) == 1:
            w = ws[0]
            by = {a["entry"]: a for a in agg}
            lines.append(_quality_line(w, by, key, label, "Quality: "))
        else:
            for i, w in enumerate(ws):
                by = {a["entry"]: a for a in agg if a["scale"] == w.budget}
                fl = [a.get("train_flops") for a in by.values() if _num(a.get("train_flops"))]
                at = f"Budget {_scale(w.budget)}" + (f" ({_human(statistics.fmean(fl))} training FLOPs)" if fl else "")
                lines.append(_quality_line(w, by, key, label, at + ": ", short=i > 0))
            lines.append(_crossing_line(ws))
    lines += _ablation_lines(agg, task_kind, key, label)
    lines += _tuning_lines(agg, tuning, tune_metric)
    lines += _moe_lines(agg, results)
    if spike_list is not None and any(r.get("train_curve") for r in results):
        lines.append(_spike_line(spike_list, results))
    trunc = [a for a in agg if _num(a.get("truncated_fraction")) and a["truncated_fraction"] > 0]
    if trunc:
        lines.append("Truncation: " + "; ".join(
            f"{a['entry']}{'' if len(scales) == 1 else ' ' + _scale(a['scale'])} cut "
            f"{a['truncated_fraction']:.1%} of its training examples" for a in trunc) + ".")
    top = [a for a in agg if a["scale"] == scales[-1]] if scales else agg
    cheap_train = min(top, key=lambda a: a.get("train_flops_per_example") or float("inf"))
    fastest = min(top, key=lambda a: a.get("train_time_s") or float("inf"))
    lines.append(f"Training cost: **{cheap_train['entry']}** needs the fewest training FLOPs per example "
                 f"({_human(cheap_train.get('train_flops_per_example'))}); the shortest wall time was "
                 f"{fastest['entry']} ({_fmt(fastest.get('train_time_s'), 1)} s).")
    lat = [a for a in top if _num(a.get("latency_ms_per_example"))]
    if lat:
        ranked = sorted(lat, key=lambda a: a["latency_ms_per_example"])
        f = ranked[0]
        kv = min(lat, key=lambda a: decode_state_bytes(a) or float("inf"))
        if task_kind == "label":  # no decoding: the pooled head's batched time per example
            line = (f"Inference cost: **{f['entry']}** classifies fastest "
                    f"({_fmt(f['latency_ms_per_example'], 2)} ms per example, batched)")
        else:
            line = (f"Inference cost: **{f['entry']}** has the lowest decoding latency "
                    f"({_fmt(f['latency_ms_per_example'], 1)} ms per example at beam {f['num_beams']})")
        if len(ranked) > 1:
            second = ranked[1]
            rel = second["latency_ms_per_example"] / f["latency_ms_per_example"] - 1
            if rel < LATENCY_TIE:
                line += (f", but {second['entry']} is within {rel:.0%} of it: not a clear difference "
                         f"(repeated timings of the same models move such ratios by up to about 10 %)")
            else:
                line += f"; {second['entry']}, the next, takes {rel + 1:.2f}x as long"
        if task_kind != "label":
            line += (f"; the smallest decoding state (KV cache + SSM state) per example is {kv['entry']}'s "
                     f"({_human(decode_state_bytes(kv), 'B')})")
        lines.append(line + ".")
    return lines


def _crossing_line(ws: list[S.Winner]) -> str:
    called = [w for w in ws if w.entry is not None]
    cs = S.crossings(ws)
    if cs:
        return "Ordering: the winner changes with the budget: " + "; ".join(
            f"**{c.before}** at {_scale(c.lo)}, **{c.after}** at {_scale(c.hi)}" for c in cs) + "."
    lead = S.crossings(ws, significant_only=False)
    if not called:
        line = "Ordering: no budget has a significant winner"
    elif len({w.entry for w in called}) == 1:
        ties = len(ws) - len(called)
        line = (f"Ordering: **{called[0].entry}** wins at every budget with a winner "
                f"({len(called)} of {len(ws)}{'; the others are ties' if ties else ''}); the ordering does not cross")
    else:  # unreachable: differing winners always make a crossing
        line = "Ordering: winners differ"
    if lead:
        line += "; the best mean changes (not significantly) " + "; ".join(
            f"from {c.before} at {_scale(c.lo)} to {c.after} at {_scale(c.hi)}" for c in lead)
    return line + "."


def _ablation_lines(agg: list[dict[str, Any]], task_kind: str, key: str, label: str) -> list[str]:
    if task_kind != "pair":
        return []
    top = max((a["scale"] for a in agg), default=1.0)
    rated = [a for a in agg if a["scale"] == top and _num(a.get(f"ablation_{key}")) and _num(a.get(key))]
    if not rated:
        return []
    ignore, read = [], []
    for a in rated:
        if a[key] < ABLATION_MIN_SCORE:
            continue
        kept = a[f"ablation_{key}"] / a[key]
        (ignore if kept > ABLATION_KEEP else read).append((a, kept))
    parts = []
    for a, kept in ignore:
        parts.append(f"**{a['entry']}** keeps {kept:.0%} of its {label} ({a[key]:.2f} → "
                     f"{a[f'ablation_{key}']:.2f}) when every test source is replaced by another's: "
                     "it largely ignores its input, and its score measures a target-side prior")
    if read:
        parts.append(", ".join(f"{a['entry']} {a[key]:.2f} → {a[f'ablation_{key}']:.2f}" for a, _ in read)
                     + f" with swapped sources: {'these read' if len(read) > 1 else 'it reads'} the input")
    return ["Source ablation: " + "; ".join(parts) + "."] if parts else []


def _tuning_lines(agg: list[dict[str, Any]], tuning: list[dict[str, Any]] | None,
                  tune_metric: str = "val_loss") -> list[str]:
    if not tuning:
        tuned = [a for a in agg if a.get("tuned")]
        if tuned:
            return ["Tuning: " + "; ".join(f"{a['entry']} {_tuned(a['tuned'])}" for a in tuned) + "."]
        # untuned: say where each entry's rate came from (one shared rate may favour one family)
        lrs = {a["entry"]: a.get("lr") for a in agg if _num(a.get("lr"))}
        if not lrs:
            return []
        if len(set(lrs.values())) == 1:
            return [f"Learning rate: one shared rate, {next(iter(lrs.values())):g}, not tuned per entry; "
                    "a rate that suits one family can handicap another (set `tune:`)."]
        return ["Learning rates: set per entry in the config, not tuned in this run (" + ", ".join(
            f"{e} {lr:g}" for e, lr in lrs.items()) + ")."]
    entries = list(dict.fromkeys(t["entry"] for t in tuning))
    per_scale = any(t.get("scale") is not None for t in tuning)
    parts = []
    for e in entries:
        mine = [t for t in tuning if t["entry"] == e]
        chosen = sorted((t for t in mine if t.get("chosen")), key=lambda t: t.get("steps") or 0)
        flops = sum(t.get("flops") or 0 for t in mine if not (per_scale and t.get("chosen")))
        # name the knobs that were tuned (those that vary among the candidates)
        knobs = [k for k in ("lr", "warmup_steps", "dropout") if len({t.get(k) for t in mine}) > 1] or ["lr"]
        if per_scale:
            desc = ", ".join(f"{_tuned({k: t[k] for k in knobs if t.get(k) is not None})} at {t['steps']} steps"
                             for t in chosen) or "-"
            n = len({_cand(t) for t in mine if t.get("scale") == mine[0].get("scale")})
            parts.append(f"{e} chose {desc} (of {n} candidates per budget; {_human(flops)} FLOPs beyond "
                         "the chosen runs)")
        else:
            desc = " / ".join(sorted({_tuned({k: t[k] for k in knobs if t.get(k) is not None})
                                      for t in chosen})) or "-"
            parts.append(f"{e} chose {desc} of {len({_cand(t) for t in mine})} candidate(s) "
                         f"({_human(flops)} FLOPs of tuning)")
    on = ("validation loss" if tune_metric in ("val_loss", "loss") else
          "the task metric on validation" if tune_metric == "task" else f"validation {tune_metric}")
    how = ("at each budget, full-length runs; the chosen run is that budget's run" if per_scale else
           "short runs" + (f" of {tuning[0]['steps']} steps" if tuning[0].get("steps") else "")
           + ", the choice used at every budget")
    return [f"Tuning (per entry, on {on}; {how}): " + "; ".join(parts) + "."] + _edge_lines(tuning)


def expert_health(result: dict[str, Any], out: Path | None) -> dict[str, Any]:
    """The last evaluation's expert health of a run (``metrics.jsonl`` rows with ``moe``, next
    to the run's ``outputs.jsonl``); {} for dense models or when the run is not at hand."""
    rel = result.get("outputs_path")
    if out is None or not rel:
        return {}
    metrics = (Path(out) / rel).parent / "metrics.jsonl"
    if not metrics.exists():
        return {}
    last: dict[str, Any] = {}
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row.get("moe"), dict):
            last = row["moe"]
    return last


def _moe_layers(h: dict[str, Any]) -> dict[str, dict[str, Any]]:
    layers = h.get("layers", h)
    return {k: v for k, v in layers.items() if isinstance(v, dict) and v.get("tokens_per_expert")}


def _moe_lines(agg: list[dict[str, Any]], results: list[dict[str, Any]]) -> list[str]:
    """Active vs total parameters of MoE entries, and whether their experts were used."""
    top = max((a["scale"] for a in agg), default=1.0)
    moe = [a for a in agg if a["scale"] == top and _num(a.get("active_params")) and _num(a.get("params"))
           and a["active_params"] < a["params"]]
    if not moe:
        return []
    parts = []
    for a in moe:
        part = (f"{a['entry']} has {_human(a['params'])} parameters, {_human(a['active_params'])} active per "
                f"token ({a['active_params'] / a['params']:.0%})")
        h = next((r["_moe_health"] for r in results if r.get("entry") == a["entry"]
                  and float(r.get("scale") or 1.0) == top and r.get("_moe_health")), None)
        layers = _moe_layers(h) if h else {}
        if layers:
            viol = max(float(v.get("max_violation") or 0.0) for v in layers.values())
            dead = sum(int(v.get("dead_experts") or 0) for v in layers.values())
            part += (f"; at its last evaluation the busiest expert of a layer took {viol:.0%} more tokens than "
                     f"the mean, {dead} expert(s) received none")
        parts.append(part)
    dense = [a["entry"] for a in agg if a["scale"] == top and a not in moe]
    ref = f" (dense: {', '.join(dense)}, every parameter active)" if dense else ""
    return ["Mixture of experts: " + "; ".join(parts) + ref + "."]


def _largest_seeds(cfg: Any, scales: Sequence[float]) -> str:
    extra = getattr(getattr(cfg, "budget", None), "seeds_at_largest", None)
    if not extra or len(scales) < 2 or list(extra) == list(cfg.seeds):
        return ""
    return f" ({len(extra)} at the largest budget)"


def _edge_lines(tuning: list[dict[str, Any]]) -> list[str]:
    """Choices at the edge of the learning-rate grid: the best rate may lie outside it."""
    out = []
    for t in (t for t in tuning if t.get("chosen") and _num(t.get("lr"))):
        grid = sorted({u["lr"] for u in tuning if u["entry"] == t["entry"] and u.get("scale") == t.get("scale")
                       and _num(u.get("lr"))})
        if len(grid) < 3 or grid[0] < t["lr"] < grid[-1]:
            continue
        side = "largest" if t["lr"] == grid[-1] else "smallest"
        at = f" at {t['steps']} steps" if t.get("scale") is not None else ""
        out.append(f"{t['entry']}{at}: tuning chose the {side} rate tried ({t['lr']:g}); the best may lie "
                   "outside the grid (widen `tune.lr`)")
    return ["Edge of the grid: " + "; ".join(out) + "."] if out else []


def _cand(t: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(t.get(k) for k in ("lr", "warmup_steps", "dropout", "steps"))


def _tuned(d: Any) -> str:
    if isinstance(d, list):
        return " / ".join(_tuned(x) for x in d) + " (differs by seed)"
    if not isinstance(d, dict) or not d:
        return "-"
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


def _spike_line(spike_list: list[dict[str, Any]], results: list[dict[str, Any]]) -> str:
    n_curves = sum(1 for r in results if r.get("train_curve"))
    if not n_curves:
        return "Training stability: no training-loss curves recorded."
    if not spike_list:
        return (f"Training stability: no loss spikes in {n_curves} training curve(s) "
                "(none above 1.5x the median of the previous 20 logged losses).")
    shown = spike_list[:6]
    more = f" and {len(spike_list) - len(shown)} more" if len(spike_list) > len(shown) else ""
    return ("Training stability: loss spikes (above 1.5x the running median) in " + "; ".join(
        f"**{s['entry']}** seed {s['seed']}{'' if s['scale'] == 1.0 else ' ' + _scale(s['scale'])} at step "
        f"{s['step']:.0f} ({s['loss']:.2f}, {s['ratio']:.1f}x)" for s in shown) + more + ".")


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------
def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def make_plots(results: list[dict[str, Any]], agg: list[dict[str, Any]], task_kind: str,
               tokens_per_example: float, *, fits: dict[str, dict[str, dict[str, Any]]] | None = None,
               tuning: list[dict[str, Any]] | None = None,
               spike_list: list[dict[str, Any]] | None = None) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    plots: dict[str, bytes] = {}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    entries = list(dict.fromkeys(a["entry"] for a in agg))
    color = {e: colors[i % len(colors)] for i, e in enumerate(entries)}
    rows = [normalize(r, tokens_per_example) for r in results]
    top = max((r["scale"] for r in rows), default=1.0)

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for r in rows:
        pts = [(c["tokens"], c["loss"]) for c in r.get("curve") or [] if c.get("tokens") and c.get("loss") is not None]
        if not pts:
            continue
        # FLOPs per training token: the run's own total when recorded, else the sizing estimate
        fpt = (r["train_flops"] / r["train_tokens"] if not r.get("train_flops_estimated")
               and _num(r.get("train_flops")) and r.get("train_tokens") else
               r["train_flops_per_example"] / max(tokens_per_example, 1e-9))
        xs = [t * fpt for t, _ in pts]
        first = r["seed"] == min(x["seed"] for x in rows if x["entry"] == r["entry"]) and r["scale"] == top
        ax.plot(xs, [v for _, v in pts], marker="o", ms=3, color=color[r["entry"]],
                alpha=1.0 if r["scale"] == top else 0.45, label=r["entry"] if first else None)
    if len({r["scale"] for r in rows}) > 1:
        ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss vs training compute")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    plots["loss_vs_flops"] = _png(fig)
    plt.close(fig)

    key, label, _ = primary_metric(results, task_kind)
    # quality and final validation loss vs training FLOPs: mean ± sd over seeds per scale, the
    # fitted power law where there are enough budgets
    with_flops = [a for a in agg if _num(a.get("train_flops"))]
    if with_flops and len({a["scale"] for a in agg}) > 1:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, metric, ylab in ((axes[0], key, label), (axes[1], "val_loss", "validation loss")):
            for e in entries:
                mine = sorted((a for a in with_flops if a["entry"] == e and _num(a.get(metric))),
                              key=lambda a: a["train_flops"])
                if not mine:
                    continue
                x = [a["train_flops"] for a in mine]
                ax.errorbar(x, [a[metric] for a in mine], yerr=[a.get(metric + "_std", 0.0) for a in mine],
                            fmt="o-", capsize=3, color=color[e], label=e)
                f = (fits or {}).get(e, {}).get(metric)
                if f is not None:
                    fit = S.PowerLawFit(**{k: f[k] for k in ("E", "A", "alpha", "sign", "r2", "n_points",
                                                             "n_budgets", "at_bound")})
                    xx = np.geomspace(min(x), max(x) * 2, 60)
                    ax.plot(xx, fit(xx), "--", color=color[e], alpha=0.8, lw=1,
                            label=f"{e} fit: α={fit.alpha:.2f}, R²={fit.r2:.2f}")
            ax.set_xscale("log")
            ax.set_xlabel("training FLOPs")
            ax.set_ylabel(ylab)
            ax.set_title(f"{ylab} vs training FLOPs (mean ± sd over seeds)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        plots["quality_vs_flops"] = _png(fig)
        plt.close(fig)

    # training (lines) and validation (markers) loss per entry on one plot, spikes flagged
    curves = [r for r in rows if r["scale"] == top and (r.get("train_curve") or r.get("curve"))]
    if any(r.get("train_curve") for r in curves):
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for r in curves:
            first = r["seed"] == min(x["seed"] for x in curves if x["entry"] == r["entry"])
            tc = [c for c in r.get("train_curve") or [] if c.get("loss") is not None]
            vc = [c for c in r.get("curve") or [] if c.get("loss") is not None]
            ax.plot([c["step"] for c in tc], [c["loss"] for c in tc], lw=1, color=color[r["entry"]],
                    alpha=0.8 if first else 0.4, label=f"{r['entry']} train" if first else None)
            ax.plot([c["step"] for c in vc], [c["loss"] for c in vc], "o--", ms=4, lw=1, color=color[r["entry"]],
                    alpha=1.0 if first else 0.5, label=f"{r['entry']} validation" if first else None)
        sp = [s for s in spike_list or [] if s["scale"] == top and math.isfinite(s["loss"])]
        if sp:
            ax.scatter([s["step"] for s in sp], [s["loss"] for s in sp], marker="x", s=70, color="red", zorder=5,
                       label="loss spike")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title("Training and validation loss" + ("" if top == 1.0 else f" (budget {_scale(top)})"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        plots["loss_curves"] = _png(fig)
        plt.close(fig)

    # validation loss vs learning rate per entry, from the tuning table
    tl = [t for t in tuning or [] if _num(t.get("lr")) and _num(t.get("val_loss"))]
    if tl:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        styles = ["o-", "s--", "^:", "d-."]
        budgets = sorted({t.get("steps") for t in tl if t.get("scale") is not None})
        for e, sc in dict.fromkeys((t["entry"], t.get("scale")) for t in tl):
            mine = [t for t in tl if t["entry"] == e and t.get("scale") == sc]
            lrs = sorted({t["lr"] for t in mine})
            # the best over the other tuned knobs (and the mean over seeds) at each rate
            best = [statistics.fmean(min(t["val_loss"] for t in mine if t["lr"] == lr and t.get("seed") == s)
                                     for s in {t.get("seed") for t in mine if t["lr"] == lr}) for lr in lrs]
            c = color.get(e, colors[len(color) % len(colors)])
            # one line per entry, or per entry and budget (horizon full)
            st = styles[budgets.index(mine[0]["steps"]) % len(styles)] if sc is not None else "o-"
            ax.plot(lrs, best, st, color=c, label=e if sc is None else f"{e}, {mine[0]['steps']} steps")
            ch = [t for t in mine if t.get("chosen")]
            if ch:
                ax.scatter([t["lr"] for t in ch], [t["val_loss"] for t in ch], marker="*", s=160, color=c,
                           edgecolor="black", zorder=5)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("validation loss (tuning run)")
        if budgets:
            ax.set_yscale("log")  # budgets differ by a whole loss unit; a log axis keeps each legible
        ax.set_title("Learning-rate sensitivity (★ chosen)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        plots["lr_sensitivity"] = _png(fig)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for a in agg:
        if not _num(a.get(key)) or a["scale"] != top:
            continue
        ax.errorbar(a["params"], a[key], yerr=a.get(key + "_std", 0.0), fmt="o", capsize=4,
                    color=color[a["entry"]], label=a["entry"])
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(label)
    ax.set_title(f"{label} vs parameters (mean ± sd over seeds)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    plots["quality_vs_params"] = _png(fig)
    plt.close(fig)

    lat = [a for a in agg if _num(a.get("latency_ms_per_example")) and a["scale"] == top]
    if lat:
        label = task_kind == "label"  # classification: batched time, no decoding and no cache
        fig, axes = plt.subplots(1, 1 if label else 2, figsize=(4.5 if label else 9, 3.6), squeeze=False)
        axes = axes[0]
        names = [a["entry"] for a in lat]
        axes[0].bar(names, [a["latency_ms_per_example"] for a in lat],
                    yerr=[a.get("latency_ms_per_example_std", 0) for a in lat],
                    color=[color[n] for n in names])
        if label:
            axes[0].set_ylabel("ms per example (batched)")
            axes[0].set_title("Classification time")
        else:
            axes[0].set_ylabel("ms per example (batch 1)")
            axes[0].set_title(f"Decoding latency, beam {lat[0]['num_beams']}")
            axes[1].bar(names, [(decode_state_bytes(a) or 0) / 1024 for a in lat],
                        color=[color[n] for n in names])
            axes[1].set_ylabel("KiB per example")
            axes[1].set_title("Decoding state: KV (incl. cross) + SSM")
        for ax in axes:
            ax.tick_params(axis="x", rotation=20, labelsize=8)
            ax.grid(alpha=0.3, axis="y")
        plots["decoding"] = _png(fig)
        plt.close(fig)
    return plots


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def state_plots(rows: list[dict[str, Any]], agg: list[dict[str, Any]], sizing: list[dict[str, Any]], shape: Any,
                task_kind: str) -> dict[str, bytes]:
    """Decoding state per example vs output length (KV grows, Mamba state stays flat; pair
    tasks), and the expert load per layer of MoE entries (tokens per expert / mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from archlab.compare.sizing import decode_memory_curve
    from archlab.config import ModelConfig, from_dict

    plots: dict[str, bytes] = {}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    order = list(dict.fromkeys(a["entry"] for a in agg))
    color = {e: colors[i % len(colors)] for i, e in enumerate(order)}
    models = []
    for s in sizing:
        m = s.get("model")
        if isinstance(m, dict):
            m = from_dict(ModelConfig, m)
        if m is not None and s.get("entry") in color and m.decoder_layers:
            models.append((s["entry"], m))
    if task_kind == "pair" and models:
        lengths = [2 ** i for i in range(13)]  # 1 .. 4096 output tokens
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for entry, m in models:
            curve = decode_memory_curve(m, lengths, src_len=shape.src_len)
            ax.plot(lengths, [c["total"] / 1024 for c in curve], "o-", ms=3, color=color[entry], label=entry)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("output tokens decoded (typical source as trained)")
        ax.set_ylabel("KiB per example (fp32, one beam)")
        ax.set_title("Decoding state: KV cache grows, Mamba state does not")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        plots["decode_memory"] = _png(fig)
        plt.close(fig)
    top = max((a["scale"] for a in agg), default=1.0)
    health: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("_moe_health") and float(r.get("scale") or 1.0) == top and r["entry"] not in health:
            health[r["entry"]] = _moe_layers(r["_moe_health"])
    health = {e: h for e, h in health.items() if h}
    if health:
        fig, axes = plt.subplots(1, len(health), figsize=(5.2 * len(health), 3.6), squeeze=False)
        for ax, (entry, layers) in zip(axes[0], health.items()):
            for i, (name, v) in enumerate(layers.items()):
                load = v["tokens_per_expert"]
                mean = sum(load) / len(load)
                ax.plot(range(len(load)), [x / mean if mean else 0.0 for x in load], "o-", ms=3,
                        color=colors[i % len(colors)], label=name)
            ax.axhline(1.0, color="black", lw=0.8, ls="--")
            ax.set_xlabel("expert")
            ax.set_ylabel("tokens / mean load")
            ax.set_title(f"{entry}: expert load per layer (last evaluation)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, ncol=2)
        plots["expert_load"] = _png(fig)
        plt.close(fig)
    return plots


def _main_table(agg: list[dict[str, Any]], task_kind: str,
                results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    q = quality_columns(task_kind, results)
    key, label, _ = primary_metric(results, task_kind)
    decoding = task_kind == "pair"  # label / text tasks decode nothing: no cache, length or loops
    multi = len({a["scale"] for a in agg}) > 1
    has = {k: any(a.get(k) is not None for a in agg) for k in ("train_flops", "tune_flops", "tuned", "p_value",
                                                                "ci", f"ablation_{key}", "truncated_fraction")}
    has["tune_flops"] = any(_num(a.get("tune_flops")) and a["tune_flops"] > 0 for a in agg)
    # MoE entries: parameters a token uses (k of E experts) next to all of them
    has["active"] = any(_num(a.get("active_params")) and a["active_params"] != a.get("params") for a in agg)
    has["truncated_fraction"] = any(_num(a.get("truncated_fraction")) and a["truncated_fraction"] > 0 for a in agg)
    head = ["Architecture", "Objective", *(["Scale"] if multi else []), "Layers", "Params",
            *(["active params"] if has["active"] else []), "FLOPs/ex",
            *(["train FLOPs"] if has["train_flops"] else []), *(["tune FLOPs"] if has["tune_flops"] else []),
            *(["tuned"] if has["tuned"] else [])]
    for k, name, _ in q:
        head.append(name)
        if k == key and has["ci"]:
            head.append(f"{name} 95% CI")
        if k == key and has[f"ablation_{key}"]:
            head.append(f"{name} src swapped")
    if any(a.get("test") for a in agg):  # a paired test ran
        head += [f"Δ{label} vs best", "p vs best"]
    head += ["val loss", *(["trunc"] if has["truncated_fraction"] else []), "train s",
             *(["dec tok/s"] if decoding else []), "ms/ex", *(["state/ex", "len ratio", "repeat"] if decoding else [])]
    rows = []
    for a in agg:
        obj = a["objective"] if not a.get("pretrain_objective") else f"{a['pretrain_objective']} → {a['objective']}"
        row = [a["entry"], obj, *([_scale(a["scale"])] if multi else []), a["layers"], _human(a.get("params")),
               *([_human(a.get("active_params") if _num(a.get("active_params")) else a.get("params"))]
                 if has["active"] else []),
               _human(a.get("flops_per_example")),
               *([_human(a.get("train_flops"))] if has["train_flops"] else []),
               *([_human(a.get("tune_flops"))] if has["tune_flops"] else []),
               *([_tuned(a.get("tuned"))] if has["tuned"] else [])]
        for k, _, d in q:
            row.append(_pm(a, k, d))
            if k == key and has["ci"]:
                row.append("-" if a.get("ci") is None else f"± {a['ci']:.{d}f}")
            if k == key and has[f"ablation_{key}"]:
                row.append(_pm(a, f"ablation_{key}", d))
        if "p vs best" in head:
            is_best = a.get("best") == a["entry"]
            row += ["best" if is_best else _fmt(a.get("delta"), 2), "-" if is_best else _p(a.get("p_value"))]
        row += [_pm(a, "val_loss", 3), *([_fmt(a.get("truncated_fraction"), 3)] if has["truncated_fraction"] else []),
                _fmt(a.get("train_time_s"), 1), *([_fmt(a.get("decode_tokens_per_s"), 0)] if decoding else []),
                _fmt(a.get("latency_ms_per_example"), 1),
                *([_human(decode_state_bytes(a), "B"), _fmt(a.get("len_ratio"), 2),
                   _fmt(a.get("repetition_rate"), 3)] if decoding else [])]
        rows.append(row)
    return head, rows


def _tuning_table(tuning: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    head = ["Entry", "seed", "lr", "warm-up", "dropout", "steps", "val loss", "metric", "FLOPs", "chosen"]
    rows = [[t["entry"], _fmt(t.get("seed")), _fmt(t.get("lr")) if not _num(t.get("lr")) else f"{t['lr']:g}",
             _fmt(t.get("warmup_steps")), _fmt(t.get("dropout")), _fmt(t.get("steps")), _fmt(t.get("val_loss"), 3),
             _fmt(t.get("metric"), 2), _human(t.get("flops")), "✓" if t.get("chosen") else ""] for t in tuning]
    return head, rows


def _fit_table(fits: dict[str, dict[str, dict[str, Any]]], label: str, key: str) -> tuple[list[str], list[list[str]]]:
    head = ["Entry", "metric", "fit", "E", "A", "α", "R²", "budgets"]
    rows = []
    for e, by in fits.items():
        for metric, f in by.items():
            name = label if metric == key else "val loss"
            form = f"E {'+' if f['sign'] > 0 else '−'} A·FLOPs^−α"
            rows.append([e, name, form, f"{f['E']:.3f}", f"{f['A']:.3g}",
                         f"{f['alpha']:.3f}" + (" (at search bound)" if f.get("at_bound") else ""),
                         f"{f['r2']:.3f}", str(f["n_budgets"])])
    return head, rows


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _samples(results: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, str]]]]:
    seen, out = set(), []
    top = max((float(r.get("scale") or 1.0) for r in results), default=1.0)
    for r in sorted(results, key=lambda r: (float(r.get("scale") or 1.0) != top, r["seed"])):
        if r["entry"] in seen or not r.get("samples"):
            continue
        seen.add(r["entry"])
        out.append((r["entry"], r["samples"][:3]))
    return out


SIGNIFICANCE_NOTE = (
    "Significance: at each budget every entry is compared with the best one on the same test "
    "examples by paired bootstrap resampling (Koehn 2004; {n} resamples; BLEU/chrF with sacrebleu's "
    "own test, accuracy and ROUGE-L per example), seed paired with seed; `p vs best` is the largest "
    "p-value over the seed pairings, `95% CI` the bootstrap half-width of the entry's own score. "
    "A winner is called only at p < 0.05 and, with several seeds, a gap larger than the seed-to-seed "
    "standard deviation in the same direction in every seed.")


def write_report(
    out: Path,
    cfg: Any,
    results: list[dict[str, Any]],
    *,
    sizing: list[dict[str, Any]],
    shape: Any,
    task_kind: str,
    wall_time_s: float,
    tuning: list[dict[str, Any]] | None = None,
    scales: Sequence[float] | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
) -> None:
    """Write results.json, results.csv, report.md, report.html and the plots (PNG) into ``out``.
    ``tuning``: the per-entry tuning table (rows ``{entry, seed, lr, warmup_steps, dropout,
    steps, val_loss, metric, flops, chosen}``); ``scales``: the budget scales run."""
    out = Path(out)
    tokens_per_example = shape.src_len + shape.tgt_len + 3
    rows = [normalize(r, tokens_per_example) for r in results]
    agg = aggregate(rows)
    significance(rows, agg, task_kind, out, n_samples=n_bootstrap)
    fits = power_law_fits(agg, rows, task_kind)
    spike_list = spikes(rows)
    ws = winners(agg, rows, task_kind)
    for r in rows:  # MoE runs: expert load at the last evaluation (read from the run's metrics)
        h = expert_health(r, out)
        if h:
            r["_moe_health"] = h
    plots = make_plots(rows, agg, task_kind, tokens_per_example, fits=fits, tuning=tuning, spike_list=spike_list)
    plots.update(state_plots(rows, agg, sizing, shape, task_kind))
    for name, data in plots.items():
        (out / f"{name}.png").write_bytes(data)
    tune_metric = getattr(getattr(cfg, "tune", None), "metric", None) or "val_loss"
    verdict_lines = verdict(agg, task_kind, rows, spike_list=spike_list, tuning=tuning, tune_metric=tune_metric)
    n_budgets = len({a["scale"] for a in agg})
    if 1 < n_budgets < 4:  # (a saturating power law has 3 free parameters)
        verdict_lines.append(f"Scaling fits: a saturating power law per entry needs at least 4 budgets; this "
                             f"run has {n_budgets}, so none is fitted (add budget.scales).")
    if getattr(cfg, "note", None):
        verdict_lines.append(f"Note: {cfg.note}")
    key, label, _ = primary_metric(rows, task_kind)
    scale_list = sorted({float(s) for s in scales} if scales else {a["scale"] for a in agg})
    doc = {
        "name": cfg.name,
        "task": cfg.data,
        "task_kind": task_kind,
        "budget": to_dict(cfg.budget),
        "typical_example_tokens": {"src": shape.src_len, "tgt": shape.tgt_len},
        "sizing": [{k: (to_dict(v) if k == "model" else v) for k, v in s.items()} for s in sizing],
        "seeds": cfg.seeds,
        "scales": scale_list,
        "wall_time_s": wall_time_s,
        "verdict": verdict_lines,
        "primary_metric": key,
        "winners": [{"scale": w.budget, "winner": w.entry, "leader": w.leader, "runner_up": w.runner_up,
                     "gap": w.gap, "p_value": w.p_value, "reason": w.reason} for w in ws],
        "crossings": [c.__dict__ for c in S.crossings(ws)],
        "fits": fits,
        "spikes": spike_list,
        "tuning": list(tuning or []),
        "entries": agg,
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=_json_default))
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(r[k]) if isinstance(r.get(k), (dict, list)) else r.get(k)) for k in CSV_FIELDS})

    head, table = _main_table(agg, task_kind, rows)
    task = cfg.data.get("task", "?")
    steps = sorted({r.get("train_steps") for r in rows if r.get("train_steps") is not None})
    steps_txt = (f"{cfg.train.steps} training steps" if len(scale_list) == 1 else
                 f"budget scales {', '.join(_scale(s) for s in scale_list)} "
                 f"({', '.join(str(s) for s in steps)} training steps)")
    sections: list[tuple[str, Any]] = []
    md = [f"# archlab compare: {cfg.name}", "",
          f"Task **{task}** ({task_kind}); budget matched on **{cfg.budget.match}** "
          f"(typical example {shape.src_len:.1f} + {shape.tgt_len:.1f} tokens); "
          f"{len(cfg.seeds)} seed(s) per entry{_largest_seeds(cfg, scale_list)}; {steps_txt} of "
          f"{cfg.train.tokens_per_batch} padded tokens; decoding with beam {cfg.decode.num_beams}; "
          f"total wall time {wall_time_s / 60:.1f} min.", "",
          "## Verdict", "", *[f"- {v}" for v in verdict_lines], "",
          "## Results (mean ± sd over seeds)", "", _md_table(head, table), "",
          "Params: all parameters (embeddings included). FLOPs/ex: forward FLOPs of a typical example "
          "(training is 3x). train FLOPs: total FLOPs of the training run; tune FLOPs: spent on "
          "the entry's tuning runs. state/ex: decoding state bytes per example (fp32, at the beam size): "
          "K/V of the attention layers, cross-attention included, plus the Mamba layers' conv and SSM "
          "states (constant in length). len ratio: output words / reference words; "
          "repeat: share of word 3-grams that repeat an earlier one in the same output (looping). "
          "src swapped: the score when every test source is replaced by another test example's "
          "(source ablation).", "",
          SIGNIFICANCE_NOTE.format(n=n_bootstrap), ""]
    if fits:
        fh, fr = _fit_table(fits, label, key)
        sections.append(("Scaling fits (quality and validation loss vs training FLOPs)", (fh, fr)))
        md += ["## Scaling fits (quality and validation loss vs training FLOPs)", "", _md_table(fh, fr), ""]
    if tuning:
        th, tr = _tuning_table(tuning)
        sections.append(("Tuning runs", (th, tr)))
        md += ["## Tuning runs", "", _md_table(th, tr), ""]
    if spike_list:
        sh = ["Entry", "seed", "scale", "step", "loss", "running median", "ratio"]
        sr = [[s["entry"], str(s["seed"]), _scale(s["scale"]), f"{s['step']:.0f}", _fmt(s["loss"], 3),
               _fmt(s["median"], 3), _fmt(s["ratio"], 2)] for s in spike_list]
        sections.append(("Loss spikes", (sh, sr)))
        md += ["## Loss spikes", "", _md_table(sh, sr), ""]
    md += ["## Sizing rule", "",
           f"All entries share d_model and the block; depth is chosen per architecture to match "
           f"the {cfg.budget.match} target, then d_ff adjusted. ", "",
           _md_table(["Entry", "Rule", "Params", "FLOPs/ex", "vs target"],
                     [[s["entry"], s["rule"], _human(s["params"]), _human(s["flops_per_example"]),
                       f"{s['deviation']:+.1%}"] for s in sizing]), "",
           "## Plots", "", *[f"![{n}]({n}.png)" for n in plots], ""]
    samples = _samples(rows)
    if samples:
        md += ["## Sample outputs (seed with the lowest number)", ""]
        for entry, ss in samples:
            md.append(f"**{entry}**\n")
            for s in ss:
                md.append(f"- source: {s['source']}\n  - reference: {s['reference']}\n  - output: {s['output']}")
            md.append("")
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    (out / "report.html").write_text(_html(cfg, md, head, table, plots, verdict_lines, samples, sizing,
                                           sections, SIGNIFICANCE_NOTE.format(n=n_bootstrap)),
                                     encoding="utf-8")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _html(cfg: Any, md: list[str], head: list[str], rows: list[list[str]], plots: dict[str, bytes],
          verdict_lines: list[str], samples: list[tuple[str, list[dict[str, str]]]],
          sizing: list[dict[str, Any]], sections: list[tuple[str, Any]] = (), note: str = "") -> str:
    e = html.escape

    def table(h: list[str], rs: list[list[str]]) -> str:
        return ("<table><thead><tr>" + "".join(f"<th>{e(x)}</th>" for x in h) + "</tr></thead><tbody>"
                + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rs)
                + "</tbody></table>")

    def bold(s: str) -> str:
        parts = e(s).split("**")
        return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))

    imgs = "".join(
        f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(b).decode()}"></figure>'
        for n, b in plots.items())
    sample_html = ""
    for entry, ss in samples:
        sample_html += (f'<h3>{e(entry)}</h3><table class="samples"><tr><th>source</th><th>reference</th>'
                        '<th>output</th></tr>')
        sample_html += "".join(f"<tr><td>{e(s['source'])}</td><td>{e(s['reference'])}</td>"
                               f"<td>{e(s['output'])}</td></tr>" for s in ss) + "</table>"
    extra = "".join(f'<h2>{e(title)}</h2><div class="wide">{table(*t)}</div>' for title, t in sections)
    intro = md[2]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>archlab compare: {e(cfg.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1400px; margin: 2em auto; padding: 0 1em; color: #222; }}
.wide {{ overflow-x: auto; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
td {{ white-space: nowrap; }}
.samples td {{ white-space: normal; }}
th {{ background: #f3f3f3; }}
figure {{ display: inline-block; margin: 0.5em; }}
img {{ max-width: 100%; }}
.verdict li {{ margin: 0.3em 0; }}
.note {{ font-size: 0.9em; color: #444; }}
</style></head><body>
<h1>archlab compare: {e(cfg.name)}</h1>
<p>{bold(intro)}</p>
<h2>Verdict</h2><ul class="verdict">{''.join(f'<li>{bold(v)}</li>' for v in verdict_lines)}</ul>
<h2>Results (mean ± sd over seeds)</h2><div class="wide">{table(head, rows)}</div>
<p class="note">Params: all parameters. FLOPs/ex: forward FLOPs of a typical example (training is 3x).
train FLOPs: total FLOPs of the training run; tune FLOPs: spent on the entry's tuning runs. state/ex: decoding
state bytes per example: K/V of the attention layers, cross-attention included, plus the Mamba
layers' conv and SSM states (constant in length). len ratio: output/reference
length; repeat: share of word 3-grams that repeat an earlier one in the same output (looping).
src swapped: the score when every test source is replaced by another test example's (source ablation).</p>
<p class="note">{e(note).replace('`', '')}</p>
{extra}
<h2>Sizing rule</h2>{table(["Entry", "Rule", "Params", "FLOPs/ex", "vs target"],
    [[s["entry"], s["rule"], _human(s["params"]), _human(s["flops_per_example"]), f"{s['deviation']:+.1%}"] for s in sizing])}
<h2>Plots</h2>{imgs}
<h2>Sample outputs</h2>{sample_html or '<p>(none for this task)</p>'}
</body></html>
"""
