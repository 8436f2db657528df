"""The report's tables as (header, rows) of display strings."""

from __future__ import annotations

from typing import Any

from archlab.compare.report.aggregate import _num, decode_state_bytes, primary_metric, quality_columns
from archlab.compare.report.fmt import _fmt, _human, _p, _pm, _scale, _tuned


def _main_table(agg: list[dict[str, Any]], task_kind: str,
                results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    q = quality_columns(task_kind, results)
    key, label, _ = primary_metric(results, task_kind)
    decoding = task_kind in ("pair", "probe")  # label / text tasks decode nothing: no cache, length or loops
    texts = task_kind == "pair"  # output length and looping: free text only (a probe answer has its length)
    search = task_kind == "pairs"  # retrieval: queries per second instead
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
             *(["dec tok/s"] if decoding else []), *(["queries/s"] if search else []), "ms/ex",
             *(["state/ex"] if decoding else []), *(["len ratio", "repeat"] if texts else [])]
    rows = []
    for a in agg:
        obj = a["objective"] if not a.get("pretrain_objective") else f"{a['pretrain_objective']} → {a['objective']}"
        if a.get("evaluate_only"):
            obj = "none (zero-shot)"
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
            d = next((d for k, _, d in q if k == key), 2)  # (the metric's own decimals)
            row += ["best" if is_best else _fmt(a.get("delta"), d), "-" if is_best else _p(a.get("p_value"))]
        row += [_pm(a, "val_loss", 3), *([_fmt(a.get("truncated_fraction"), 3)] if has["truncated_fraction"] else []),
                _fmt(a.get("train_time_s"), 1), *([_fmt(a.get("decode_tokens_per_s"), 0)] if decoding else []),
                *([_fmt(a.get("queries_per_s"), 0)] if search else []),
                _fmt(a.get("latency_ms_per_example"), 2 if search else 1),
                *([_human(decode_state_bytes(a), "B")] if decoding else []),
                *([_fmt(a.get("len_ratio"), 2), _fmt(a.get("repetition_rate"), 3)] if texts else [])]
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



def _samples(results: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, str]]]]:
    seen, out = set(), []
    top = max((float(r.get("scale") or 1.0) for r in results), default=1.0)
    for r in sorted(results, key=lambda r: (float(r.get("scale") or 1.0) != top, r["seed"])):
        if r["entry"] in seen or not r.get("samples"):
            continue
        seen.add(r["entry"])
        out.append((r["entry"], r["samples"][:3]))
    return out



def _spike_table(spike_list: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    head = ["Entry", "seed", "scale", "step", "loss", "running median", "ratio"]
    rows = [[s["entry"], str(s["seed"]), _scale(s["scale"]), f"{s['step']:.0f}", _fmt(s["loss"], 3),
             _fmt(s["median"], 3), _fmt(s["ratio"], 2)] for s in spike_list]
    return head, rows


def _sizing_table(sizing: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    grouped = any(s.get("group") is not None for s in sizing)  # budget groups: each its own reference
    head = ["Entry", *(["Group", "Reference"] if grouped else []), "Rule", "Params", "FLOPs/ex", "vs target"]
    rows = [[s["entry"], *([_fmt(s.get("group")), _fmt(s.get("reference"))] if grouped else []), s["rule"],
             _human(s["params"]), _human(s["flops_per_example"]), f"{s['deviation']:+.1%}"] for s in sizing]
    return head, rows
