"""A suite's combined report (``CompareConfig.suite``): results.json, report.md and report.html
at the suite's output directory, built from its members' results.json (each member a compare of
its own in ``<out_dir>/<name>/``, with its full report there).

It shows, per task, the quality verdict and (probe tasks) which entries solve it at which
lengths; one results table over every (task, entry); each task's own table (a probe's accuracy
per test length); each task's probe plots; and, for a probe task run at several sequence
lengths by separate members (MQAR at two ``seq_len``), accuracy vs that length beside the
decoding state at it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from archlab.compare import stats as S
from archlab.compare.report.aggregate import PRIMARY, _num
from archlab.compare.report.analysis import N_BOOTSTRAP
from archlab.compare.report.fmt import _fmt, _p, _pm
from archlab.compare.report.probe import (
    length_plot,
    probe_table,
    sized_models,
    solved_line,
    state_bytes_at,
    train_span,
)
from archlab.compare.report.render import render_html, render_markdown
from archlab.compare.report.tables import _main_table
from archlab.compare.report.verdict import FINE_METRICS, _quality_line
from archlab.compare.report.view import SIGNIFICANCE_NOTE, Plot, ReportView, Section, Table

# member plots shown in the combined report (those a member has), in this order
MEMBER_PLOTS = ("accuracy_vs_length", "accuracy_vs_width", "decode_memory")


def _solved_rows(probe: dict[str, Any]) -> list[dict[str, Any]]:
    """results.json's solved rows with their lengths as numbers again (JSON keys are strings)."""
    return [{**r, "token_acc": {int(n): v for n, v in r["token_acc"].items()}} for r in probe["solved"]]


def _member_verdict(name: str, doc: dict[str, Any]) -> list[str]:
    """A member's quality line (from its winners) and, for a probe, its solved line."""
    kind = doc["task_kind"]
    key, label, _ = PRIMARY.get(kind, (doc.get("primary_metric"), doc.get("primary_metric"), True))
    key = doc.get("primary_metric") or key
    task = doc["task"].get("task", "?")
    prefix = f"{name} ({task}): "
    lines = []
    ws = doc.get("winners") or []
    if ws:
        w = ws[-1]  # the largest budget
        by = {a["entry"]: a for a in doc["entries"] if a["scale"] == w["scale"]}
        win = S.Winner(budget=w["scale"], entry=w["winner"], leader=w["leader"], runner_up=w["runner_up"],
                       gap=w["gap"], p_value=w["p_value"], reason=w["reason"])
        lines.append(_quality_line(win, by, key, label, prefix, short=True))
    if doc.get("probe"):
        lines.append(solved_line(_solved_rows(doc["probe"]), bool(doc["probe"].get("eval_lengths")), prefix))
    return lines


def _results_table(docs: list[tuple[str, Path, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    probes = any(doc.get("probe") for _, _, doc in docs)
    head = ["Task", "Entry", "d_model", "d_state", "Metric", "Score", *(["exact_match", "solved at"] if probes else []),
            "Δ vs best", "p vs best"]
    rows = []
    for name, _, doc in docs:
        key = doc.get("primary_metric")
        label = PRIMARY.get(doc["task_kind"], (key, key, True))[1]
        d = 3 if key in FINE_METRICS else 2
        top = max((a["scale"] for a in doc["entries"]), default=1.0)
        solved = {r["entry"]: r["solved_at"] for r in (doc.get("probe") or {}).get("solved", [])}
        for a in doc["entries"]:
            if a["scale"] != top:
                continue
            is_best = a.get("best") == a["entry"]
            rows.append([name, a["entry"], _fmt(a.get("d_model")), _fmt(a.get("d_state")), label, _pm(a, key, d),
                         *([_pm(a, "exact_match", 3),
                            ", ".join(str(n) for n in solved.get(a["entry"], [])) or "-"] if probes else []),
                         "best" if is_best else _fmt(a.get("delta"), d), "-" if is_best else _p(a.get("p_value"))])
    return head, rows


def _length_plots(docs: list[tuple[str, Path, dict[str, Any]]]) -> dict[str, bytes]:
    """Per probe task that several single-length members ran at different lengths: token
    accuracy vs the member's sequence length, beside each entry's decoding state there."""
    by_task: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for _, _, doc in docs:
        probe = doc.get("probe")
        span = train_span(doc["task"])
        if not probe or probe.get("eval_lengths") or span is None:
            continue
        by_task.setdefault(str(doc["task"].get("task")), []).append((span[1], doc))
    plots = {}
    for task, pts in by_task.items():
        if len({n for n, _ in pts}) < 2:
            continue
        acc: dict[str, dict[int, tuple[float, float]]] = {}
        memory: dict[str, list[tuple[float, float]]] = {}
        for n, doc in sorted(pts, key=lambda p: p[0]):
            top = max((a["scale"] for a in doc["entries"]), default=1.0)
            models = sized_models(doc.get("sizing") or [])
            for a in doc["entries"]:
                if a["scale"] != top or not _num(a.get("token_acc")):
                    continue
                acc.setdefault(a["entry"], {})[n] = (float(a["token_acc"]), float(a.get("token_acc_std") or 0.0))
                if a["entry"] in models:
                    memory.setdefault(a["entry"], []).append((n, state_bytes_at(models[a["entry"]], n)))
        plots[f"accuracy_vs_length_{task}"] = length_plot(
            acc, memory, None, f"{task}: accuracy vs sequence length (each trained and tested at it)",
            xlabel="sequence length")
    return plots


def write_suite_report(out: Path, cfg: Any, members: list[tuple[str, Path]], *, wall_time_s: float) -> None:
    """results.json, report.md and report.html of a suite at ``out``, from each member's
    results.json (``members``: (name, output directory) in suite order); the suite's own plots
    (accuracy vs sequence length across members) as PNG next to them."""
    out = Path(out)
    docs = [(name, Path(d), json.loads((Path(d) / "results.json").read_text())) for name, d in members]
    verdict = [line for name, _, doc in docs for line in _member_verdict(name, doc)]
    if getattr(cfg, "note", None):
        verdict.append(f"Note: {cfg.note}")
    plots = _length_plots(docs)
    for name, data in plots.items():
        (out / f"{name}.png").write_bytes(data)
    shown = [Plot(n, b) for n, b in plots.items()]
    sections = []
    for name, d, doc in docs:
        rel = d.relative_to(out) if d.is_relative_to(out) else d
        for p in MEMBER_PLOTS:
            f = d / f"{p}.png"
            if f.exists():
                shown.append(Plot(f"{rel}/{p}", f.read_bytes()))
        agg = doc["entries"]
        task = doc["task"].get("task", "?")
        if doc.get("probe"):
            table = Table(*probe_table(agg))
            title = f"{name}: {task}, accuracy per answer token and per example"
        else:
            table = Table(*_main_table(agg, doc["task_kind"], doc.get("results") or []))
            title = f"{name}: {task}"
        sections.append(Section(title, paragraphs=[f"Its full report: `{rel}/report.md` (and report.html)."],
                                table=table))
    head, rows = _results_table(docs)
    doc_out = {
        "name": cfg.name,
        "suite": [{"name": name, "dir": str(d.relative_to(out) if d.is_relative_to(out) else d), "task": doc["task"],
                   "task_kind": doc["task_kind"], "primary_metric": doc.get("primary_metric"),
                   "verdict": doc["verdict"], "probe": doc.get("probe"), "winners": doc.get("winners"),
                   "entries": doc["entries"]} for name, d, doc in docs],
        "verdict": verdict,
        "wall_time_s": wall_time_s,
    }
    (out / "results.json").write_text(json.dumps(doc_out, indent=1))
    tasks = ", ".join(f"**{name}** ({doc['task'].get('task', '?')})" for name, _, doc in docs)
    intro = (f"Suite of {len(docs)} tasks: {tasks}; each is a compare of its own with the same entries, seeds "
             f"and budget rule (budget matched on **{cfg.budget.match}** within each task, since the typical "
             f"example differs by task); total wall time {wall_time_s / 60:.1f} min.")
    view = ReportView(
        title=f"archlab compare: {cfg.name} (suite)", intro=intro, verdict=verdict,
        results=Section("Results per task (largest budget, mean ± sd over seeds)", table=Table(head, rows)),
        method_notes=[SIGNIFICANCE_NOTE.format(n=N_BOOTSTRAP).replace("at each budget", "within each task, at each budget")],
        sections=sections, plots=shown)
    (out / "report.md").write_text(render_markdown(view), encoding="utf-8")
    (out / "report.html").write_text(render_html(view), encoding="utf-8")
