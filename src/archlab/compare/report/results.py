"""results.json (the whole comparison: configuration, sizing, verdict, winners, fits, tuning,
aggregated entries and every run row) and results.csv (one row per entry, seed and scale)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from archlab.compare import stats as S
from archlab.compare.report.aggregate import CSV_FIELDS, length_keys
from archlab.config import to_dict


def results_doc(cfg: Any, results: list[dict[str, Any]], *, agg: list[dict[str, Any]], sizing: list[dict[str, Any]],
                shape: Any, task_kind: str, wall_time_s: float, scales: Sequence[float], verdict_lines: list[str],
                key: str, winners: list[S.Winner], fits: dict[str, Any], spike_list: list[dict[str, Any]],
                tuning: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The content of results.json (``results``: the run rows as given)."""
    return {
        "name": cfg.name,
        "task": cfg.data,
        "task_kind": task_kind,
        "budget": to_dict(cfg.budget),
        "typical_example_tokens": {"src": shape.src_len, "tgt": shape.tgt_len},
        "sizing": [{k: (to_dict(v) if k == "model" else v) for k, v in s.items()} for s in sizing],
        "seeds": cfg.seeds,
        "scales": list(scales),
        "wall_time_s": wall_time_s,
        "verdict": verdict_lines,
        "primary_metric": key,
        "winners": [{"scale": w.budget, "winner": w.entry, "leader": w.leader, "runner_up": w.runner_up,
                     "gap": w.gap, "p_value": w.p_value, "reason": w.reason} for w in winners],
        "crossings": [c.__dict__ for c in S.crossings(winners)],
        "fits": fits,
        "spikes": spike_list,
        "tuning": list(tuning or []),
        "entries": agg,
        "results": results,
    }


def write_results(out: Path, doc: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """results.json from ``doc``; results.csv from the normalized run ``rows`` (dict and list
    cells as JSON)."""
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=_json_default))
    fields = [*CSV_FIELDS, *length_keys(rows)]  # probe tasks: token_acc@N ... per test length
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(r[k]) if isinstance(r.get(k), (dict, list)) else r.get(k)) for k in fields})


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")
