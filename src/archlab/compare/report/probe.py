"""The report's probe view (probe tasks, :mod:`archlab.data.probes`): token accuracy and exact
match per test length, which entries solve the task at which lengths, accuracy vs test length
(the extrapolation plot) next to the decoding state vs length, and accuracy vs model width and
Mamba state size where the entries vary them.

Everything here is derived from the aggregated rows (mean and sd over seeds of ``token_acc``,
``exact_match`` and the per-length ``token_acc@N`` / ``exact_match@N``), the sizing records
(the models, for the decoding state) and the task's data section (its training lengths), so
that a suite's combined report draws the same tables and plots from its members' results.json.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from archlab.compare.report.aggregate import _num, eval_lengths, length_keys
from archlab.compare.report.fmt import _fmt, _pm, _scale

# token accuracy at which an entry counts as solving a probe at a length (mean over seeds): the
# papers call a task solved near 100 % (Zoology's MQAR plots, the Mamba paper's Table 1-2)
SOLVED = 0.99


def train_span(data: Mapping[str, Any]) -> tuple[int, int] | None:
    """(shortest, longest) training length of the probe task in ``data`` (a data section), in
    the unit of its test groups (:func:`archlab.data.probes.training_lengths`); None for other
    tasks or options the probe refuses."""
    from archlab.data.probes import PROBES, training_lengths
    from archlab.errors import ArchlabError

    task = data.get("task")
    if task not in PROBES:
        return None
    try:
        return training_lengths(str(task), dict(data.get("options") or {}))
    except ArchlabError:
        return None


def _top(agg: list[dict[str, Any]]) -> list[dict[str, Any]]:
    top = max((a["scale"] for a in agg), default=1.0)
    return [a for a in agg if a["scale"] == top]


def solved(agg: list[dict[str, Any]], data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per entry (at the largest budget): its mean token accuracy at each test length
    (``token_acc@N``; a task without test lengths: ``token_acc`` at its training length) and
    the lengths where that is at least :data:`SOLVED`."""
    lengths = eval_lengths(agg)
    span = train_span(data)
    out = []
    for a in _top(agg):
        if lengths:
            acc = {n: a.get(f"token_acc@{n}") for n in lengths}
        else:
            acc = {span[1] if span else 0: a.get("token_acc")}
        acc = {n: float(v) for n, v in acc.items() if _num(v)}
        out.append({"entry": a["entry"], "token_acc": acc, "solved_at": [n for n, v in acc.items() if v >= SOLVED]})
    return out


def solved_line(rows: list[dict[str, Any]], lengths_tested: bool, prefix: str = "") -> str:
    """The verdict's line: which entries solve the task (token accuracy >= :data:`SOLVED`, mean
    over seeds) at which lengths, and the best accuracy of those that do not."""
    head = f"{prefix}Solved (token accuracy >= {SOLVED:g}, mean over seeds)"
    yes = [r for r in rows if r["solved_at"]]
    no = [r for r in rows if not r["solved_at"]]

    def score(r: dict[str, Any]) -> str:  # an entry's best token accuracy (and where)
        if not r["token_acc"]:
            return "no score"
        n, v = max(r["token_acc"].items(), key=lambda kv: kv[1])
        return f"{v:.3f}" + (f" at {n}" if lengths_tested else "")

    def best(r: dict[str, Any]) -> str:
        return f"{r['entry']} (best {score(r)})"

    def bests(rs: list[dict[str, Any]]) -> str:  # (no entry solves it: the best score of each)
        return ", ".join(f"{r['entry']} {score(r)}" for r in rs)

    if lengths_tested:
        every = sorted({n for r in rows for n in r["token_acc"]})
        parts = [f"**{r['entry']}** at {', '.join(str(n) for n in r['solved_at'])}" for r in yes]
        line = f"{head}, test lengths {', '.join(str(n) for n in every)}: "
        if parts:
            line += "; ".join(parts) + ("; not at any test length: " + ", ".join(best(r) for r in no) if no else "")
        else:
            line += "no entry at any test length; best per entry: " + bests(no)
        return line + "."
    at = next((n for r in rows for n in r["token_acc"]), None)
    line = f"{head}" + (f" at length {at}" if at else "") + ": "
    if yes:
        line += ", ".join(f"**{r['entry']}** ({r['token_acc'][r['solved_at'][0]]:.3f})" for r in yes)
        line += "; not solved: " + ", ".join(best(r) for r in no) if no else ""
    else:
        line += "no entry; best per entry: " + bests(no)
    return line + "."


def probe_table(agg: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Per entry: width, Mamba state size, token accuracy and exact match overall and per test
    length (``token_acc@N`` / ``exact_match@N`` columns, named as in results.json)."""
    multi = len({a["scale"] for a in agg}) > 1
    grouped = any(a.get("group") is not None for a in agg)
    per = length_keys(agg)
    lengths = eval_lengths(agg)
    cols = [k for n in lengths for k in (f"token_acc@{n}", f"exact_match@{n}") if k in per]
    head = ["Entry", *(["Scale"] if multi else []), *(["Group"] if grouped else []), "d_model", "d_state",
            "token_acc", "exact_match", *cols]
    rows = [[a["entry"], *([_scale(a["scale"])] if multi else []), *([_fmt(a.get("group"))] if grouped else []),
             _fmt(a.get("d_model")), _fmt(a.get("d_state")), _pm(a, "token_acc", 3), _pm(a, "exact_match", 3),
             *(_pm(a, k, 3) for k in cols)] for a in agg]
    return head, rows


def state_bytes_at(model: Any, length: float) -> float:
    """Decoding state bytes per example (fp32, one beam) after reading an input of ``length``
    tokens and writing the first answer token: attention K/V (cross-attention included) grows
    with it, a Mamba layer's state does not (:func:`archlab.compare.sizing.decode_memory_curve`)."""
    from archlab.compare.sizing import decode_memory_curve

    return float(decode_memory_curve(model, [1], src_len=float(length))[0]["total"])


def sized_models(sizing: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Entry -> its sized ModelConfig (sizing records carry it as a config or a dict)."""
    from archlab.config import ModelConfig, from_dict

    out = {}
    for s in sizing:
        m = s.get("model")
        if isinstance(m, dict):
            m = from_dict(ModelConfig, m)
        if m is not None and s.get("entry") is not None and m.decoder_layers:
            out.setdefault(str(s["entry"]), m)
    return out


def length_plot(acc: Mapping[str, Mapping[int, tuple[float, float]]], memory: Mapping[str, Sequence[tuple[float, float]]],
                span: tuple[int, int] | None, title: str, xlabel: str = "test length") -> bytes:
    """Accuracy vs length per entry (``acc``: entry -> {length: (mean, sd)}; the training lengths
    ``span`` shaded, :data:`SOLVED` dashed) beside the decoding state vs length (``memory``:
    entry -> [(length, bytes)])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from archlab.compare.report.plots import _png

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    entries = list(dict.fromkeys([*acc, *memory]))
    color = {e: colors[i % len(colors)] for i, e in enumerate(entries)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for e, pts in acc.items():
        xs = sorted(pts)
        ax.errorbar(xs, [pts[n][0] for n in xs], yerr=[pts[n][1] for n in xs], fmt="o-", ms=4, capsize=3,
                    color=color[e], label=e)
    if span is not None:
        if span[0] < span[1]:
            ax.axvspan(span[0], span[1], color="grey", alpha=0.15, label=f"trained on {span[0]}-{span[1]}")
        else:
            ax.axvline(span[0], color="grey", ls=":", lw=1.5, label=f"trained at {span[0]}")
    ax.axhline(SOLVED, color="black", ls="--", lw=0.8, label=f"solved ({SOLVED:g})")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("token accuracy (mean ± sd over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    for e, pts in memory.items():
        pts = sorted(pts)
        ax.plot([x for x, _ in pts], [b / 1024 for _, b in pts], "o-", ms=3, color=color[e], label=e)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(f"{xlabel} (input tokens read)")
    ax.set_ylabel("KiB per example (fp32, one beam)")
    ax.set_title("Decoding state: KV cache grows, Mamba state does not")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = _png(fig)
    plt.close(fig)
    return out


def _memory_grid(lo: float, hi: float, tested: Sequence[float]) -> list[float]:
    """The tested lengths and the powers of two between them (the memory curve's points)."""
    pts = {float(x) for x in tested}
    k = 1
    while k <= hi:
        if k >= lo:
            pts.add(float(k))
        k *= 2
    return sorted(pts)


def probe_plots(agg: list[dict[str, Any]], sizing: Sequence[Mapping[str, Any]],
                data: Mapping[str, Any]) -> dict[str, bytes]:
    """``accuracy_vs_length``: a probe tested at several lengths, accuracy per test length beside
    the decoding state over the same lengths (largest budget)."""
    lengths = eval_lengths(agg)
    if len(lengths) < 2:
        return {}
    acc = {a["entry"]: {n: (float(a[f"token_acc@{n}"]), float(a.get(f"token_acc@{n}_std") or 0.0))
                        for n in lengths if _num(a.get(f"token_acc@{n}"))} for a in _top(agg)}
    models = sized_models(sizing)
    grid = _memory_grid(min(lengths), max(lengths), lengths)
    memory = {e: [(n, state_bytes_at(models[e], n)) for n in grid] for e in acc if e in models}
    task = data.get("task", "?")
    return {"accuracy_vs_length": length_plot(acc, memory, train_span(data), f"{task}: accuracy vs test length")}


def width_plots(agg: list[dict[str, Any]], key: str, label: str) -> dict[str, bytes]:
    """``accuracy_vs_width``: the primary metric vs ``d_model`` (one line per family and state
    size) and vs Mamba ``d_state`` (one line per family and width), for the families whose
    entries vary them (largest budget); {} when none does."""
    top = [a for a in _top(agg) if a.get("family") and _num(a.get(key)) and _num(a.get("d_model"))]
    panels = []
    for x, other in (("d_model", "d_state"), ("d_state", "d_model")):
        lines: dict[str, list[dict[str, Any]]] = {}
        for a in top:
            if not _num(a.get(x)):
                continue
            name = f"{a['family']}" + (f", {other} {a[other]}" if a.get(other) is not None else "")
            lines.setdefault(name, []).append(a)
        lines = {n: ls for n, ls in lines.items() if len({a[x] for a in ls}) > 1}
        if lines:
            panels.append((x, lines))
    if not panels:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from archlab.compare.report.plots import _png

    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4), squeeze=False)
    for ax, (x, lines) in zip(axes[0], panels):
        for name, ls in lines.items():
            ls = sorted(ls, key=lambda a: a[x])
            ax.errorbar([a[x] for a in ls], [a[key] for a in ls], yerr=[a.get(key + "_std", 0.0) for a in ls],
                        fmt="o-", capsize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("model width d_model" if x == "d_model" else "Mamba state size d_state")
        ax.set_ylabel(f"{label} (mean ± sd over seeds)")
        ax.set_title(f"{label} vs {x}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = _png(fig)
    plt.close(fig)
    return {"accuracy_vs_width": out}
