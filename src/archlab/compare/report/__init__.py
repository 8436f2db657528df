"""The compare report: results.json / results.csv (one row per entry, seed and budget scale),
report.md and a self-contained report.html (tables, plots as inline PNG, sample outputs,
verdict), both rendered from one view model.

Modules, in the order :func:`write_report` uses them:

- :mod:`.aggregate`: run rows normalized and aggregated per entry and scale (mean ± sd over seeds);
- :mod:`.analysis`: paired significance tests, winners per scale, power-law fits, loss spikes;
- :mod:`.verdict`: the verdict lines;
- :mod:`.plots`: the PNG plots;
- :mod:`.results`: results.json and results.csv;
- :mod:`.view` (with :mod:`.tables`, :mod:`.fmt`): the view model of report.md / report.html;
- :mod:`.render`: the two Jinja2 templates (``archlab/compare/templates``);
- :mod:`.probe`: the probe tasks' view (accuracy per test length, which entries solve the task
  at which lengths, the extrapolation and width plots);
- :mod:`.suite`: a suite's combined report over its members' results.json.

Every run row may carry (older results lack them; the report then leaves those parts out):
``scale`` (budget multiplier, 1.0), ``train_flops`` / ``tune_flops`` (total FLOPs of the run
and of the entry's tuning), ``tuned`` (chosen hyper-parameters), ``curve`` (validation rows
``{step, tokens, loss, ...}``), ``train_curve`` (``{step, tokens, loss}``), ``outputs_path``
(JSONL of the scored test examples, relative to the compare directory: pair tasks
``{source, reference, hypothesis}``, label tasks ``{label, prediction}``), ``ablation``
(source-ablation scores, :func:`archlab.evaluate.ablation.source_ablation`),
``examples_truncated`` and ``truncated_fraction``.

Significance: at each budget scale, every entry is compared with the best entry (best mean
of the primary metric) by a paired bootstrap over the test examples, seed paired with seed by
seed id (sacrebleu's own test for BLEU / chrF; per-example scores for accuracy and ROUGE-L,
:mod:`archlab.compare.stats`); the largest p-value over the seed pairings is reported, and a
winner is called only when it is below 0.05 and, with several seeds, the gap also exceeds
the seed-to-seed spread and holds in every seed both entries ran
(:func:`archlab.compare.stats.pick_winner`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from archlab.compare.report.aggregate import (
    CSV_FIELDS,
    PRIMARY,
    SUMMARY_PRIMARY,
    aggregate,
    decode_state_bytes,
    eval_lengths,
    expert_health,
    load_outputs,
    normalize,
    primary_metric,
    quality_columns,
    typical_tokens_per_example,
)
from archlab.compare.report.analysis import N_BOOTSTRAP, power_law_fits, significance, spikes, winners
from archlab.compare.report.plots import make_plots, state_plots
from archlab.compare.report.probe import (
    SOLVED,
    probe_plots,
    probe_table,
    solved,
    solved_line,
    train_span,
    width_plots,
)
from archlab.compare.report.render import render_html, render_markdown
from archlab.compare.report.results import results_doc, write_results
from archlab.compare.report.tables import _main_table
from archlab.compare.report.verdict import ABLATION_KEEP, ABLATION_MIN_SCORE, LATENCY_TIE, verdict
from archlab.compare.report.view import SIGNIFICANCE_NOTE, ReportView, Section, Table, build_view

__all__ = [
    "ABLATION_KEEP", "ABLATION_MIN_SCORE", "CSV_FIELDS", "LATENCY_TIE", "N_BOOTSTRAP", "PRIMARY",
    "SIGNIFICANCE_NOTE", "SUMMARY_PRIMARY", "ReportView", "_main_table", "aggregate", "build_view",
    "decode_state_bytes", "expert_health", "load_outputs", "make_plots", "normalize", "power_law_fits",
    "primary_metric", "quality_columns", "render_html", "render_markdown", "significance", "spikes",
    "state_plots", "typical_tokens_per_example", "verdict", "winners", "write_report",
]


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
    tokens_per_example = typical_tokens_per_example(shape)
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
    key, label, _ = primary_metric(rows, task_kind)
    plots.update(width_plots(agg, key, label))  # entries that vary d_model / d_state (budget groups)
    data = dict(getattr(cfg, "data", {}) or {})
    probe = None
    if task_kind == "probe":
        plots.update(probe_plots(agg, sizing, data))
        probe = {"solved_threshold": SOLVED, "train_lengths": train_span(data), "eval_lengths": eval_lengths(agg),
                 "solved": solved(agg, data)}
    for name, data in plots.items():
        (out / f"{name}.png").write_bytes(data)
    tune_metric = getattr(getattr(cfg, "tune", None), "metric", None) or "val_loss"
    verdict_lines = verdict(agg, task_kind, rows, spike_list=spike_list, tuning=tuning, tune_metric=tune_metric)
    if probe is not None:  # which entries solve the task at which lengths, after the quality line
        at = (1 if len(ws) == 1 else len(ws) + 1) if ws else 0  # (a sweep: a line per budget, then the crossing)
        verdict_lines.insert(at, solved_line(probe["solved"], bool(probe["eval_lengths"])))
    n_budgets = len({a["scale"] for a in agg})
    if 1 < n_budgets < 4:  # (a saturating power law has 3 free parameters)
        verdict_lines.append(f"Scaling fits: a saturating power law per entry needs at least 4 budgets; this "
                             f"run has {n_budgets}, so none is fitted (add budget.scales).")
    if getattr(cfg, "note", None):
        verdict_lines.append(f"Note: {cfg.note}")
    scale_list = sorted({float(s) for s in scales} if scales else {a["scale"] for a in agg})
    doc = results_doc(cfg, results, agg=agg, sizing=sizing, shape=shape, task_kind=task_kind,
                      wall_time_s=wall_time_s, scales=scale_list, verdict_lines=verdict_lines, key=key,
                      winners=ws, fits=fits, spike_list=spike_list, tuning=tuning)
    if probe is not None:
        doc["probe"] = probe
    write_results(out, doc, rows)
    view = build_view(cfg, rows=rows, agg=agg, task_kind=task_kind, shape=shape, sizing=sizing,
                      verdict_lines=verdict_lines, plots=plots, scales=scale_list, wall_time_s=wall_time_s,
                      n_bootstrap=n_bootstrap, fits=fits, tuning=tuning, spike_list=spike_list, key=key, label=label)
    if probe is not None:
        view.sections.insert(0, probe_section(agg, probe))
    (out / "report.md").write_text(render_markdown(view), encoding="utf-8")
    (out / "report.html").write_text(render_html(view), encoding="utf-8")


def probe_section(agg: list[dict[str, Any]], probe: dict[str, Any]) -> Section:
    """The probe view's table (token accuracy and exact match overall and per test length)."""
    span = probe.get("train_lengths")
    trained = ("" if not span else f"; trained at {span[0]}" if span[0] == span[1]
               else f"; trained on lengths {span[0]}-{span[1]}")
    lengths = probe.get("eval_lengths") or []
    return Section(f"Probe accuracy (per answer token and per example{', per test length' if lengths else ''})",
                   table=Table(*probe_table(agg)),
                   notes=[f"token_acc: answer tokens right over all scored answer tokens; exact_match: examples "
                          f"with every scored token right; @N: at test length N{trained}. Solved: token_acc >= "
                          f"{probe['solved_threshold']:g} (mean over seeds)."])
