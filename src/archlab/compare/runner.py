"""``archlab compare``: size, train, decode and score every entry x seed, then report.

Each (entry, seed) job runs in its own child process (``python -m archlab.compare.worker``):
its peak memory is then its own, a crash in one job cannot corrupt another, and an
interrupted compare resumes job by job (finished jobs keep their ``result.json``; a job in
progress resumes from its last checkpoint).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from archlab.compare.config import CompareConfig, EntryConfig
from archlab.compare.sizing import Shape, measure, size_to_budget
from archlab.config import ModelConfig, from_dict, save_yaml, to_dict
from archlab.errors import ArchlabError, ConfigError

NATURAL_OBJECTIVE = {"pair": "seq2seq", "label": "classification", "text": "causal-lm"}
TASK_KIND_ARCHS = {
    "pair": ("decoder", "prefix-lm", "encoder-decoder"),
    "text": ("decoder", "prefix-lm", "encoder-decoder", "encoder"),
    "label": ("encoder", "decoder", "prefix-lm", "encoder-decoder"),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _config_fingerprint(cfg: CompareConfig) -> dict[str, Any]:
    d = to_dict(cfg)
    d.pop("out_dir", None)
    return d


def prepare(cfg: CompareConfig) -> tuple[Path, Any, Any, Shape]:
    """Output dir, dataset, shared tokenizer, typical example shape (tokens)."""
    from archlab.data import DataConfig, Tokenizer, corpus_texts, load_dataset, tokenize_examples

    out = cfg.run_dir
    out.mkdir(parents=True, exist_ok=True)
    fp_path = out / "compare.json"
    fp = _config_fingerprint(cfg)
    if fp_path.exists():
        old = json.loads(fp_path.read_text())
        if old != json.loads(json.dumps(fp)):
            raise ArchlabError(f"{out}: holds a compare run with a different configuration; choose "
                               "another --out (nothing was changed)")
    else:
        fp_path.write_text(json.dumps(fp, indent=1))
    save_yaml(cfg, out / "compare.yaml")

    data_cfg = from_dict(DataConfig, cfg.data, prefix="data")
    ds = load_dataset(data_cfg)
    tdir = out / "tokenizer"
    if (tdir / "archlab_tokenizer.json").exists():
        tok = Tokenizer.load(tdir)
    elif cfg.tokenizer.path:  # a given tokenizer (an imported checkpoint's), shared by every entry
        p = Path(cfg.tokenizer.path)
        tok = Tokenizer.load(p) if (p / "archlab_tokenizer.json").exists() else Tokenizer.from_hf_dir(p)
        tok.save(tdir)
    else:
        tc = cfg.tokenizer
        t0 = time.perf_counter()
        texts = corpus_texts(ds)
        if tc.max_texts:
            texts = (t for i, t in enumerate(texts) if i < tc.max_texts)
        tok = Tokenizer.train(texts, tc.vocab_size, kind=tc.kind, n_sentinels=tc.n_sentinels,
                              min_frequency=tc.min_frequency)
        tok.save(tdir)
        log(f"tokenizer: {tc.kind} {tok.vocab_size} tokens, trained in {time.perf_counter() - t0:.1f}s")
    sample = ds.train[: 2000]
    ex = tokenize_examples(sample, tok)
    if ds.kind == "pair":
        shape = Shape(float(np.mean([len(e.src) for e in ex])), float(np.mean([len(e.tgt) for e in ex])))
    else:
        shape = Shape(float(np.mean([len(e.ids) for e in ex])), 0.0)
    return out, ds, tok, shape


def base_model_config(cfg: CompareConfig, entry: EntryConfig, tok: Any, n_classes: int) -> ModelConfig:
    sp = tok.special
    data = {**cfg.model, **entry.model, "arch": entry.arch, "vocab_size": tok.vocab_size,
            "pad_token_id": sp.pad, "bos_token_id": sp.bos, "eos_token_id": sp.eos}
    if n_classes:
        data["n_classes"] = n_classes
    try:
        return from_dict(ModelConfig, data, prefix="model")
    except ConfigError as e:
        raise ConfigError(f"entry {entry.label}: {e}") from None


def _imported_model_config(entry: EntryConfig, n_classes: int) -> ModelConfig:
    """The model of an entry that starts from a checkpoint, with the entry's model overrides."""
    p = Path(entry.init_from or "")
    if (p / "model.yaml").exists():
        from archlab.run import read_model_config

        m = read_model_config(p)
    else:
        from archlab.convert import hf_model_config

        m = hf_model_config(p)
    changes = {**entry.model, **({"n_classes": n_classes} if n_classes else {})}
    try:
        return replace(m, **changes)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"entry {entry.label}: {e}") from None


def size_entries(cfg: CompareConfig, tok: Any, shape: Shape, n_classes: int) -> list[dict[str, Any]]:
    """Sized model config per entry, plus the sizing record printed and saved."""
    b = cfg.budget
    if b.target is not None:
        target = float(b.target)
        how = f"target {target:.4g} given"
    else:
        ref_entry = next(e for e in cfg.entries if e.arch == b.reference)
        ref = base_model_config(cfg, ref_entry, tok, n_classes)
        target = measure(ref, b.match, shape)
        how = f"target = {b.reference} base model ({ref.n_layers}{'+' + str(ref.n_layers) if ref.arch == 'encoder-decoder' else ''} layers, d_model {ref.d_model})"
    sized = []
    for e in cfg.entries:
        if e.init_from:
            s_cfg = _imported_model_config(e, n_classes)
            value = measure(s_cfg, b.match, shape)
            sized.append({"entry": e.label, "arch": s_cfg.arch, "model": s_cfg, "value": value, "target": target,
                          "deviation": value / target - 1, "rule": "imported checkpoint (not sized)",
                          "params": measure(s_cfg, "params", shape), "imported": True,
                          "flops_per_example": measure(s_cfg, "flops", shape)})
            continue
        base = base_model_config(cfg, e, tok, n_classes)
        fixed_depth = any(k in e.model for k in ("n_layers", "n_encoder_layers", "n_decoder_layers", "d_ff"))
        if fixed_depth:
            s_cfg, value, rule = base, measure(base, b.match, shape), "as configured (entry sets depth/d_ff)"
        else:
            s = size_to_budget(base, target, b.match, shape, tolerance=b.tolerance,
                               d_ff_multiple=b.d_ff_multiple)
            s_cfg, value, rule = s.cfg, s.value, s.rule
        dev = value / target - 1
        sized.append({"entry": e.label, "arch": e.arch, "model": s_cfg, "value": value, "target": target,
                      "deviation": dev, "rule": rule, "params": measure(s_cfg, "params", shape),
                      "flops_per_example": measure(s_cfg, "flops", shape)})
    log(f"budget: match {b.match}, {how}; typical example {shape.src_len:.1f} + {shape.tgt_len:.1f} tokens")
    for s in sized:
        log(f"  {s['entry']:<28} {s['rule']:<34} params {s['params'] / 1e6:6.2f}M  "
            f"FLOPs/example {s['flops_per_example'] / 1e6:8.1f}M  ({s['deviation']:+.1%} of target)")
    bad = [s for s in sized if abs(s["deviation"]) > 0.10 and not s.get("imported")]
    if bad:
        s = bad[0]
        raise ConfigError(f"entry {s['entry']}: cannot be sized within 10 % of the {b.match} target "
                          f"({s['deviation']:+.1%}); adjust model.d_model or the entry's model overrides")
    return sized


def job_specs(cfg: CompareConfig, sized: list[dict[str, Any]], kind: str, out: Path) -> list[dict[str, Any]]:
    jobs = []
    for e, s in zip(cfg.entries, sized):
        objective = e.objective or NATURAL_OBJECTIVE[kind]
        arch = s["arch"]  # an imported entry's arch is its checkpoint's
        if arch not in TASK_KIND_ARCHS[kind]:
            raise ConfigError(f"entry {e.label}: arch {arch} cannot do a {kind} task; choose one of: "
                              f"{', '.join(TASK_KIND_ARCHS[kind])}")
        for seed in cfg.seeds:
            run_dir = out / "runs" / _slug(e.label) / f"seed-{seed}"
            train = replace(cfg.train, seed=seed)
            run = {
                "name": f"{e.label}-seed{seed}",
                "out_dir": str(run_dir),
                "model": to_dict(s["model"]),
                "data": cfg.data,
                "tokenizer": {**to_dict(cfg.tokenizer), "path": str(out / "tokenizer")},
                "objective": {"name": objective, "options": e.objective_options},
                "train": to_dict(train),
                "eval": to_dict(cfg.eval),
            }
            pre = None
            if e.pretrain is not None:
                p = e.pretrain
                pre = {
                    **run,
                    "name": f"{e.label}-seed{seed}-pretrain",
                    "out_dir": str(run_dir / "pretrain"),
                    "data": p.data or cfg.data,
                    "objective": {"name": p.objective, "options": p.options},
                    "train": {**to_dict(train), "steps": p.steps, "lr": p.lr or train.lr},
                    "eval": {**to_dict(cfg.eval), "metric": "loss", "decode_examples": 0},
                }
                run["train"] = {**run["train"], "init_from": str(run_dir / "pretrain" / "model")}
            if e.init_from:
                run["train"] = {**run["train"], "init_from": str(Path(e.init_from).resolve())}
            teacher_flops = 0
            if e.distill_from:  # the teacher entry's job of this seed runs earlier (entry order)
                teacher = next(t for t in sized if t["entry"] == e.distill_from)
                teacher_flops = teacher["flops_per_example"]
                run["objective"] = {"name": "distillation", "options": {
                    "teacher": str(out / "runs" / _slug(e.distill_from) / f"seed-{seed}"), "base": objective,
                    **({"base_options": e.objective_options} if e.objective_options else {}), **e.distill}}
            decode = to_dict(cfg.decode)
            if kind == "pair":  # timed afterwards, all entries interleaved (measure_latency)
                decode["latency_examples"] = 0
            jobs.append({"entry": e.label, "arch": arch, "seed": seed, "objective": objective,
                         "pretrain_objective": e.pretrain.objective if e.pretrain else None,
                         "run_dir": str(run_dir), "run": run, "pretrain": pre, "sizing": _jsonable(s),
                         "teacher_flops_per_example": teacher_flops,
                         "decode": decode, "kind": kind})
    return jobs


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def _jsonable(s: dict[str, Any]) -> dict[str, Any]:
    return {k: (to_dict(v) if k == "model" else v) for k, v in s.items()}


def run_job(job: dict[str, Any], job_path: Path) -> dict[str, Any]:
    """Run one (entry, seed) job in a child process; returns its result."""
    result_path = Path(job["run_dir"]) / "result.json"
    if result_path.exists():
        log(f"[{job['entry']} seed {job['seed']}] done earlier: {result_path}")
        return json.loads(result_path.read_text())
    job_path.parent.mkdir(parents=True, exist_ok=True)
    job_path.write_text(json.dumps(job, indent=1))
    log(f"[{job['entry']} seed {job['seed']}] training {job['arch']} with {job['objective']}"
        + (f" after {job['pretrain_objective']} pretraining" if job["pretrain_objective"] else ""))
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "archlab.compare.worker", str(job_path)], env=env,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        err = Path(job["run_dir"]) / "error.txt"
        why = err.read_text().strip() if err.exists() else f"exit code {proc.returncode}"
        raise ArchlabError(f"entry {job['entry']} seed {job['seed']} failed: {why}")
    return json.loads(result_path.read_text())


def measure_latency(cfg: CompareConfig, out: Path, ds: Any, tok: Any, jobs: list[dict[str, Any]],
                    results: list[dict[str, Any]]) -> None:
    """Batch-1 decoding latency of every trained model of a pair task, written into
    ``results``: the models of one seed are timed in one process, taking turns example by
    example (``archlab.evaluate.runner.latency_ms_interleaved``), so machine-speed drift
    between jobs does not decide which architecture looks faster. Kept in ``latency.json``
    so that a resumed compare does not time again."""
    import torch

    from archlab.evaluate.runner import DecodeOptions, latency_ms_interleaved
    from archlab.run import load_run

    n = cfg.decode.latency_examples
    if ds.kind != "pair" or not n:
        return
    path = out / "latency.json"
    done: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
    todo = [j for j in jobs if j["run_dir"] not in done]
    if todo:
        torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
        opts = DecodeOptions(**to_dict(cfg.decode))
        sources = [tok.encode(ex.source) for ex in opts.test_subset(ds.test)[:n]]  # as the jobs score
        for seed in sorted({j["seed"] for j in todo}):
            group = [j for j in todo if j["seed"] == seed]
            log(f"latency: {len(group)} model(s) of seed {seed}, {len(sources)} examples one at a time, "
                "taking turns, fastest of 3")
            models = {j["run_dir"]: load_run(j["run_dir"]).model for j in group}
            done.update(latency_ms_interleaved(models, tok, sources, opts))
            path.write_text(json.dumps(done, indent=1))
            del models
    for job, res in zip(jobs, results):
        res["latency_ms_per_example"] = done[job["run_dir"]]


def compare(cfg: CompareConfig) -> Path:
    """Run the whole comparison; returns the output directory (report.md/html inside)."""
    from archlab.compare.report import write_report

    t0 = time.perf_counter()
    out, ds, tok, shape = prepare(cfg)
    n_classes = len(ds.label_names) if ds.kind == "label" and ds.label_names else 0
    sized = size_entries(cfg, tok, shape, n_classes)
    (out / "sizing.json").write_text(json.dumps({"match": cfg.budget.match, "shape": shape.__dict__,
                                                  "entries": [_jsonable(s) for s in sized]}, indent=1))
    jobs = job_specs(cfg, sized, ds.kind, out)
    results = []
    for i, job in enumerate(jobs):
        log(f"job {i + 1}/{len(jobs)}")
        results.append(run_job(job, out / "jobs" / f"job-{i:03d}.json"))
    measure_latency(cfg, out, ds, tok, jobs, results)
    write_report(out, cfg, results, sizing=sized, shape=shape, task_kind=ds.kind,
                 wall_time_s=time.perf_counter() - t0)
    return out
