"""A compare job as data: :class:`JobSpec` (written to ``jobs/*.json`` for the worker) and the
compare's log line. Its own module so that the runner (which builds jobs) and the executors
(which run them) both import it without importing each other."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from archlab.compare.config import DecodeConfig
from archlab.config import from_dict, to_dict
from archlab.train.config import RunConfig


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class JobSpec:
    """One compare job, typed: a pretraining run (``kind == "pretrain"``: train, report its
    cost), a tuning run (``"tune"``: train and report the validation score) or a full run
    (``"main"``: train, decode and score the test split). Written once to ``jobs/*.json`` for
    its worker process, which reads it back with :func:`job_from_dict`."""

    kind: str  # "pretrain" | "tune" | "main"
    entry: str
    arch: str
    seed: int
    scale: float
    objective: str
    pretrain_objective: str | None
    run_dir: str
    out_dir: str  # the compare's output directory (outputs_path is relative to it)
    run: RunConfig
    raw_model_keys: list[str]
    sizing: dict[str, Any]
    decode: DecodeConfig
    task_kind: str
    tokens_per_example: float  # tokens the trainer counts per typical example: FLOPs per token
    tuned: dict[str, Any] = field(default_factory=dict)  # values chosen by tuning (main jobs)
    candidate: dict[str, Any] = field(default_factory=dict)  # the values tried (tune jobs)
    tune_metric: str = "val_loss"
    # a distilled entry's teacher: forward FLOPs per example it adds to every training example
    teacher_flops_per_example: float = 0.0
    teacher_run_dir: str | None = None
    # the pretraining job this run starts from (its result holds the pretraining's cost)
    pretrain_run_dir: str | None = None
    # run directories of jobs that must have finished first (teacher, pretraining)
    depends_on: list[str] = field(default_factory=list)
    # the entry's checkpoint evaluated as it is (zero-shot): no training steps
    evaluate_only: bool = False
    # how the test split is scored (archlab.data.datasets.score_kind: "probe" for the probe
    # tasks, whose task_kind is pair); None: task_kind. Sets the tuning runs' task metric.
    score_kind: str | None = None


def job_to_dict(job: JobSpec) -> dict[str, Any]:
    d = to_dict(job)
    d["run"]["data"] = to_dict(job.run.data)  # RunConfig.data is a DataConfig; keep it a plain mapping
    return d


def job_from_dict(d: dict[str, Any], where: str = "job") -> JobSpec:
    from archlab.train.config import run_config_from_dict

    d = dict(d)
    run = run_config_from_dict(d.pop("run"), where=f"{where}: run")
    decode = from_dict(DecodeConfig, d.pop("decode"), prefix="decode")
    return JobSpec(run=run, decode=decode, **d)
