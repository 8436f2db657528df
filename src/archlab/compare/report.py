"""The compare report: results.json / results.csv (one row per entry and seed), report.md and a
self-contained report.html (tables, plots as inline PNG, sample outputs, verdict)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

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

CSV_FIELDS = [
    "entry", "arch", "objective", "pretrain_objective", "seed", "scale", "layers", "d_model", "d_ff", "params",
    "flops_per_example", "train_flops_per_example", "train_flops", "tune_flops", "lr", "warmup_steps",
    "budget_deviation", "examples_truncated", "truncated_fraction", "train_steps", "train_tokens",
    "train_time_s", "peak_memory_bytes", "val_loss", "bleu", "chrf", "rouge1", "rouge2", "rougeL",
    "accuracy", "macro_f1", "ppl", "bpb", "len_ratio", "repetition_rate", "decode_tokens_per_s",
    "latency_ms_per_example", "kv_cache_bytes_per_example", "num_beams",
]


def primary_metric(results: list[dict[str, Any]], task_kind: str) -> tuple[str, str, bool]:
    if task_kind == "pair" and results and results[0].get("bleu") is None and "rougeL" in results[0]:
        return SUMMARY_PRIMARY
    return PRIMARY[task_kind]


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan")
    if len(vals) == 1:
        return float(vals[0]), 0.0
    return statistics.fmean(vals), statistics.stdev(vals)


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per entry and budget scale: mean and standard deviation over seeds of every
    numeric field."""
    order: list[tuple[str, float]] = []
    by: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in results:
        key = (r["entry"], float(r.get("scale", 1.0)))
        if key not in by:
            order.append(key)
        by.setdefault(key, []).append(r)
    out = []
    for name in order:
        rows = by[name]
        agg: dict[str, Any] = {k: rows[0].get(k) for k in ("entry", "arch", "objective", "pretrain_objective",
                                                           "layers", "d_model", "d_ff", "num_beams")}
        agg["scale"] = name[1]
        agg["tuned"] = rows[0].get("tuned") or {}
        agg["seeds"] = [r["seed"] for r in rows]
        for k in CSV_FIELDS:
            if k in agg or k == "seed":
                continue
            vals = [r.get(k) for r in rows]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals if v is not None) and any(
                v is not None for v in vals
            ):
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
    for suffix, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
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


def quality_columns(task_kind: str, results: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    if task_kind == "pair":
        if results and results[0].get("bleu") is not None:
            return [("bleu", "BLEU", 2), ("chrf", "chrF", 1)]
        return [("rouge1", "ROUGE-1", 2), ("rouge2", "ROUGE-2", 2), ("rougeL", "ROUGE-L", 2)]
    if task_kind == "label":
        return [("accuracy", "accuracy", 3), ("macro_f1", "macro-F1", 3)]
    return [("ppl", "ppl", 2), ("bpb", "bits/byte", 3)]


def verdict(agg: list[dict[str, Any]], task_kind: str, results: list[dict[str, Any]]) -> list[str]:
    key, label, higher = primary_metric(results, task_kind)
    rated = [a for a in agg if a.get(key) is not None and not math.isnan(a[key])]
    lines = []
    if rated:
        ranked = sorted(rated, key=lambda a: a[key], reverse=higher)
        best = ranked[0]
        line = f"Quality: **{best['entry']}** wins on {label} ({_pm(best, key)})"
        if len(ranked) > 1:
            second = ranked[1]
            gap = abs(best[key] - second[key])
            spread = max(best.get(key + "_std", 0.0), second.get(key + "_std", 0.0))
            if len(best["seeds"]) < 2:
                line += (f", {gap:.2f} ahead of {second['entry']}; with one seed the seed-to-seed spread "
                         "is unknown, so this difference is not established (run more seeds)")
            elif gap > 2 * spread:
                line += (f", {gap:.2f} ahead of {second['entry']}: larger than twice the seed-to-seed "
                         f"standard deviation ({spread:.2f})")
            else:
                line += (f", but only {gap:.2f} ahead of {second['entry']}: within twice the seed-to-seed "
                         f"standard deviation ({spread:.2f}), so not a clear difference")
        lines.append(line + ".")
    cheap_train = min(agg, key=lambda a: a.get("train_flops_per_example") or float("inf"))
    fastest = min(agg, key=lambda a: a.get("train_time_s") or float("inf"))
    lines.append(f"Training cost: **{cheap_train['entry']}** needs the fewest training FLOPs per example "
                 f"({_human(cheap_train.get('train_flops_per_example'))}); the shortest wall time was "
                 f"{fastest['entry']} ({_fmt(fastest.get('train_time_s'), 1)} s).")
    lat = [a for a in agg if a.get("latency_ms_per_example") is not None and not math.isnan(a["latency_ms_per_example"])]
    if lat:
        ranked = sorted(lat, key=lambda a: a["latency_ms_per_example"])
        f = ranked[0]
        kv = min(lat, key=lambda a: a.get("kv_cache_bytes_per_example") or float("inf"))
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
                line += f", {rel:.0%} below {second['entry']}"
        if task_kind != "label":
            line += (f"; the smallest KV cache per example is {kv['entry']}'s "
                     f"({_human(kv.get('kv_cache_bytes_per_example'), 'B')})")
        lines.append(line + ".")
    return lines


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------
def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def make_plots(results: list[dict[str, Any]], agg: list[dict[str, Any]], task_kind: str,
               tokens_per_example: float) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, bytes] = {}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    entries = [a["entry"] for a in agg]
    color = {e: colors[i % len(colors)] for i, e in enumerate(entries)}

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for r in results:
        pts = [(c["tokens"], c["loss"]) for c in r.get("curve", []) if c.get("tokens") and c.get("loss") is not None]
        if not pts:
            continue
        fpt = r["train_flops_per_example"] / max(tokens_per_example, 1e-9)
        xs = [t * fpt for t, _ in pts]
        ax.plot(xs, [v for _, v in pts], marker="o", ms=3, color=color[r["entry"]],
                label=r["entry"] if r["seed"] == min(x["seed"] for x in results if x["entry"] == r["entry"]) else None)
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss vs training compute")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    plots["loss_vs_flops"] = _png(fig)
    plt.close(fig)

    key, label, _ = primary_metric(results, task_kind)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for a in agg:
        if a.get(key) is None or math.isnan(a[key]):
            continue
        ax.errorbar(a["params"], a[key], yerr=a.get(key + "_std", 0.0), fmt="o", capsize=4,
                    color=color[a["entry"]], label=a["entry"])
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(label)
    ax.set_title(f"{label} vs parameters (mean ± sd over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    plots["quality_vs_params"] = _png(fig)
    plt.close(fig)

    lat = [a for a in agg if a.get("latency_ms_per_example") is not None and not math.isnan(a["latency_ms_per_example"])]
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
            axes[1].bar(names, [a.get("kv_cache_bytes_per_example", 0) / 1024 for a in lat],
                        color=[color[n] for n in names])
            axes[1].set_ylabel("KiB per example")
            axes[1].set_title("KV cache incl. cross-attention")
        for ax in axes:
            ax.tick_params(axis="x", rotation=20, labelsize=8)
            ax.grid(alpha=0.3, axis="y")
        plots["decoding"] = _png(fig)
        plt.close(fig)
    return plots


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _main_table(agg: list[dict[str, Any]], task_kind: str, results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    q = quality_columns(task_kind, results)
    decoding = task_kind == "pair"  # KV cache, length ratio and repetition only apply to decoding
    scales = len({a.get("scale", 1.0) for a in agg}) > 1
    tuned = any(a.get("tuned") for a in agg)
    truncated = any(a.get("examples_truncated") for a in agg)
    head = ["Architecture", *(["Scale", "train FLOPs"] if scales else []), "Objective", "Layers", "Params",
            "FLOPs/ex", *(["lr"] if tuned else []), *[c[1] for c in q], "val loss", "train s",
            *(["truncated"] if truncated else []),
            *(["dec tok/s", "ms/ex", "KV/ex", "len ratio", "repeat"] if decoding else ["ms/ex"])]
    rows = []
    for a in agg:
        obj = a["objective"] if not a.get("pretrain_objective") else f"{a['pretrain_objective']} → {a['objective']}"
        rows.append([
            a["entry"], *([f"{a.get('scale', 1.0):g}", _human(a.get("train_flops"))] if scales else []),
            obj, a["layers"], _human(a.get("params")), _human(a.get("flops_per_example")),
            *([f"{a['tuned'].get('lr', a.get('lr', float('nan'))):.2g}"] if tuned else []),
            *[_pm(a, k, d) for k, _, d in q],
            _pm(a, "val_loss", 3), _fmt(a.get("train_time_s"), 1),
            *([f"{_fmt(a.get('truncated_fraction', 0.0) * 100, 1)} %"] if truncated else []),
            *([_fmt(a.get("decode_tokens_per_s"), 0), _fmt(a.get("latency_ms_per_example"), 1),
               _human(a.get("kv_cache_bytes_per_example"), "B"), _fmt(a.get("len_ratio"), 2),
               _fmt(a.get("repetition_rate"), 3)] if decoding else [_fmt(a.get("latency_ms_per_example"), 2)]),
        ])
    return head, rows


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _samples(results: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, str]]]]:
    seen, out = set(), []
    for r in sorted(results, key=lambda r: r["seed"]):
        if r["entry"] in seen or not r.get("samples"):
            continue
        seen.add(r["entry"])
        out.append((r["entry"], r["samples"][:3]))
    return out


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
    scales: list[float] | None = None,
) -> None:
    agg = aggregate(results)
    tokens_per_example = shape.src_len + shape.tgt_len + 2
    scales = scales or sorted({float(r.get("scale", 1.0)) for r in results})
    top = max(scales)
    top_results = [r for r in results if float(r.get("scale", 1.0)) == top]
    top_agg = [a for a in agg if a.get("scale", 1.0) == top]
    plots = make_plots(top_results, top_agg, task_kind, tokens_per_example)
    for name, data in plots.items():
        (out / f"{name}.png").write_bytes(data)
    verdict_lines = verdict(top_agg, task_kind, top_results)
    if len(scales) > 1:
        verdict_lines = [f"At the largest budget (scale {top:g}): {verdict_lines[0]}", *verdict_lines[1:]]
    doc = {
        "name": cfg.name,
        "task": cfg.data,
        "task_kind": task_kind,
        "budget": to_dict(cfg.budget),
        "typical_example_tokens": {"src": shape.src_len, "tgt": shape.tgt_len},
        "sizing": [{k: (to_dict(v) if k == "model" else v) for k, v in s.items()} for s in sizing],
        "seeds": cfg.seeds,
        "scales": scales,
        "tuning": tuning or [],
        "wall_time_s": wall_time_s,
        "verdict": verdict_lines,
        "entries": agg,
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow({k: r.get(k) for k in CSV_FIELDS})

    head, rows = _main_table(agg, task_kind, results)
    task = cfg.data.get("task", "?")
    md = [f"# archlab compare: {cfg.name}", "",
          f"Task **{task}** ({task_kind}); budget matched on **{cfg.budget.match}** "
          f"(typical example {shape.src_len:.1f} + {shape.tgt_len:.1f} tokens); "
          f"{_seeds_text(cfg)}; {cfg.train.steps} training steps of "
          f"{cfg.train.tokens_per_batch} padded tokens{_scales_text(cfg, scales)}; "
          f"{_lr_text(cfg, tuning)}; decoding with beam {cfg.decode.num_beams}; "
          f"total wall time {wall_time_s / 60:.1f} min.", "",
          "## Verdict", "", *[f"- {v}" for v in verdict_lines], "",
          "## Results (mean ± sd over seeds)", "", _md_table(head, rows), "",
          "Params: all parameters (embeddings included). FLOPs/ex: forward FLOPs of a typical example "
          "(training is 3x). KV/ex: K/V cache bytes per example while decoding (fp32, at the beam "
          "size), cross-attention included. len ratio: output words / reference words; "
          "repeat: share of word 3-grams that repeat an earlier one in the same output (looping).", "",
          "## Sizing rule", "",
          f"All entries share d_model and the block; depth is chosen per architecture to match "
          f"the {cfg.budget.match} target, then d_ff adjusted. ", "",
          _md_table(["Entry", "Rule", "Params", "FLOPs/ex", "vs target"],
                    [[s["entry"], s["rule"], _human(s["params"]), _human(s["flops_per_example"]),
                      f"{s['deviation']:+.1%}"] for s in sizing]), "",
          *_tuning_md(tuning or []),
          "## Plots", "", *[f"![{n}]({n}.png)" for n in plots], ""]
    samples = _samples(results)
    if samples:
        md += ["## Sample outputs (seed with the lowest number)", ""]
        for entry, ss in samples:
            md.append(f"**{entry}**\n")
            for s in ss:
                md.append(f"- source: {s['source']}\n  - reference: {s['reference']}\n  - output: {s['output']}")
            md.append("")
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    (out / "report.html").write_text(_html(cfg, md, head, rows, plots, verdict_lines, samples, sizing),
                                     encoding="utf-8")


def _seeds_text(cfg: Any) -> str:
    b = cfg.budget
    if b.seeds_at_largest and len(b.scales) > 1:
        return f"{len(cfg.seeds)} seed(s) per entry, {len(b.seeds_at_largest)} at the largest budget"
    return f"{len(cfg.seeds)} seed(s) per entry"


def _scales_text(cfg: Any, scales: list[float]) -> str:
    if len(scales) < 2:
        return ""
    what = "model size (sizing target)" if cfg.budget.scale_model else "training steps"
    return f", at budget scales {', '.join(f'{x:g}' for x in scales)} (multiplying {what})"


def _lr_text(cfg: Any, tuning: list[dict[str, Any]] | None) -> str:
    if tuning:
        t = cfg.tune
        return (f"learning rate tuned per entry ({len(tuning)} runs of {t.steps} steps, best "
                f"{'validation loss' if t.metric == 'val_loss' else 'validation task metric'}; their "
                "FLOPs are in tune_flops)")
    return f"one learning rate for all entries ({cfg.train.lr:g}, not tuned)"


def _tuning_md(tuning: list[dict[str, Any]]) -> list[str]:
    if not tuning:
        return []
    rows = [[t["entry"], f"{t['lr']:g}", _fmt(t.get("warmup_steps")), _fmt(t.get("dropout")), str(t["steps"]),
             _fmt(t.get("val_loss"), 3), _fmt(t.get("metric"), 2), _human(t.get("flops")),
             "yes" if t.get("chosen") else ""] for t in tuning]
    return ["## Tuning (short runs per entry and candidate)", "",
            _md_table(["Entry", "lr", "warm-up", "dropout", "steps", "val loss", "metric", "FLOPs", "chosen"], rows),
            ""]


def _html(cfg: Any, md: list[str], head: list[str], rows: list[list[str]], plots: dict[str, bytes],
          verdict_lines: list[str], samples: list[tuple[str, list[dict[str, str]]]],
          sizing: list[dict[str, Any]]) -> str:
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
        sample_html += f"<h3>{e(entry)}</h3><table><tr><th>source</th><th>reference</th><th>output</th></tr>"
        sample_html += "".join(f"<tr><td>{e(s['source'])}</td><td>{e(s['reference'])}</td>"
                               f"<td>{e(s['output'])}</td></tr>" for s in ss) + "</table>"
    intro = md[2]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>archlab compare: {e(cfg.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
figure {{ display: inline-block; margin: 0.5em; }}
img {{ max-width: 100%; }}
.verdict li {{ margin: 0.3em 0; }}
</style></head><body>
<h1>archlab compare: {e(cfg.name)}</h1>
<p>{bold(intro)}</p>
<h2>Verdict</h2><ul class="verdict">{''.join(f'<li>{bold(v)}</li>' for v in verdict_lines)}</ul>
<h2>Results (mean ± sd over seeds)</h2>{table(head, rows)}
<p>Params: all parameters. FLOPs/ex: forward FLOPs of a typical example (training is 3x). KV/ex: K/V
cache bytes per example while decoding, cross-attention included. len ratio: output/reference
length; repeat: share of word 3-grams that repeat an earlier one in the same output (looping).</p>
<h2>Sizing rule</h2>{table(["Entry", "Rule", "Params", "FLOPs/ex", "vs target"],
    [[s["entry"], s["rule"], _human(s["params"]), _human(s["flops_per_example"]), f"{s['deviation']:+.1%}"] for s in sizing])}
<h2>Plots</h2>{imgs}
<h2>Sample outputs</h2>{sample_html or '<p>(none for this task)</p>'}
</body></html>
"""
