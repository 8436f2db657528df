"""The report's plots, as PNG bytes by name (matplotlib, Agg backend)."""

from __future__ import annotations

import io
import math
import statistics
from typing import Any

from archlab.compare import stats as S
from archlab.compare.report.aggregate import (
    _moe_layers,
    _num,
    decode_state_bytes,
    eval_lengths,
    normalize,
    primary_metric,
    row_tokens_per_example,
)
from archlab.compare.report.fmt import _scale


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
               r["train_flops_per_example"] / max(row_tokens_per_example(r, tokens_per_example) or 1.0, 1e-9))
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
        label = task_kind in ("label", "pairs", "tags")  # classification / retrieval / tagging: batched time
        fig, axes = plt.subplots(1, 1 if label else 2, figsize=(4.5 if label else 9, 3.6), squeeze=False)
        axes = axes[0]
        names = [a["entry"] for a in lat]
        axes[0].bar(names, [a["latency_ms_per_example"] for a in lat],
                    yerr=[a.get("latency_ms_per_example_std", 0) for a in lat],
                    color=[color[n] for n in names])
        if label:
            axes[0].set_ylabel("ms per query (batched)" if task_kind == "pairs" else "ms per example (batched)")
            axes[0].set_title({"label": "Classification time", "tags": "Tagging time"}.get(
                task_kind, "Search time (pool pre-embedded)"))
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
    if task_kind in ("pair", "probe") and models and not (task_kind == "probe" and len(eval_lengths(rows)) > 1):
        # (a probe tested at several lengths has this next to its accuracy per length instead:
        # archlab.compare.report.probe.length_plot)
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
