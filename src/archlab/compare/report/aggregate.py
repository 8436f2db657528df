"""Run rows to report rows: the optional fields filled in, one row per entry and budget scale
(mean and standard deviation over seeds), the primary metric of a task, the per-example
outputs and expert health a run left on disk."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

# primary quality metric per task kind: (key, label, higher is better)
PRIMARY = {
    "pair": ("bleu", "BLEU", True),
    "label": ("accuracy", "accuracy", True),
    "text": ("ppl", "perplexity", False),
    "pairs": ("mrr", "MRR", True),  # retrieval: mean reciprocal rank over the full test pool
    "tags": ("f1", "entity F1", True),  # NER: conlleval's micro F1 over entities
    "probe": ("token_acc", "token accuracy", True),  # probe tasks: answer tokens right (evaluate.metrics)
}
SUMMARY_PRIMARY = ("rougeL", "ROUGE-L", True)

CSV_FIELDS = [
    "entry", "arch", "objective", "pretrain_objective", "seed", "scale", "group", "family", "layers", "d_model",
    "d_state", "d_ff", "params", "active_params",
    "flops_per_example", "train_flops_per_example", "budget_deviation", "train_steps", "train_tokens",
    "train_flops", "tune_flops", "tuned", "lr", "train_time_s", "peak_memory_bytes", "val_loss", "bleu", "chrf",
    "rouge1", "rouge2", "rougeL", "accuracy", "macro_f1", "token_acc", "exact_match", "ppl", "bpb", "mrr", "recall_at_1", "recall_at_10",
    "f1", "precision", "recall", "mean_rank", "pool_size", "queries_per_s", "ablation_bleu", "ablation_chrf",
    "ablation_rougeL", "len_ratio", "repetition_rate", "decode_tokens_per_s", "latency_ms_per_example",
    "kv_cache_bytes_per_example", "ssm_state_bytes_per_example", "decode_state_bytes_per_example", "num_beams",
    "examples_truncated", "truncated_fraction", "outputs_path",
]
_GROUP_KEYS = ("entry", "arch", "objective", "pretrain_objective", "group", "family", "layers", "d_model",
               "d_state", "d_ff", "num_beams", "evaluate_only")
# probe tasks tested at several lengths: token_acc@N, exact_match@N per test length N
PER_LENGTH = ("token_acc@", "exact_match@")


def length_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The per-length metric keys (``token_acc@N``, ``exact_match@N``) the rows carry, by metric
    and then length ascending."""
    keys = {k for r in rows for k in r if k.startswith(PER_LENGTH) and not k.endswith("_std")}  # (aggregated sd)
    return sorted(keys, key=lambda k: (PER_LENGTH.index(k.split("@")[0] + "@"), _length(k)))


def eval_lengths(rows: list[dict[str, Any]]) -> list[int]:
    """The test lengths N of the rows' ``token_acc@N`` keys, ascending."""
    return sorted({int(k.split("@", 1)[1]) for r in rows for k in r
                   if k.startswith("token_acc@") and k.split("@", 1)[1].isdigit()})


def _length(key: str) -> int:
    tail = key.split("@", 1)[1]
    return int(tail) if tail.isdigit() else 1 << 62


def typical_tokens_per_example(shape: Any) -> float:
    """Tokens the trainer counts for a typical pair (``<bos> source <sep> target``, or the
    encoder's ``source <eos>`` and the decoder's ``<start> target``: S + T + 2), the
    FLOPs-per-token divisor for rows that do not carry their own ``tokens_per_example`` (the
    compare measures it per entry in its layout: ``objectives.layout.counted_tokens``).
    ``shape``: the compare's typical example (``src_len``, ``tgt_len``)."""
    return shape.src_len + shape.tgt_len + 2


def row_tokens_per_example(r: dict[str, Any], fallback: float | None) -> float | None:
    """A row's own tokens per example (its layout's, as the compare charged it), else ``fallback``."""
    v = r.get("tokens_per_example")
    return float(v) if _num(v) and v > 0 else fallback


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
    tpe = row_tokens_per_example(r, tokens_per_example)
    if out.get("train_flops") is None and tpe and _num(r.get("train_tokens")) \
            and _num(r.get("train_flops_per_example")):
        out["train_flops"] = r["train_tokens"] * r["train_flops_per_example"] / max(tpe, 1e-9)
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
            for k in [*CSV_FIELDS, *length_keys(rows)]:
                if k in agg or k == "seed":
                    continue
                vals = [r.get(k) for r in rows]
                if all(_num(v) for v in vals if v is not None) and any(_num(v) for v in vals):
                    m, s = _mean_std(vals)
                    agg[k] = m
                    agg[k + "_std"] = s
            out.append(agg)
    return out


def quality_columns(task_kind: str, results: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    if task_kind == "pair":
        if results and results[0].get("bleu") is not None:
            return [("bleu", "BLEU", 2), ("chrf", "chrF", 1)]
        return [("rouge1", "ROUGE-1", 2), ("rouge2", "ROUGE-2", 2), ("rougeL", "ROUGE-L", 2)]
    if task_kind == "label":
        return [("accuracy", "accuracy", 3), ("macro_f1", "macro-F1", 3)]
    if task_kind == "pairs":
        return [("mrr", "MRR", 3), ("recall_at_1", "R@1", 3), ("recall_at_10", "R@10", 3)]
    if task_kind == "tags":
        return [("f1", "entity F1", 3), ("precision", "precision", 3), ("recall", "recall", 3),
                ("token_acc", "token acc", 3)]
    if task_kind == "probe":
        return [("token_acc", "token acc", 3), ("exact_match", "exact match", 3)]
    return [("ppl", "ppl", 2), ("bpb", "bits/byte", 3)]


def load_outputs(out_dir: Path | None, row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The scored test examples of one run (``outputs_path``), or None when absent."""
    rel = row.get("outputs_path")
    if not rel or out_dir is None:
        return None
    path = Path(out_dir) / rel
    if not path.exists():
        return None
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]



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

