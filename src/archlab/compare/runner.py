"""``archlab compare``: size, train, decode and score every entry x seed, then report.

Each (entry, seed) job runs in its own child process (``python -m archlab.compare.worker``):
its peak memory is then its own, a crash in one job cannot corrupt another, and an
interrupted compare resumes job by job (finished jobs keep their ``result.json``; a job in
progress resumes from its last checkpoint). Where and when the jobs run is the executor's
(``archlab.compare.executors``: this machine, or Ray tasks on a cluster).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from archlab.compare.config import CompareConfig, EntryConfig, group_references, step_micro_batches
from archlab.compare.jobs import JobSpec, job_from_dict, job_to_dict, log  # noqa: F401 (re-exported)
from archlab.compare.sizing import Shape, _cyclic, measure, size_to_budget
from archlab.config import ModelConfig, from_dict, save_yaml, to_dict
from archlab.errors import ArchlabError, ConfigError
from archlab.objectives.layout import TaskLayout
from archlab.train.config import ObjectiveConfig, RunConfig

NATURAL_OBJECTIVE = {"pair": "seq2seq", "label": "classification", "text": "causal-lm", "pairs": "contrastive",
                     "tags": "token-classification"}
TASK_KIND_ARCHS = {
    "pair": ("decoder", "prefix-lm", "encoder-decoder"),
    "text": ("decoder", "prefix-lm", "encoder-decoder", "encoder"),
    "label": ("encoder", "decoder", "prefix-lm", "encoder-decoder"),
    "pairs": ("encoder", "decoder", "prefix-lm", "encoder-decoder"),  # bi-encoders of every family
    "tags": ("encoder", "decoder", "prefix-lm", "encoder-decoder"),  # taggers of every family
}
# the validation task metric of each scoring kind (data.datasets.score_kind; tune.metric: task;
# pair: decoded, pairs: retrieved, probe: the answers decoded, scored per answer token, tags: entity F1)
TASK_METRIC = {"pair": "bleu", "label": "accuracy", "pairs": "mrr", "tags": "f1", "probe": "token_acc"}
RETRIEVAL_K = 10  # the largest k of recall@k: a retrieval pool must hold at least this many


def _config_fingerprint(cfg: CompareConfig) -> dict[str, Any]:
    d = to_dict(cfg)
    for k in ("out_dir", "executor", "ray", "cpu_jobs"):  # where jobs run is no part of the result: any resumes
        d.pop(k, None)
    return d


def resolved_entries(cfg: CompareConfig, kind: str) -> list[EntryConfig]:
    """The configured entries; on label tasks an encoder joins unless one is given (or
    ``encoder_on_label_tasks: false``, or the entries are in budget groups: which group's
    budget it would take is not for the compare to guess)."""
    entries = list(cfg.entries)
    if kind == "label" and cfg.encoder_on_label_tasks and not any(e.arch == "encoder" for e in entries) \
            and not any(e.group is not None for e in entries):
        entries.append(EntryConfig(arch="encoder"))
    return entries


def pair_budgets(cfg: CompareConfig, kind: str) -> tuple[int | None, int | None]:
    """Source and target token budgets shared by every entry: ``train.max_source_len`` /
    ``train.max_target_len``, else ``train.max_len - 1`` each (pair tasks; retrieval pairs
    ``max_len - 2`` each; label and tags tasks only cut the text, to ``max_len - 2``)."""
    t = cfg.train
    if kind == "pair":
        return (t.max_source_len or t.max_len - 1, t.max_target_len or t.max_len - 1)
    if kind == "pairs":  # each text its own row <cls> text <sep>
        return (t.max_source_len or t.max_len - 2, t.max_target_len or t.max_len - 2)
    if kind in ("label", "tags"):  # one text framed <cls> text <sep>
        return (t.max_source_len or t.max_len - 2, None)
    return (None, None)


def task_layout(cfg: CompareConfig, kind: str) -> TaskLayout:
    """The compare's shared budgets as a :class:`~archlab.objectives.layout.TaskLayout`: each
    family's context (``train.max_len`` of its runs) and the batching length of an example."""
    src, tgt = pair_budgets(cfg, kind)
    return TaskLayout(kind, cfg.train.max_len, src, tgt)


def tune_candidates(cfg: CompareConfig) -> list[dict[str, Any]]:
    """Every combination of the tuning lists (lr x warm-up x dropout)."""
    t = cfg.tune
    if t is None or not t.lr:
        return []
    # default warm-up: the full run's schedule compressed to the tuning steps (horizon full:
    # the full run's own warm-up, i.e. no candidate value)
    wu: list[int | None] = list(t.warmup_steps) if t.warmup_steps else (
        [None] if t.horizon == "full" else
        [max(1, round(cfg.train.warmup_steps * t.steps / max(cfg.train.steps, 1)))])
    do = t.dropout or [None]
    return [{"lr": lr, "warmup_steps": w, "dropout": d} for lr in t.lr for w in wu for d in do]


def scale_seeds(cfg: CompareConfig) -> list[tuple[float, list[int]]]:
    scales = list(cfg.budget.scales)
    top = max(scales)
    return [(sc, list(cfg.budget.seeds_at_largest) if sc == top and cfg.budget.seeds_at_largest else
             list(cfg.seeds)) for sc in scales]


def _scaled_steps(steps: int, scale: float, scale_model: bool) -> int:
    # not clamped: a scale that leaves no step is an error (train.steps must be >= 1)
    return steps if scale_model else round(steps * scale)


def _tag(v: float) -> str:
    return f"{v:g}"


def main_run_dir(cfg: CompareConfig, out: Path, label: str, scale: float, seed: int) -> Path:
    """Directory of an entry's full run at one budget scale and seed."""
    multi = len(cfg.budget.scales) > 1
    return out / "runs" / _slug(label) / (f"scale-{_tag(scale)}" if multi else "") / f"seed-{seed}"


def reported_seeds(cfg: CompareConfig) -> list[int]:
    """Every seed a reported (main) run is trained with, at any budget scale."""
    return sorted({s for _, seeds in scale_seeds(cfg) for s in seeds})


def tuning_seed(cfg: CompareConfig) -> int:
    """The tuning runs' seed: ``tune.seed``, else 1000 + the largest reported seed. Never a
    reported seed (checked in the config): a reported run with the chosen values and the
    tuning seed would be the very run chosen as the best of the candidates on validation,
    and mean +- sd over seeds would mix one selected run with unselected ones."""
    if cfg.tune is not None and cfg.tune.seed is not None:
        return cfg.tune.seed
    return 1000 + max(reported_seeds(cfg))


def tuned_values(tuned: dict[Any, dict[str, Any]] | None, label: str, scale: float) -> dict[str, Any]:
    """An entry's tuned values at one budget scale: per scale (``tune.horizon: full``, keyed
    ``(label, scale)``), else the entry's one choice (keyed ``label``)."""
    tuned = tuned or {}
    return dict(tuned.get((label, scale), tuned.get(label, {})))


def tuning_teacher(cfg: CompareConfig, scale: float | None = None) -> tuple[float, int]:
    """(scale, seed) of the teacher entry's full run that a distilled entry's tuning runs read:
    at ``scale`` (full-horizon tuning tunes each budget against that budget's teacher), else
    scale 1 if swept (else the largest); that scale's first reported seed."""
    plan = dict(scale_seeds(cfg))
    if scale is None:
        scale = 1.0 if 1.0 in plan else max(plan)
    return scale, plan[scale][0]


def waves(entries: list[EntryConfig]) -> list[list[str]]:
    """Entry labels in dependency order: entries without a teacher first, then those distilled
    from them, and so on (a distilled entry's tuning runs need its teacher's full run)."""
    depth: dict[str, int] = {}
    for e in entries:  # distill_from names an earlier entry (checked in the config)
        depth[e.label] = depth[e.distill_from] + 1 if e.distill_from else 0
    return [[e.label for e in entries if depth[e.label] == d] for d in range(max(depth.values()) + 1)]


def build_jobs(cfg: CompareConfig, entries: list[EntryConfig], sized: dict[float, list[dict[str, Any]]],
               kind: str, out: Path, tokens_per_example: float | Mapping[str, float], tokenizer_path: str,
               tuned: dict[Any, dict[str, Any]] | None = None, *, phase: str = "main",
               scoring: str | None = None) -> list[JobSpec]:
    """Typed job specs: ``phase="tune"``, one per entry and tuning candidate (at scale 1, or
    at every scale with ``tune.horizon: full``), all at the tuning seed; else one per scale x
    entry x reported seed with each entry's tuned values (:func:`tuned_values`). Every
    reported run is trained afresh and evaluated with the compare's ``eval`` settings, so the
    seeds of an entry are judged alike (no reported run is a selected tuning run).

    An entry with pretraining adds one ``pretrain`` job per (scale, seed) its runs start from,
    listed before them: the tuning candidates of a budget share one (the same model, seed and
    pretraining settings), and a job waits for the runs in its ``depends_on``.
    ``tokens_per_example``: per entry label (or one number for all), the tokens the trainer
    counts per example in the entry's layout (FLOPs per token). ``scoring``: how the test split
    is scored (:func:`archlab.data.datasets.score_kind`: ``probe`` for the probe tasks, whose
    data kind is pair; None: ``kind``), which sets the task metric of tuning."""
    from archlab.train.config import TrainConfig

    scoring = scoring or kind

    layout = task_layout(cfg, kind)
    src_budget, tgt_budget = layout.max_source, layout.max_target
    jobs: list[JobSpec] = []
    pretrain_jobs: dict[str, JobSpec] = {}
    index = {e.label: i for i, e in enumerate(entries)}
    plan: list[tuple[float, int, dict[str, Any] | None]] = []
    full = cfg.tune is not None and cfg.tune.horizon == "full"
    if phase == "tune":
        seed = tuning_seed(cfg)
        # short: one set of short runs (at scale 1); full: every budget scale, at its length
        plan = [(sc, seed, c) for sc in (sorted(cfg.budget.scales) if full else [1.0])
                for c in tune_candidates(cfg)]
    else:
        plan = [(sc, seed, None) for sc, seeds in scale_seeds(cfg) for seed in seeds]
    for i, e in enumerate(entries):
        objective = e.objective or NATURAL_OBJECTIVE[kind]
        # (an encoder answers the mqar probe by token classification: objectives/tokcls.py)
        if e.arch not in TASK_KIND_ARCHS[kind] and not (kind == "pair" and objective == "token-classification"):
            raise ConfigError(f"entry {e.label}: arch {e.arch} cannot do a {kind} task; choose one of: "
                              f"{', '.join(TASK_KIND_ARCHS[kind])}")
        tpe = float(tokens_per_example[e.label] if isinstance(tokens_per_example, Mapping) else tokens_per_example)
        if e.evaluate_only and phase == "tune":
            continue  # nothing is trained, so nothing is tuned
        for scale, seed, cand in plan:
            s = sized[scale][i]
            chosen = tuned_values(tuned, e.label, scale) if cand is None else cand
            model = s["model"]
            if chosen.get("dropout") is not None:
                model = replace(model, dropout=chosen["dropout"])
            steps = _scaled_steps(cfg.train.steps, scale, cfg.budget.scale_model)
            if "steps_factor" in s:  # budget.match total_flops: the entry's share of the steps
                steps = max(1, round(steps * s["steps_factor"]))
            tr: dict[str, Any] = {"seed": seed, "steps": steps, "max_len": layout.context(e.arch, objective),
                                  "max_source_len": src_budget, "max_target_len": tgt_budget}
            ev = cfg.eval
            tr.update(e.train)  # the entry's own optimiser settings (ENTRY_TRAIN_KEYS); tuning wins
            if cfg.gpus_per_job > 1 and cfg.train.parallel == "none":
                tr["parallel"] = "ddp"  # one rank per GPU of the job's slot
            # one global batch whatever gpus_per_job: the job's ranks split the step's
            # micro-batches (global_batch / ranks each), so the result does not depend on it
            tr["global_batch"], tr["grad_accum"] = step_micro_batches(cfg), 1
            base_train = from_dict(TrainConfig, {**to_dict(cfg.train), **tr}, prefix="train")  # before tuning
            if chosen.get("lr") is not None:
                tr["lr"] = chosen["lr"]
            if chosen.get("warmup_steps") is not None:
                tr["warmup_steps"] = chosen["warmup_steps"]
            if cand is not None:
                assert cfg.tune is not None
                task_metric = cfg.tune.metric == "task"
                metric = TASK_METRIC.get(scoring, "accuracy") if task_metric else "loss"
                decode_examples = cfg.tune.decode_examples if task_metric and kind in ("pair", "pairs", "tags") else 0
                name = "-".join(f"{k[:2]}{_tag(v)}" for k, v in cand.items() if v is not None)
                if full:  # the budget's own run length, checkpoints and evaluations
                    ev = _full_tune_eval(cfg, kind, scoring)
                    sub = f"scale-{_tag(scale)}" if len(cfg.budget.scales) > 1 else ""
                    run_dir = out / "tune" / _slug(e.label) / sub / name
                else:
                    tr["steps"] = cfg.tune.steps
                    tr["save_every"] = cfg.tune.steps
                    ev = replace(cfg.eval, every=cfg.tune.steps, decode_examples=decode_examples, metric=metric)
                    run_dir = out / "tune" / _slug(e.label) / name
            else:
                run_dir = main_run_dir(cfg, out, e.label, scale, seed)
            train = from_dict(TrainConfig, {**to_dict(cfg.train), **tr}, prefix="train")
            tok_cfg = replace(cfg.tokenizer, path=tokenizer_path)
            if e.init_from:  # the checkpoint's weights (pretraining below then starts from them)
                train = replace(train, init_from=str(Path(e.init_from).resolve()))
                base_train = replace(base_train, init_from=train.init_from)
            run_objective = ObjectiveConfig(objective, dict(e.objective_options))
            teacher_dir, teacher_flops = None, 0.0
            depends: list[str] = []
            if e.distill_from:
                # the teacher entry's full run of this scale and seed (entry order runs it
                # first); tuning runs (their seed is no reported seed) read tuning_teacher()'s
                t_scale, t_seed = (scale, seed) if cand is None else tuning_teacher(cfg, scale if full else None)
                teacher_dir = main_run_dir(cfg, out, e.distill_from, t_scale, t_seed)
                teacher_flops = float(sized[scale][index[e.distill_from]]["flops_per_example"])
                run_objective = ObjectiveConfig("distillation", {
                    **e.distill, "teacher": str(teacher_dir), "base": objective,
                    **({"base_options": dict(e.objective_options)} if e.objective_options else {})})
                depends.append(str(teacher_dir))
            run = RunConfig(name=f"{e.label}-seed{seed}", out_dir=str(run_dir), model=model,
                            data=from_dict(_data_cls(), cfg.data, prefix="data"), tokenizer=tok_cfg,
                            objective=run_objective, train=train, eval=ev)
            pre_dir = None
            if e.pretrain is not None:
                p = e.pretrain
                # one pretraining per (entry, scale, seed): the sized model (no tuning dropout)
                # at pretrain.lr or the entry's own rate, never a tuning candidate's, so every
                # candidate fine-tunes from the same weights; pretraining keeps its own layout
                # (no shared pair budgets)
                pre_dir = pretrain_dir(cfg, out, e.label, scale, seed)
                if str(pre_dir) not in pretrain_jobs:
                    pre_train = replace(base_train, steps=p.steps, lr=p.lr or base_train.lr,
                                        max_len=cfg.train.max_len, max_source_len=None, max_target_len=None)
                    pre = RunConfig(name=f"{e.label}-seed{seed}-pretrain", out_dir=str(pre_dir),
                                    model=s["model"], tokenizer=tok_cfg, train=pre_train,
                                    data=from_dict(_data_cls(), p.data or cfg.data, prefix="pretrain.data"),
                                    objective=ObjectiveConfig(p.objective, dict(p.options)),
                                    eval=replace(cfg.eval, metric="loss", decode_examples=0))
                    pretrain_jobs[str(pre_dir)] = JobSpec(
                        kind="pretrain", entry=e.label, arch=e.arch, seed=seed, scale=scale,
                        objective=p.objective, pretrain_objective=None, run_dir=str(pre_dir), out_dir=str(out),
                        run=pre, raw_model_keys=sorted(to_dict(s["model"])), sizing=_jsonable(s),
                        decode=cfg.decode, task_kind=kind, tokens_per_example=tpe)
                    jobs.append(pretrain_jobs[str(pre_dir)])
                run = replace(run, train=replace(train, init_from=str(pre_dir / "model")))
                depends.append(str(pre_dir))
            decode = cfg.decode
            if kind == "pair" and scoring != "probe":  # timed afterwards, all entries interleaved (measure_latency)
                # (a probe's job times its own greedy decoding to the answer's length: the
                # interleaved timing decodes up to decode.max_new_tokens, no answer length)
                decode = replace(decode, latency_examples=0)
            jobs.append(JobSpec(
                kind="tune" if cand is not None else "main", entry=e.label, arch=e.arch, seed=seed,
                scale=scale, objective=objective, pretrain_objective=e.pretrain.objective if e.pretrain else None,
                run_dir=str(run_dir), out_dir=str(out), run=run,
                raw_model_keys=sorted(to_dict(model)), sizing=_jsonable(s), decode=decode, task_kind=kind,
                score_kind=scoring, tokens_per_example=tpe, tuned=chosen if cand is None else {},
                candidate=cand or {}, tune_metric=cfg.tune.metric if cfg.tune else "val_loss",
                teacher_flops_per_example=teacher_flops,
                teacher_run_dir=str(teacher_dir) if teacher_dir is not None else None,
                pretrain_run_dir=str(pre_dir) if pre_dir is not None else None, depends_on=depends,
                evaluate_only=e.evaluate_only))
    if phase == "main":
        # budget by budget, seed by seed, every entry in turn: an interrupted sweep has whole
        # comparisons at the budgets it finished (sort is stable: entry order kept, and a
        # pretraining job before the run that starts from it)
        jobs.sort(key=lambda j: (j.scale, j.seed))
    return jobs


def pretrain_dir(cfg: CompareConfig, out: Path, label: str, scale: float, seed: int) -> Path:
    """Directory of an entry's pretraining run at one budget scale and seed (shared by the
    tuning candidates of that budget, which all run at the tuning seed)."""
    multi = len(cfg.budget.scales) > 1
    return out / "pretrain" / _slug(label) / (f"scale-{_tag(scale)}" if multi else "") / f"seed-{seed}"


def entry_tokens_per_example(cfg: CompareConfig, entries: list[EntryConfig], ds: Any, tok: Any,
                             kind: str, n: int = 2000) -> dict[str, float]:
    """Per entry, the tokens the trainer counts per example (encoder and decoder inputs,
    :func:`~archlab.objectives.layout.counted_tokens`) over the sample that sets the typical
    example shape, built by the entry's own objective in its layout and context: FLOPs per
    example / this is the FLOPs per counted token its training is charged at."""
    from archlab.data import tokenize_examples
    from archlab.objectives import make_objective
    from archlab.objectives.layout import counted_tokens
    from archlab.train.run import examples_for_objective

    layout = task_layout(cfg, kind)
    sample = tokenize_examples(ds.train[:n], tok, ds.label_names if kind == "tags" else None)
    out = {}
    for e in entries:
        name = e.objective or NATURAL_OBJECTIVE[kind]
        obj = make_objective(name, tok.special, e.arch, layout.context(e.arch, name), max_source_len=layout.max_source,
                             max_target_len=layout.max_target, **dict(e.objective_options))
        out[e.label] = counted_tokens(obj, examples_for_objective(sample, name))
    return out


def selection_note(cfg: CompareConfig, job: JobSpec) -> str:
    """How a reported run was chosen, for the report and results.json (the same words for
    every entry chosen alike; the tuned values themselves are in ``tuned``)."""
    t = cfg.tune
    if job.evaluate_only:
        return "its checkpoint evaluated as it is (zero-shot: not trained, not tuned)"
    if t is None or not t.lr:
        return "trained once per seed at the configured settings (not tuned)"
    how = "full-length runs at each budget" if t.horizon == "full" else f"{t.steps}-step runs at budget scale 1"
    by = "validation loss" if t.metric == "val_loss" else "the validation task metric"
    return (f"trained afresh per seed at its tuned values, chosen among {len(tune_candidates(cfg))} candidates "
            f"by {by} of {how} with tuning seed {tuning_seed(cfg)} (not a reported seed), every seed "
            "evaluated alike")

def _full_tune_eval(cfg: CompareConfig, kind: str, scoring: str | None = None) -> Any:
    """Evaluation of a full-horizon tuning run: the compare's, tracking the tuning metric
    (task metric: decoding that many validation examples). Reported runs keep ``eval``."""
    assert cfg.tune is not None
    if cfg.tune.metric != "task":
        return replace(cfg.eval, metric="loss")
    scored = kind in ("pair", "pairs", "tags")  # decoded / retrieved / tagged validation examples
    return replace(cfg.eval, metric=TASK_METRIC.get(scoring or kind, "accuracy"),
                   decode_examples=max(cfg.eval.decode_examples, cfg.tune.decode_examples) if scored
                   else cfg.eval.decode_examples)


def _data_cls() -> Any:
    from archlab.data import DataConfig

    return DataConfig


def validate(cfg: CompareConfig, entries: list[EntryConfig], kind: str, n_classes: int, *, n_tags: int = 0,
             task: str | None = None, scoring: str | None = None) -> None:
    """Check the whole compare before any work: every entry's model, and every job's resolved
    run config (each scale, seed and tuning candidate) and that its objective reads the task's
    data (``task``: the loaded dataset's name), with a stand-in vocabulary (the tokenizer is
    trained later). Raises ConfigError naming the entry and key."""
    from archlab.train.config import run_config_from_dict
    from archlab.train.run import _check_objective_data, check_eval_metric, check_objective

    class _Tok:  # stand-in for the tokenizer: sizes and special ids only
        vocab_size = cfg.tokenizer.vocab_size
        from archlab.objectives import SpecialTokens as _S
        special = _S()

    base = [entry_model_config(cfg, e, _Tok, n_classes, n_tags=n_tags) for e in entries]
    stand_in = {sc: [{"model": m, "params": 0, "flops_per_example": 0, "rule": "", "deviation": 0.0,
                      "value": 0.0, "target": 0.0, "entry": e.label} for m, e in zip(base, entries)]
                for sc in {*cfg.budget.scales, 1.0}}
    jobs = build_jobs(cfg, entries, stand_in, kind, cfg.run_dir, 1.0, "tokenizer", phase="tune", scoring=scoring)
    jobs += build_jobs(cfg, entries, stand_in, kind, cfg.run_dir, 1.0, "tokenizer", phase="main", scoring=scoring)
    for job in jobs:
        what = "pretraining" if job.kind == "pretrain" else "run"
        where = (f"entry {job.entry}" + (f" (tuning {job.candidate})" if job.candidate else "")
                 + (f" at budget scale {job.scale:g}" if job.scale != 1.0 else "") + f", {what}")
        d = job_to_dict(job)["run"]
        if job.teacher_run_dir is not None:
            # the teacher's run is trained later: its options are checked here with a
            # stand-in directory, the teacher itself when the student's job starts
            d["objective"]["options"]["teacher"] = "."
        typed = run_config_from_dict(d, where=where)
        try:
            check_objective(typed, job.arch)
            if job.kind != "pretrain":  # (pretraining reads its own data, checked when it runs)
                _check_objective_data(typed, kind, task)
            check_eval_metric(typed.eval.metric, scoring or kind, str(cfg.data.get("task")))
        except ArchlabError as e:
            raise ConfigError(f"{where}: {e}") from None


def check_retrieval_pool(cfg: CompareConfig, ds: Any) -> None:
    """A retrieval test pool (the scored test pairs) must hold at least k candidates for
    recall@k: checked before any work."""
    n = len(ds.test[: cfg.decode.test_examples] if cfg.decode.test_examples else ds.test)
    if n < RETRIEVAL_K:
        raise ConfigError(f"decode.test_examples / data.test_fraction: the retrieval pool has {n} test pairs, "
                          f"fewer than k={RETRIEVAL_K} (recall@{RETRIEVAL_K}); score more test pairs")


def prepare(cfg: CompareConfig, ds: Any, kind: str) -> tuple[Path, Any, Shape]:
    """Output dir, shared tokenizer, typical example shape in tokens as trained (sources and
    targets cut to the shared budgets)."""
    from archlab.data import Tokenizer, corpus_texts, tokenize_examples

    out = cfg.run_dir
    fp_path = out / "compare.json"
    fp = _config_fingerprint(cfg)
    if fp_path.exists():
        old = json.loads(fp_path.read_text())
        if old != json.loads(json.dumps(fp)):
            raise ArchlabError(f"{out}: holds a compare run with a different configuration; choose "
                               "another --out (nothing was changed)")
    out.mkdir(parents=True, exist_ok=True)
    if not fp_path.exists():
        fp_path.write_text(json.dumps(fp, indent=1))
    save_yaml(cfg, out / "compare.yaml")

    tdir = out / "tokenizer"
    if (tdir / "archlab_tokenizer.json").exists():
        tok = Tokenizer.load(tdir)
    elif cfg.tokenizer.path:  # a given tokenizer (an imported checkpoint's), shared by every entry
        p = Path(cfg.tokenizer.path)
        if not (p / "archlab_tokenizer.json").exists() and (p / "tokenizer" / "archlab_tokenizer.json").exists():
            p = p / "tokenizer"  # an archlab model directory's
        tok = Tokenizer.load(p) if (p / "archlab_tokenizer.json").exists() else Tokenizer.from_hf_dir(p)
        tok.save(tdir)
        log(f"tokenizer: {tok.vocab_size} tokens from {cfg.tokenizer.path}")
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
    src_b, tgt_b = pair_budgets(cfg, kind)
    if ds.kind in ("pair", "pairs"):
        shape = Shape(float(np.mean([min(len(e.src), src_b) for e in ex])),
                      float(np.mean([min(len(e.tgt), tgt_b) for e in ex])))
        if any(e.tgt_given for e in ex):  # probe answers among given tokens (mqar): the scored slots
            given = [set(e.tgt_given or ()) for e in ex]
            shape.predicted = float(np.mean([sum(j not in g for j in range(min(len(e.tgt), tgt_b)))
                                             for e, g in zip(ex, given)]))
    else:
        shape = Shape(float(np.mean([min(len(e.ids), src_b or len(e.ids)) for e in ex])), 0.0)
    return out, tok, shape


def base_model_config(cfg: CompareConfig, entry: EntryConfig, tok: Any, n_classes: int, *,
                      n_tags: int = 0) -> ModelConfig:
    """An entry's unsized model: the compare's base block in the entry's architecture, with the
    tokenizer's vocabulary and the task's heads (``n_classes``: a label task's classes;
    ``n_tags``: a tags task's tags)."""
    sp = tok.special
    data = {**cfg.model, **entry.model, "arch": entry.arch, "vocab_size": tok.vocab_size,
            "pad_token_id": sp.pad, "bos_token_id": sp.bos, "eos_token_id": sp.eos}
    if n_classes:
        data["n_classes"] = n_classes
    if n_tags:
        data["n_tags"] = n_tags
    if not any(k in entry.model for k in ("n_layers", "n_encoder_layers", "n_decoder_layers")):
        # sizing picks the depth: a layer pattern is a unit repeated to it ("MMA" -> "MMA*")
        for key in ("layers", "ffn"):
            if isinstance(data.get(key), str):
                data[key] = _cyclic(data[key])
    try:
        return from_dict(ModelConfig, data, prefix="model")
    except ConfigError as e:
        raise ConfigError(f"entry {entry.label}: {e}") from None


def entry_model_config(cfg: CompareConfig, entry: EntryConfig, tok: Any, n_classes: int, *,
                       n_tags: int = 0) -> ModelConfig:
    """An entry's unsized model: its checkpoint's (``init_from``, with the entry's model
    overrides and a fresh head for the task's classes or tags) or the compare's base block in
    the entry's architecture."""
    if not entry.init_from:
        return base_model_config(cfg, entry, tok, n_classes, n_tags=n_tags)
    from archlab.compare.config import checkpoint_model_config

    m = checkpoint_model_config(entry.init_from, f"entry {entry.label}: init_from")
    changes = {**entry.model, **({"n_classes": n_classes} if n_classes else {}),
               **({"n_tags": n_tags} if n_tags else {})}
    try:
        return replace(m, **changes)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"entry {entry.label}: model: {e}") from None


def size_entries(cfg: CompareConfig, entries: list[EntryConfig], tok: Any, shape: Shape, n_classes: int,
                 scale: float = 1.0, kind: str = "pair", *, n_tags: int = 0) -> list[dict[str, Any]]:
    """Sized model config per entry, plus the sizing record printed and saved. With
    ``budget.scale_model`` the target is multiplied by ``scale``."""
    b = cfg.budget
    if b.match == "total_flops":
        return _steps_matched(cfg, entries, tok, shape, n_classes, kind, n_tags=n_tags)
    groups = list(dict.fromkeys(e.group for e in entries))
    targets: dict[str | None, tuple[float, str, str | None]] = {}  # group -> (target, how, reference entry)
    if b.target is not None:
        for g in groups:
            targets[g] = (float(b.target), f"target {float(b.target):.4g} given", None)
    else:
        # per budget group, its entry named budget.reference, else its first of that arch (a
        # sized one if any; else a checkpoint's size)
        for g, i in group_references(b, entries).items():
            ref_entry = entries[i]
            ref = entry_model_config(cfg, ref_entry, tok, n_classes, n_tags=n_tags)
            value = measure(ref, b.match, shape, ref_entry.objective or NATURAL_OBJECTIVE[kind],
                            ref_entry.objective_options)
            depth = f"{ref.n_layers}{'+' + str(ref.n_layers) if ref.arch == 'encoder-decoder' else ''}"
            targets[g] = (value, f"target = {ref_entry.label} base model ({depth} layers, d_model {ref.d_model})",
                          ref_entry.label)
    if b.scale_model and scale != 1.0:
        targets = {g: (t * scale, how + f" x scale {scale:g}", r) for g, (t, how, r) in targets.items()}
    sized = []
    for e in entries:
        target, _, ref_label = targets[e.group]
        base = entry_model_config(cfg, e, tok, n_classes, n_tags=n_tags)
        fixed_depth = any(k in e.model for k in ("n_layers", "n_encoder_layers", "n_decoder_layers", "d_ff"))
        ob = (e.objective or NATURAL_OBJECTIVE[kind], e.objective_options)  # FLOPs of what it runs
        if e.init_from:
            s_cfg, value, rule = base, measure(base, b.match, shape, *ob), "imported checkpoint (not sized)"
        elif fixed_depth:
            s_cfg, value, rule = base, measure(base, b.match, shape, *ob), "as configured (entry sets depth/d_ff)"
        else:
            s = size_to_budget(base, target, b.match, shape, tolerance=b.tolerance,
                               d_ff_multiple=b.d_ff_multiple, objective=ob[0], options=ob[1])
            s_cfg, value, rule = s.cfg, s.value, s.rule
        dev = value / target - 1
        sized.append({"entry": e.label, "arch": e.arch, "model": s_cfg, "value": value, "target": target,
                      "deviation": dev, "rule": rule, "params": measure(s_cfg, "params", shape),
                      "flops_per_example": measure(s_cfg, "flops", shape, *ob), "scale": scale,
                      "active_params": measure(s_cfg, "active_params", shape), "imported": bool(e.init_from),
                      "group": e.group, "reference": ref_label, "family": entry_family(cfg, e)})
    how = "; ".join(f"group {g}: {targets[g][1]}" if g is not None else targets[g][1] for g in groups) \
        if len(groups) > 1 else targets[groups[0]][1]
    log(f"budget: match {b.match}, {how}; typical example {shape.src_len:.1f} + {shape.tgt_len:.1f} tokens "
        "(as trained, after the shared source/target budgets)")
    _log_sized(sized)
    bad = [s for s in sized if abs(s["deviation"]) > 0.10 and not s["imported"]]
    if bad:
        s = bad[0]
        raise ConfigError(f"entry {s['entry']}: cannot be sized within 10 % of the {b.match} target "
                          f"({s['deviation']:+.1%}); adjust model.d_model or the entry's model overrides")
    return sized


def _steps_matched(cfg: CompareConfig, entries: list[EntryConfig], tok: Any, shape: Shape, n_classes: int,
                   kind: str, *, n_tags: int = 0) -> list[dict[str, Any]]:
    """``budget.match: total_flops``: every entry keeps its own model and trains the steps that
    give it the reference entry's total training FLOPs. All entries read the same batches in the
    same order (one TaskLayout), so an entry with k times fewer FLOPs per example trains k times
    the steps and reads k times further into the same example stream. The reference (an entry
    name, or the first entry of that arch) trains ``train.steps``."""
    refs = group_references(cfg.budget, entries, prefer_sized=False)  # per budget group
    sized = []
    for e in entries:
        m = entry_model_config(cfg, e, tok, n_classes, n_tags=n_tags)
        ob = (e.objective or NATURAL_OBJECTIVE[kind], e.objective_options)
        sized.append({"entry": e.label, "arch": e.arch, "model": m, "params": measure(m, "params", shape),
                      "flops_per_example": measure(m, "flops", shape, *ob), "scale": 1.0,
                      "active_params": measure(m, "active_params", shape), "imported": bool(e.init_from),
                      "group": e.group, "reference": entries[refs[e.group]].label, "family": entry_family(cfg, e)})
    for e, s in zip(entries, sized):
        # per example-per-step slot: the group's reference trains train.steps
        target = sized[refs[e.group]]["flops_per_example"] * cfg.train.steps
        steps = max(1, round(target / s["flops_per_example"]))
        # training FLOPs are proportional to forward FLOPs x examples for every entry (forward +
        # backward of what runs), so matching forward FLOPs x steps matches the totals
        s.update(value=s["flops_per_example"] * steps, target=target, steps_factor=steps / cfg.train.steps,
                 deviation=s["flops_per_example"] * steps / target - 1,
                 rule=("imported checkpoint" if s["imported"] else "as configured") + f", {steps} steps")
    for g, i in refs.items():
        ref = sized[i]
        log(f"budget: match total_flops, reference {ref['entry']}{'' if g is None else f' (group {g})'} "
            f"({cfg.train.steps} steps x {ref['flops_per_example'] / 1e6:.1f}M FLOPs/example); typical example "
            f"{shape.src_len:.1f} + {shape.tgt_len:.1f} tokens")
    _log_sized(sized)
    return sized


def entry_family(cfg: CompareConfig, e: EntryConfig) -> str:
    """What an entry is apart from its size: architecture, layer pattern (``layers``; ``A``:
    attention only), feed-forward pattern, objective and pretraining. The report joins the
    entries of one family across widths (``d_model``) and Mamba state sizes (``ssm.d_state``)."""
    layers = e.model.get("layers", cfg.model.get("layers")) or "A"
    ffn = e.model.get("ffn", cfg.model.get("ffn"))
    parts = [e.arch, str(layers)]
    if ffn:
        parts.append(f"ffn {ffn}")
    if e.objective:
        parts.append(e.objective)
    if e.pretrain is not None:
        parts.append(f"after {e.pretrain.objective}")
    if e.init_from:
        parts.append(f"from {Path(e.init_from).name}")
    return " ".join(parts)


def _log_sized(sized: list[dict[str, Any]]) -> None:
    """One line per entry of the sizing record (both budget modes)."""
    for s in sized:
        act = (f" (active {s['active_params'] / 1e6:.2f}M)"
               if s["active_params"] != s["params"] else "")  # MoE: k of E experts
        log(f"  {s['entry']:<28} {s['rule']:<34} params {s['params'] / 1e6:6.2f}M{act}  "
            f"FLOPs/example {s['flops_per_example'] / 1e6:8.1f}M  ({s['deviation']:+.1%} of target)")


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def _jsonable(s: dict[str, Any]) -> dict[str, Any]:
    return {k: (to_dict(v) if k == "model" else v) for k, v in s.items()}


def _tune_key(row: dict[str, Any]) -> Any:
    # rows of full-horizon tuning carry their budget scale: one choice per entry and scale
    return (row["entry"], row["scale"]) if row.get("scale") is not None else row["entry"]


def choose_tuned(tuning: list[dict[str, Any]], metric: str) -> dict[Any, dict[str, Any]]:
    """Per entry (per entry and budget scale where rows have ``scale``: keys ``(entry,
    scale)``), the candidate with the lowest validation loss (``metric="val_loss"``) or the
    highest task metric; runs that diverged (no score) are never chosen. Marks ``chosen``."""
    best: dict[Any, dict[str, Any]] = {}
    for row in tuning:
        score = row["val_loss"] if metric == "val_loss" else row["metric"]
        row["chosen"] = False
        if score is None or not math.isfinite(score):
            continue
        key = _tune_key(row)
        cur = best.get(key)
        if cur is None:
            best[key] = row
            continue
        cur_score = cur["val_loss"] if metric == "val_loss" else cur["metric"]
        if (score < cur_score) if metric == "val_loss" else (score > cur_score):
            best[key] = row
    out = {}
    for key, row in best.items():
        row["chosen"] = True
        out[key] = {k: row[k] for k in ("lr", "warmup_steps", "dropout") if row.get(k) is not None}
    missing = [k for k in dict.fromkeys(_tune_key(r) for r in tuning) if k not in out]
    if missing:
        e, at = (missing[0], "") if isinstance(missing[0], str) else (missing[0][0], f" at scale {missing[0][1]:g}")
        raise ArchlabError(f"entry {e}: every tuning run{at} diverged; lower tune.lr")
    return out


def measure_latency(cfg: CompareConfig, out: Path, ds: Any, tok: Any, jobs: list[JobSpec],
                    results: list[dict[str, Any]]) -> None:
    """Batch-1 decoding latency of every trained model of a pair task, written into
    ``results``: the models of one seed are timed in one process, taking turns example by
    example (``archlab.evaluate.runner.latency_ms_interleaved``), so machine-speed drift
    between jobs does not decide which architecture looks faster. Kept in ``latency.json``
    so that a resumed compare does not time again."""
    import torch

    from archlab.data.datasets import score_kind
    from archlab.evaluate.runner import DecodeOptions, latency_ms_interleaved
    from archlab.run import load_run

    n = cfg.decode.latency_examples
    if ds.kind != "pair" or score_kind(ds) == "probe" or not n:  # (probe jobs time themselves)
        return
    path = out / "latency.json"
    done: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
    # (a token-classification entry of a probe answers without decoding: no decoding latency)
    todo = [j for j in jobs if j.run_dir not in done and j.objective != "token-classification"]
    if todo:
        torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
        opts = DecodeOptions(**to_dict(cfg.decode), max_source_len=pair_budgets(cfg, ds.kind)[0])
        sources = [tok.encode(ex.source) for ex in opts.test_subset(ds.test)[:n]]  # as the jobs score
        for seed in sorted({j.seed for j in todo}):
            group = [j for j in todo if j.seed == seed]
            log(f"latency: {len(group)} model(s) of seed {seed}, {len(sources)} examples one at a time, "
                "taking turns, fastest of 3")
            models = {j.run_dir: load_run(j.run_dir).model for j in group}
            done.update(latency_ms_interleaved(models, tok, sources, opts))
            path.write_text(json.dumps(done, indent=1))
            del models
    for job, res in zip(jobs, results):
        res["latency_ms_per_example"] = done.get(job.run_dir, math.nan)


def measure_search_speed(cfg: CompareConfig, out: Path, ds: Any, tok: Any, jobs: list[JobSpec],
                         results: list[dict[str, Any]]) -> None:
    """Retrieval (``pairs`` tasks): queries per second of every model, written into
    ``results`` (replacing each job's own figure, timed minutes apart): the models of one seed
    in one process, taking turns (:func:`archlab.evaluate.retrieval.search_speed_interleaved`),
    the first ``decode.latency_examples`` test queries against the whole scored pool (0: keep
    each job's own figure). Kept in ``search_speed.json`` for a resumed compare."""
    import torch

    from archlab.evaluate.retrieval import embedding_objective, search_speed_interleaved
    from archlab.run import load_run

    n = cfg.decode.latency_examples
    if ds.kind != "pairs" or not jobs or not n:
        return
    path = out / "search_speed.json"
    done: dict[str, dict[str, float]] = json.loads(path.read_text()) if path.exists() else {}
    todo = [j for j in jobs if j.run_dir not in done]
    if todo:
        torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
        test = ds.test[: cfg.decode.test_examples] if cfg.decode.test_examples else ds.test
        for seed in sorted({j.seed for j in todo}):
            group = [j for j in todo if j.seed == seed]
            log(f"search speed: {len(group)} model(s) of seed {seed}, {min(n, len(test))} queries against "
                f"the pool of {len(test)}, taking turns, fastest of 3")
            models = {}
            for j in group:
                model = load_run(j.run_dir).model
                tr = j.run.train
                models[j.run_dir] = (model, embedding_objective(
                    model, tok, options=dict(j.run.objective.options), max_len=tr.max_len,
                    max_source_len=tr.max_source_len, max_target_len=tr.max_target_len))
            done.update(search_speed_interleaved(models, tok, test, n_queries=n, batch_size=cfg.decode.batch_size))
            path.write_text(json.dumps(done, indent=1))
            del models
    for job, res in zip(jobs, results):
        res.update(done[job.run_dir])


def compare(cfg: CompareConfig) -> Path:
    """Run the whole comparison; returns the output directory (report.md/html inside). A suite
    (``cfg.suite``) runs each member's compare in turn, then writes the combined report."""
    if cfg.suite:
        return compare_suite(cfg)
    from archlab.compare.executors import make_executor

    t0 = time.perf_counter()
    executor = make_executor(cfg)  # (executor ray without the package: one line, before any work)
    ds, kind, n_classes, n_tags, entries = _checked(cfg)  # before anything is written
    try:
        # (before the tokenizer is trained: a cluster that cannot run the jobs is said at once)
        executor.start(cfg.run_dir)
        return _compare(cfg, executor, t0, ds, kind, n_classes, entries, n_tags=n_tags)
    finally:
        executor.close()


def _checked(cfg: CompareConfig) -> tuple[Any, str, int, int, list[EntryConfig]]:
    """The task's dataset, its kind, class count, tag count and the resolved entries, with the
    whole compare checked (:func:`validate`) before any work."""
    from archlab.data import load_dataset
    from archlab.data.datasets import score_kind

    ds = load_dataset(from_dict(_data_cls(), cfg.data, prefix="data"))
    kind = ds.kind
    n_classes = len(ds.label_names) if kind == "label" and ds.label_names else 0
    n_tags = len(ds.label_names) if kind == "tags" and ds.label_names else 0
    entries = resolved_entries(cfg, kind)
    validate(cfg, entries, kind, n_classes, n_tags=n_tags, task=ds.name, scoring=score_kind(ds))
    if kind == "pairs":
        check_retrieval_pool(cfg, ds)
    return ds, kind, n_classes, n_tags, entries


def compare_suite(cfg: CompareConfig) -> Path:
    """A suite: every member's compare checked first (its data generated or read, every job's
    config), so that a bad member fails before the first trains; then each member run as a
    compare of its own in ``<out_dir>/<name>/`` (one code path: :func:`compare`), and the
    combined report written at ``<out_dir>`` from the members' results.json."""
    from archlab.compare.config import suite_members
    from archlab.compare.report.suite import write_suite_report

    t0 = time.perf_counter()
    members = suite_members(cfg)
    for name, m in members:
        try:
            _checked(m)
        except ArchlabError as e:  # (ConfigError included: the same class, the member named)
            raise type(e)(f"suite member {name}: {e}") from None
    out = cfg.run_dir
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "compare.yaml")
    for i, (name, m) in enumerate(members):
        log(f"suite: member {i + 1}/{len(members)}: {name} (data.task={m.data.get('task')}) in {m.run_dir}")
        compare(m)
    write_suite_report(out, cfg, [(name, m.run_dir) for name, m in members], wall_time_s=time.perf_counter() - t0)
    return out


def _compare(cfg: CompareConfig, executor: Any, t0: float, ds: Any, kind: str, n_classes: int,
             entries: list[EntryConfig], *, n_tags: int = 0) -> Path:
    from archlab.compare.report import write_report
    from archlab.data.datasets import score_kind

    scoring = score_kind(ds)

    out, tok, shape = prepare(cfg, ds, kind)
    tokens_per_example = entry_tokens_per_example(cfg, entries, ds, tok, kind)
    sized = {sc: size_entries(cfg, entries, tok, shape, n_classes, sc if cfg.budget.scale_model else 1.0, kind,
                              n_tags=n_tags)
             for sc in sorted({*cfg.budget.scales, 1.0})}
    (out / "sizing.json").write_text(json.dumps(
        {"match": cfg.budget.match, "shape": shape.__dict__,
         "entries": [_jsonable(s) for sc in sorted(sized) for s in sized[sc]]}, indent=1))
    tdir = str(out / "tokenizer")

    tuning: list[dict[str, Any]] = []
    tuned: dict[Any, dict[str, Any]] = {}
    tune_flops: dict[Any, float] = {}  # per entry (per entry and scale with horizon full)
    full = cfg.tune is not None and cfg.tune.horizon == "full"
    tune_jobs = build_jobs(cfg, entries, sized, kind, out, tokens_per_example, tdir, phase="tune", scoring=scoring)
    jobs: list[JobSpec] = []
    results: list[dict[str, Any]] = []
    # without tuning one pass (budget by budget, seed by seed; a teacher entry comes before its
    # students in each); with tuning, wave by wave, since a distilled entry is tuned against
    # its teacher's full run
    for wave in waves(entries) if tune_jobs else [[e.label for e in entries]]:
        wave_tuning = []
        todo = [(f"tuning job {i + 1}/{len(tune_jobs)}", job, out / "jobs" / f"tune-{i:03d}.json")
                for i, job in enumerate(tune_jobs) if job.entry in wave]
        for (_, job, _), res in zip(todo, executor.run(todo)):
            if job.kind == "pretrain":
                # the candidates' shared pretraining: tuning cost of this entry (and budget), once
                key = (job.entry, job.scale) if full else job.entry
                tune_flops[key] = tune_flops.get(key, 0.0) + res["train_flops"]
                continue
            wave_tuning.append({"entry": job.entry, "seed": job.seed, **job.candidate,
                                **({"scale": job.scale} if full else {}),
                                "steps": job.run.train.steps, "val_loss": res.get("val_loss"),
                                "metric": res.get("metric"), "flops": res["train_flops"], "chosen": False,
                                "run_dir": os.path.relpath(job.run_dir, out)})
        if wave_tuning:
            assert cfg.tune is not None
            chosen = choose_tuned(wave_tuning, cfg.tune.metric)
            for key, v in chosen.items():
                what = key if isinstance(key, str) else f"{key[0]} at {_scaled_steps(cfg.train.steps, key[1], cfg.budget.scale_model)} steps"
                log(f"tuned {what}: " + ", ".join(f"{k} {x:g}" for k, x in v.items()))
            tuned.update(chosen)
            for row in wave_tuning:  # every candidate is tuning cost: no reported run is one
                k = _tune_key(row)
                tune_flops[k] = tune_flops.get(k, 0.0) + row["flops"]
            tuning += wave_tuning
            (out / "tuning.json").write_text(json.dumps(tuning, indent=1))
        all_jobs = build_jobs(cfg, entries, sized, kind, out, tokens_per_example, tdir, tuned, scoring=scoring)
        todo = [(f"job {i + 1}/{len(all_jobs)}", job, out / "jobs" / f"job-{i:03d}.json")
                for i, job in enumerate(all_jobs) if job.entry in wave]
        for (_, job, _), res in zip(todo, executor.run(todo)):
            if job.kind == "pretrain":  # (its cost is in the result of the run that starts from it)
                continue
            res["tune_flops"] = tune_flops.get((job.entry, job.scale), tune_flops.get(job.entry, 0.0))
            res["tuned"] = job.tuned
            res["selection"] = selection_note(cfg, job)
            jobs.append(job)
            results.append(res)
    top = max(cfg.budget.scales)
    timed = [(j, r) for j, r in zip(jobs, results) if j.scale == top]
    measure_latency(cfg, out, ds, tok, [j for j, _ in timed], [r for _, r in timed])
    measure_search_speed(cfg, out, ds, tok, [j for j, _ in timed], [r for _, r in timed])
    write_report(out, cfg, results, sizing=sized[1.0 if 1.0 in cfg.budget.scales else top],
                 shape=shape, task_kind=scoring, wall_time_s=time.perf_counter() - t0,
                 tuning=tuning, scales=sorted(cfg.budget.scales))
    return out
