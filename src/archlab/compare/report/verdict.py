"""The verdict: one line per finding (quality winner per budget and where it changes, source
ablation, tuning, experts, training stability, truncation, training and inference cost)."""

from __future__ import annotations

import statistics
from typing import Any

from archlab.compare import stats as S
from archlab.compare.report.aggregate import _moe_layers, _num, decode_state_bytes, primary_metric
from archlab.compare.report.analysis import winners
from archlab.compare.report.fmt import _fmt, _human, _p_is, _pm, _scale, _tuned

# Latencies closer than this (relative) are reported as no clear difference. Four timings of the
# demo's same three trained models (interleaved, fastest of 3 per example; three back to back,
# one in a fresh-clone demo run) put the prefix-LM/decoder latency ratio between 0.936 and 1.029
# and the encoder-decoder/decoder ratio between 1.035 and 1.094: about 10 points of spread.
LATENCY_TIE = 0.10
# A model that keeps more than this share of its score when every source is replaced by another
# test example's source writes much the same output whatever it reads: it ignores its input.
# Models that read their input fall to the score of unrelated text (BLEU of about 1-2).
ABLATION_KEEP = 0.5
ABLATION_MIN_SCORE = 1.0  # below this the normal score is itself noise; no ratio is judged
FINE_METRICS = ("mrr", "recall_at_1", "recall_at_10", "f1", "token_acc", "exact_match")  # in [0, 1]: 3 decimals


def _quality_line(w: S.Winner, by: dict[str, dict[str, Any]], key: str, label: str, prefix: str,
                  short: bool = False) -> str:
    d = 3 if key in FINE_METRICS else 2
    lead = by[w.leader]
    if w.runner_up is None:
        article = "an" if label[:1].lower() in "aeiou" else "a"
        return f"{prefix}**{w.leader}** is the only entry with {article} {label} ({_pm(lead, key, d)})."
    second = by[w.runner_up]
    n_seeds = len(lead["seeds"])
    test = lead.get("test") or second.get("test")
    if w.entry is not None:
        line = (f"{prefix}**{w.entry}** wins on {label} ({_pm(lead, key, d)}), {w.gap:.{d}f} ahead of "
                f"{w.runner_up} ({_pm(second, key, d)})")
        if w.p_value is not None:
            line += f": significant, paired bootstrap {_p_is(w.p_value)}"
            if not short:
                line += (" (the largest over the seed pairings; ahead in every seed, by more than the "
                         "seed-to-seed spread)" if n_seeds > 1 else
                         " over test examples; with one seed the seed-to-seed spread is unknown")
        else:
            line += f": {w.reason} (no per-example outputs for a paired test)"
        return line + "."
    line = (f"{prefix}no clear winner on {label}: **{w.leader}** leads ({_pm(lead, key, d)}) "
            f"{w.runner_up} ({_pm(second, key, d)}) by {w.gap:.{d}f}")
    if w.p_value is None and test is None and n_seeds < 2:
        return line + (", but with one seed and no per-example outputs for a paired test the difference "
                       "is not established (run more seeds).")
    line += f", {w.reason}"
    if w.p_value is None and test is None:
        line += " (no per-example outputs for a paired test)"
    return line + "."


# what each family's tag is computed from (objectives/tokcls.py): part of reading a NER table
TAGGING_LAYOUTS = (
    "Tagging layouts: encoder entries (pretrained ones too) tag from bidirectional states; the "
    "**decoder's tags see only the left context** (causal mask: a word is tagged before the words "
    "after it are read); the prefix-LM reads the whole sentence as one bidirectional prefix; the "
    "encoder-decoder tags from its encoder's states (its decoder does not run, so its decoder weights "
    "count in Params, not in FLOPs). A word's tag is its first sub-token's.")


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
    if task_kind == "tags":
        lines.append(TAGGING_LAYOUTS)
    lines += _tuning_lines(agg, tuning, tune_metric)
    lines += _moe_lines(agg, results)
    if spike_list is not None and any(r.get("train_curve") for r in results):
        lines.append(_spike_line(spike_list, results))
    trunc = [a for a in agg if _num(a.get("truncated_fraction")) and a["truncated_fraction"] > 0
             and not a.get("evaluate_only")]
    if trunc:
        lines.append("Truncation: " + "; ".join(
            f"{a['entry']}{'' if len(scales) == 1 else ' ' + _scale(a['scale'])} cut "
            f"{a['truncated_fraction']:.1%} of its training examples" for a in trunc) + ".")
    top = [a for a in agg if a["scale"] == scales[-1]] if scales else agg
    trained = [a for a in top if not a.get("evaluate_only")] or top  # (a zero-shot entry trains nothing)
    cheap_train = min(trained, key=lambda a: a.get("train_flops_per_example") or float("inf"))
    fastest = min(trained, key=lambda a: a.get("train_time_s") or float("inf"))
    lines.append(f"Training cost: **{cheap_train['entry']}** needs the fewest training FLOPs per example "
                 f"({_human(cheap_train.get('train_flops_per_example'))}); the shortest wall time was "
                 f"{fastest['entry']} ({_fmt(fastest.get('train_time_s'), 1)} s).")
    if any(a.get("evaluate_only") for a in top):
        lines.append("Zero-shot: " + ", ".join(f"**{a['entry']}**" for a in top if a.get("evaluate_only"))
                     + " scored as its checkpoint came, without training on this task (its pretraining's "
                       "cost is not in the FLOPs columns).")
    lat = [a for a in top if _num(a.get("latency_ms_per_example"))]
    if lat:
        ranked = sorted(lat, key=lambda a: a["latency_ms_per_example"])
        f = ranked[0]
        kv = min(lat, key=lambda a: decode_state_bytes(a) or float("inf"))
        if task_kind in ("label", "tags"):  # no decoding: the head's batched time per example
            line = (f"Inference cost: **{f['entry']}** {'tags' if task_kind == 'tags' else 'classifies'} fastest "
                    f"({_fmt(f['latency_ms_per_example'], 2)} ms per example, batched)")
        elif task_kind == "pairs":  # retrieval: embed the queries, rank the pre-embedded pool
            line = (f"Search cost: **{f['entry']}** answers the most queries per second "
                    f"({_fmt(f.get('queries_per_s'), 0)}: queries embedded in batches and ranked against "
                    f"candidates embedded beforehand; {_fmt(f['latency_ms_per_example'], 2)} ms per query)")
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
        if task_kind in ("pair", "probe"):
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
        lrs = {a["entry"]: a.get("lr") for a in agg if _num(a.get("lr")) and not a.get("evaluate_only")}
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
        flops = sum(t.get("flops") or 0 for t in mine)  # every candidate: no reported run is one
        # name the knobs that were tuned (those that vary among the candidates)
        knobs = [k for k in ("lr", "warmup_steps", "dropout") if len({t.get(k) for t in mine}) > 1] or ["lr"]
        if per_scale:
            desc = ", ".join(f"{_tuned({k: t[k] for k in knobs if t.get(k) is not None})} at {t['steps']} steps"
                             for t in chosen) or "-"
            n = len({_cand(t) for t in mine if t.get("scale") == mine[0].get("scale")})
            parts.append(f"{e} chose {desc} (of {n} candidates per budget; {_human(flops)} FLOPs of tuning)")
        else:
            desc = " / ".join(sorted({_tuned({k: t[k] for k in knobs if t.get(k) is not None})
                                      for t in chosen})) or "-"
            parts.append(f"{e} chose {desc} of {len({_cand(t) for t in mine})} candidate(s) "
                         f"({_human(flops)} FLOPs of tuning)")
    on = ("validation loss" if tune_metric in ("val_loss", "loss") else
          "the task metric on validation" if tune_metric == "task" else f"validation {tune_metric}")
    seeds = sorted({t["seed"] for t in tuning if t.get("seed") is not None})
    at = f" at tuning seed {seeds[0]}" if len(seeds) == 1 else ""
    how = (f"at each budget, full-length runs{at}; every reported seed then trained afresh at the choice"
           if per_scale else
           "short runs" + (f" of {tuning[0]['steps']} steps" if tuning[0].get("steps") else "")
           + f"{at}, the choice used at every budget")
    return [f"Tuning (per entry, on {on}; {how}): " + "; ".join(parts) + "."] + _edge_lines(tuning)



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

