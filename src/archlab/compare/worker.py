"""One ``archlab compare`` job (entry x seed) in its own process: optional pretraining,
training, then decoding and scoring the held-out test examples. Writes ``result.json``.

    python -m archlab.compare.worker JOB.json
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from archlab.errors import ArchlabError


def _has_checkpoint(run_dir: Path) -> bool:
    ck = run_dir / "checkpoints"
    return ck.is_dir() and any(p.name.startswith("step-") for p in ck.iterdir())


def _train(run: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume, or skip if finished) one run; returns its timing summary."""
    from archlab.train.config import run_config_from_dict
    from archlab.train.run import train_run

    cfg = run_config_from_dict(run, where=f"job {run['name']}")
    done = cfg.run_dir / "summary.json"
    if done.exists():
        return json.loads(done.read_text())
    res = train_run(cfg, resume=_has_checkpoint(cfg.run_dir), raw_model_keys=set(run["model"]),
                    progress=None)
    summary = {"steps": res.step, "stopped": res.stopped, "train_time_s": res.train_time_s,
               "tokens": res.tokens_seen, "last_eval": res.last_eval}
    done.write_text(json.dumps(summary))
    return summary


def _eval_curve(run_dir: Path) -> list[dict[str, Any]]:
    """Validation metrics per evaluation, with the training tokens seen by then (eval rows
    follow the training row of the same step in metrics.jsonl)."""
    rows = []
    tokens = 0
    p = run_dir / "metrics.jsonl"
    if p.exists():
        for line in p.read_text().splitlines():
            r = json.loads(line)
            if "eval" in r:
                rows.append({"step": r["step"], "tokens": r.get("tokens", tokens), **r["eval"]})
            elif "tokens" in r:
                tokens = r["tokens"]
    return rows


def kv_cache_bytes(cfg: Any, src_len: float, tgt_len: float, beams: int, bytes_per: int = 4) -> float:
    """Bytes of K/V cached per example while decoding, cross-attention included.

    Decoder-only / prefix-LM models keep K/V of the whole prompt (source) and the output in
    every layer; an encoder-decoder keeps the output's self-attention K/V and the encoder's
    cross-attention K/V in every decoder layer (computed once, Vaswani et al. 2017)."""
    per_tok_layer = 2 * cfg.kv_heads * cfg.dim_head * bytes_per
    if cfg.arch == "encoder-decoder":
        own = cfg.decoder_layers * per_tok_layer * (tgt_len + 1) * beams
        cross = cfg.decoder_layers * per_tok_layer * (src_len + 1) * beams
        return own + cross
    return cfg.decoder_layers * per_tok_layer * (src_len + 2 + tgt_len + 1) * beams


def evaluate_job(job: dict[str, Any]) -> dict[str, Any]:
    """Decode and score the test split with the run's best (else final) model."""
    from archlab.config import from_dict
    from archlab.data import DataConfig, load_dataset
    from archlab.evaluate.runner import DecodeOptions, score_task
    from archlab.run import load_run

    run_dir = Path(job["run_dir"])
    loaded = load_run(run_dir)
    ds = load_dataset(from_dict(DataConfig, job["run"]["data"], prefix="data"))
    opts = DecodeOptions(**job["decode"])
    test = opts.test_subset(ds.test)
    if not test:
        raise ArchlabError(f"data.task={ds.name}: the test split is empty")
    scores = score_task(loaded.model, loaded.tokenizer, test, ds.kind, opts, objective=job["objective"])
    scores.pop("_outputs", None)
    scores["test_examples"] = scores.pop("examples")
    scores.setdefault("latency_ms_per_example", math.nan)
    return scores


def run(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    run_dir = Path(job["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    err = run_dir / "error.txt"
    if err.exists():
        err.unlink()
    torch.set_num_threads(job["run"]["train"].get("threads") or torch.get_num_threads())
    t0 = time.perf_counter()
    pre = _train(job["pretrain"]) if job.get("pretrain") else None
    main = _train(job["run"])
    scores = evaluate_job(job)
    sizing = job["sizing"]
    from archlab.config import ModelConfig, from_dict

    mcfg = from_dict(ModelConfig, sizing["model"])
    beams = job["decode"]["num_beams"]
    shape = scores.pop("_shape")
    result = {
        "entry": job["entry"],
        "arch": job["arch"],
        "objective": job["objective"],
        "pretrain_objective": job["pretrain_objective"],
        "seed": job["seed"],
        "params": sizing["params"],
        "flops_per_example": sizing["flops_per_example"],
        # a distilled entry also pays its teacher's forward pass on every training example
        "train_flops_per_example": 3 * sizing["flops_per_example"] + job.get("teacher_flops_per_example", 0),
        "sizing_rule": sizing["rule"],
        "budget_deviation": sizing["deviation"],
        "layers": (f"{mcfg.encoder_layers}+{mcfg.decoder_layers}" if mcfg.arch == "encoder-decoder"
                   else str(mcfg.n_layers)),
        "d_model": mcfg.d_model,
        "d_ff": mcfg.d_ff,
        "train_steps": main["steps"],
        "train_tokens": main["tokens"] + (pre["tokens"] if pre else 0),
        "train_time_s": main["train_time_s"] + (pre["train_time_s"] if pre else 0.0),
        "pretrain_time_s": pre["train_time_s"] if pre else 0.0,
        "stopped": main["stopped"],
        "val_loss": main["last_eval"].get("loss"),
        "peak_memory_bytes": _peak_rss(),
        "kv_cache_bytes_per_example": kv_cache_bytes(mcfg, shape["src_len"], shape["tgt_len"], beams),
        "num_beams": beams,
        "curve": _eval_curve(run_dir),
        "job_wall_time_s": time.perf_counter() - t0,
        **scores,
    }
    tmp = run_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, run_dir / "result.json")


def _peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def main() -> int:
    from archlab.runtime import tune_malloc

    if len(sys.argv) != 2:
        print("usage: python -m archlab.compare.worker JOB.json", file=sys.stderr)
        return 2
    tune_malloc()
    job_path = sys.argv[1]
    try:
        run(job_path)
    except ArchlabError as e:
        job = json.loads(Path(job_path).read_text())
        msg = str(e).splitlines()[0]
        (Path(job["run_dir"]) / "error.txt").write_text(msg + "\n")
        print(f"archlab compare: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
