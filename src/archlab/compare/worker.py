"""One ``archlab compare`` job in its own process: a pretraining run (its cost), a tuning run
(its validation score), or an entry's full run at one seed: training (from its pretraining
job's model, if any), then decoding and scoring the held-out test examples. Writes
``result.json``.

    python -m archlab.compare.worker JOB.json
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import resource
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch

from archlab.errors import ArchlabError


def _has_checkpoint(run_dir: Path) -> bool:
    ck = run_dir / "checkpoints"
    return ck.is_dir() and any(p.name.startswith("step-") for p in ck.iterdir())


def _train(cfg: Any, raw_model_keys: list[str], dataset: Any, evaluate_only: bool = False) -> dict[str, Any]:
    """Train (or resume, or skip if finished) one run; returns its summary. ``evaluate_only``:
    no steps, the starting checkpoint evaluated as it is."""
    from archlab.train.run import train_run

    done = cfg.run_dir / "summary.json"
    if done.exists():
        return json.loads(done.read_text())
    if evaluate_only and (cfg.run_dir / "metrics.jsonl").exists():
        (cfg.run_dir / "metrics.jsonl").unlink()  # an interrupted evaluation: done again
    res = train_run(cfg, resume=_has_checkpoint(cfg.run_dir) and not evaluate_only,
                    raw_model_keys=set(raw_model_keys), progress=None, dataset=dataset,
                    evaluate_only=evaluate_only)
    summary = {"steps": res.step, "stopped": res.stopped, "train_time_s": res.train_time_s,
               "tokens": res.tokens_seen, "examples": res.examples_seen, "last_eval": res.last_eval,
               "peak_memory_bytes": res.peak_memory_bytes, "examples_truncated": res.examples_truncated,
               "peak_memory_kind": "cuda_allocated" if str(cfg.train.device).startswith("cuda")
               or (cfg.train.device == "auto" and torch.cuda.is_available()) else "host_rss"}
    if _rank() == 0:  # (under torchrun, gpus_per_job > 1: rank 0 writes)
        done.write_text(json.dumps(summary))
    return summary


def _die_with_parent() -> None:
    """Die with the process that started this worker (``ARCHLAB_PARENT_PID``, set by
    ``run_job`` for a one-process job): a Ray worker or compare that is killed must not leave
    its job training on, writing into the run directory that the retry or the resumed compare
    trains again. Linux's parent-death signal; elsewhere a no-op."""
    parent = os.environ.get("ARCHLAB_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(1)


def _record_attempt(run_dir: Path) -> None:
    """Append this start of the job's worker to ``attempts.jsonl``: process, host, time and the
    checkpoint step it resumes from (None: from scratch). A job killed and run again (a Ray
    retry, a resumed compare) has one line per start."""
    from archlab.train.checkpoint import list_checkpoints

    ck = list_checkpoints(run_dir / "checkpoints")
    line = {"pid": os.getpid(), "host": socket.gethostname(), "rank": _rank(), "start": time.time(),
            "checkpoint": ck[0][0] if ck else None}
    with open(run_dir / "attempts.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _train_curve(run_dir: Path) -> list[dict[str, Any]]:
    """Logged training losses (metrics.jsonl): step, tokens seen, loss."""
    p = run_dir / "metrics.jsonl"
    rows = []
    if p.exists():
        for line in p.read_text().splitlines():
            r = json.loads(line)
            if "loss" in r and "eval" not in r:
                rows.append({"step": r["step"], "tokens": r.get("tokens"), "loss": r["loss"]})
    return rows


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
    """Bytes of K/V cached per example while decoding, cross-attention included
    (:func:`archlab.model.flops.decode_memory`: only attention layers keep self-attention K/V).

    Decoder-only / prefix-LM models keep K/V of the whole prompt (source) and the output;
    an encoder-decoder keeps the output's self-attention K/V and the encoder's
    cross-attention K/V in every decoder layer (computed once, Vaswani et al. 2017)."""
    from archlab.model.flops import decode_memory

    if cfg.arch == "encoder-decoder":
        m = decode_memory(cfg, tgt_len + 1, src_len=src_len + 1, bytes_per_number=bytes_per)
        return (m.kv + m.cross_kv) * beams
    return decode_memory(cfg, src_len + 2 + tgt_len + 1, bytes_per_number=bytes_per).kv * beams


def ssm_state_bytes(cfg: Any, beams: int, bytes_per: int = 4) -> float:
    """Bytes of the decoder's Mamba layers' decoding state (conv window + SSM state) per
    example at ``beams`` beams: the same at every length."""
    from archlab.model.flops import decode_memory

    return decode_memory(cfg, 0, bytes_per_number=bytes_per).ssm_state * beams


def evaluate_job(job: Any, ds: Any) -> dict[str, Any]:
    """Decode and score the test split with the run's best (else final) model; the scored
    outputs go to ``outputs.jsonl`` in the run directory, one line per test example in order."""
    from archlab.config import to_dict
    from archlab.data.datasets import score_kind
    from archlab.evaluate.runner import DecodeOptions, score_task
    from archlab.run import load_run

    run_dir = Path(job.run_dir)
    loaded = load_run(run_dir)
    tr = job.run.train
    opts = DecodeOptions(**to_dict(job.decode), max_source_len=tr.max_source_len, max_target_len=tr.max_target_len,
                         max_len=tr.max_len)
    test = opts.test_subset(ds.test)
    if not test:
        raise ArchlabError(f"data.task={ds.name}: the test split is empty")
    # probe tasks: answer accuracy (token_acc, exact_match, per length token_acc@N ...)
    scores = score_task(loaded.model, loaded.tokenizer, test, score_kind(ds), opts, objective=job.objective,
                        objective_options=dict(job.run.objective.options), label_names=ds.label_names)
    scores.pop("_outputs", None)
    rows = scores.pop("_outputs_rows", None)
    scores["outputs_path"] = None
    if rows is not None:
        path = run_dir / "outputs.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        scores["outputs_path"] = os.path.relpath(path, job.out_dir)
    scores["ablation"] = _ablation(loaded, test, score_kind(ds), opts, job)
    scores["test_examples"] = scores.pop("examples")
    scores.setdefault("latency_ms_per_example", math.nan)
    return scores


def _ablation(loaded: Any, test: list[Any], kind: str, opts: Any, job: Any) -> dict[str, float]:
    """Source ablation of a pair task (archlab.evaluate.ablation); {} where not available."""
    if kind != "pair":
        return {}
    try:
        from archlab.evaluate.ablation import source_ablation
    except ImportError:
        return {}
    return source_ablation(loaded.model, loaded.tokenizer, test, opts, objective=job.objective, seed=job.seed)


def _train_flops_per_example(job: Any, distilled: bool = True) -> float:
    """3 x forward FLOPs (forward and backward) per example, plus the teacher's forward pass
    of a distilled run (it reads every training example; pretraining has no teacher)."""
    return 3.0 * job.sizing["flops_per_example"] + (job.teacher_flops_per_example if distilled else 0.0)


def _train_flops(summary: dict[str, Any] | None, job: Any, distilled: bool = True) -> float:
    """Training FLOPs spent: training FLOPs per layout token x tokens trained (the trainer
    counts real, unpadded tokens; pretraining tokens at the same rate, without a teacher)."""
    if not summary:
        return 0.0
    return _train_flops_per_example(job, distilled) / max(job.tokens_per_example, 1e-9) * summary["tokens"]


def run(job_path: str) -> None:
    from archlab.compare.runner import job_from_dict
    from archlab.config import ModelConfig, from_dict
    from archlab.data import load_dataset

    job = job_from_dict(json.loads(Path(job_path).read_text()), where=job_path)
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    err = run_dir / "error.txt"
    if err.exists():
        err.unlink()
    _record_attempt(run_dir)
    torch.set_num_threads(job.run.train.threads or torch.get_num_threads())
    t0 = time.perf_counter()
    ds = load_dataset(job.run.data)  # once per process: training and scoring share it
    if job.kind == "pretrain":
        _pretrain_result(job, ds, run_dir)
        return
    if job.kind == "tune":
        _tune_result(job, ds, run_dir)
        return
    pre = _pretrain_summary(job)
    main = _train(job.run, job.raw_model_keys, ds, evaluate_only=job.evaluate_only)
    if _rank() != 0:
        return  # the other ranks only train; rank 0 decodes and scores
    scores = evaluate_job(job, ds)
    sizing = job.sizing
    mcfg = from_dict(ModelConfig, sizing["model"])
    beams = job.decode.num_beams
    shape = scores.pop("_shape")
    n_train = len(ds.train)
    if main.get("peak_memory_bytes"):
        peak = max(main["peak_memory_bytes"], (pre or {}).get("peak_memory_bytes", 0))
        peak_kind = main.get("peak_memory_kind", "host_rss")
    else:  # a summary from before the trainer's figure was kept
        peak, peak_kind = _peak_rss(), "host_rss (worker process)"
    result = {
        "entry": job.entry,
        "arch": job.arch,
        "objective": job.objective,
        "pretrain_objective": job.pretrain_objective,
        "seed": job.seed,
        "scale": job.scale,
        "params": sizing["params"],
        "active_params": sizing.get("active_params", sizing["params"]),
        "flops_per_example": sizing["flops_per_example"],
        "train_flops_per_example": _train_flops_per_example(job),
        "teacher_flops_per_example": job.teacher_flops_per_example,
        "teacher_run": job.teacher_run_dir,
        "train_flops": _train_flops(main, job) + _train_flops(pre, job, distilled=False),
        "sizing_rule": sizing["rule"],
        "budget_deviation": sizing["deviation"],
        "layers": (f"{mcfg.encoder_layers}+{mcfg.decoder_layers}" if mcfg.arch == "encoder-decoder"
                   else str(mcfg.n_layers)),
        "group": sizing.get("group"),  # budget group (sized against its own reference entry)
        "family": sizing.get("family"),  # the entry apart from its size (the report's width curves)
        "d_model": mcfg.d_model,
        "d_state": mcfg.ssm.d_state if mcfg.has_ssm else None,  # Mamba state size (N); None: no Mamba layers
        "d_ff": mcfg.d_ff,
        "lr": job.run.train.lr,
        "warmup_steps": job.run.train.warmup_steps,
        "tuned": job.tuned,
        "evaluate_only": job.evaluate_only,
        "max_source_len": job.run.train.max_source_len,
        "max_target_len": job.run.train.max_target_len,
        "examples_truncated": int(main.get("examples_truncated", 0)),
        "truncated_fraction": int(main.get("examples_truncated", 0)) / max(n_train, 1),
        "train_steps": main["steps"],
        "train_tokens": main["tokens"] + (pre["tokens"] if pre else 0),
        "train_examples": main.get("examples"),  # fine-tuning only: the same for every entry
        "train_time_s": main["train_time_s"] + (pre["train_time_s"] if pre else 0.0),
        "pretrain_time_s": pre["train_time_s"] if pre else 0.0,
        "stopped": main["stopped"],
        "val_loss": main["last_eval"].get("loss"),
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "num_beams": beams,
        "curve": _eval_curve(run_dir),
        "train_curve": _train_curve(run_dir),
        "job_wall_time_s": time.perf_counter() - t0,
        "pretrain_run": os.path.relpath(job.pretrain_run_dir, job.out_dir) if job.pretrain_run_dir else None,
        "tokens_per_example": job.tokens_per_example,
        **scores,
    }
    if job.task_kind == "pair" and job.objective != "token-classification":  # decoding state; a classifier keeps none
        kv = kv_cache_bytes(mcfg, shape["src_len"], shape["tgt_len"], beams)
        state = ssm_state_bytes(mcfg, beams)
        result["kv_cache_bytes_per_example"] = kv
        result["ssm_state_bytes_per_example"] = state
        result["decode_state_bytes_per_example"] = kv + state
    _write(run_dir, result)


def _pretrain_summary(job: Any) -> dict[str, Any] | None:
    """The summary of the pretraining job this run starts from (scheduled before it)."""
    if job.pretrain_run_dir is None:
        return None
    p = Path(job.pretrain_run_dir) / "summary.json"
    if not p.exists():
        raise ArchlabError(f"{job.pretrain_run_dir}: its pretraining has not finished (no summary.json); "
                           "run the compare again to train it first")
    return json.loads(p.read_text())


def _pretrain_result(job: Any, ds: Any, run_dir: Path) -> None:
    """A pretraining run: train on its own data and objective, keep what it cost (its
    FLOPs are charged to the run that starts from it, or to tuning when candidates share it)."""
    summary = _train(job.run, job.raw_model_keys, ds)  # (ds: the pretraining's own data)
    if _rank() != 0:
        return
    _write(run_dir, {"entry": job.entry, "kind": "pretrain", "seed": job.seed, "scale": job.scale,
                     "objective": job.objective, "train_steps": summary["steps"],
                     "train_tokens": summary["tokens"], "train_time_s": summary["train_time_s"],
                     "train_flops": _train_flops(summary, job, distilled=False),
                     "peak_memory_bytes": summary.get("peak_memory_bytes", 0)})


def _tune_result(job: Any, ds: Any, run_dir: Path) -> None:
    """A tuning run: train, keep the validation score (a run whose loss diverged scores None).
    Its pretraining (shared by the candidates) is charged by the compare, once."""
    try:
        main = _train(job.run, job.raw_model_keys, ds)
    except ArchlabError as e:
        if "loss became" not in str(e):
            raise
        _write(run_dir, {"entry": job.entry, "candidate": job.candidate, "val_loss": None, "metric": None,
                         "diverged": str(e), "train_flops": _train_flops_per_example(job)
                         / max(job.tokens_per_example, 1e-9) * job.run.train.tokens_per_batch
                         * job.run.train.steps})
        return
    if _rank() != 0:
        return
    from archlab.compare.runner import TASK_METRIC

    ev = main["last_eval"]
    # the task metric of how the task is scored (probe tasks: token_acc; pair tasks: BLEU; tags: entity F1)
    metric = ev.get(TASK_METRIC.get(job.score_kind or job.task_kind, "accuracy"))
    _write(run_dir, {"entry": job.entry, "candidate": job.candidate, "val_loss": ev.get("loss"),
                     "metric": metric, "train_steps": main["steps"], "train_tokens": main["tokens"],
                     "train_flops": _train_flops(main, job), "train_time_s": main["train_time_s"]})


def _write(run_dir: Path, result: dict[str, Any]) -> None:
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
    _die_with_parent()
    tune_malloc()
    job_path = sys.argv[1]
    try:
        run(job_path)
    except ArchlabError as e:
        job = json.loads(Path(job_path).read_text())
        msg = str(e).splitlines()[0]
        Path(job["run_dir"]).mkdir(parents=True, exist_ok=True)
        (Path(job["run_dir"]) / "error.txt").write_text(msg + "\n")
        print(f"archlab compare: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
