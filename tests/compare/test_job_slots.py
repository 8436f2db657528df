"""``archlab compare`` uses what the machine has: with several GPUs, jobs run concurrently, one
per ``gpus_per_job`` devices (each job sees only its own through ``CUDA_VISIBLE_DEVICES``), a
distilled job after its teacher's; on a CPU, one at a time as before."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from archlab.compare import executors
from archlab.compare.config import load_compare_config
from archlab.errors import ConfigError


def _cfg(tmp_path: Path, *overrides: str):
    return load_compare_config(None, [f"out_dir={tmp_path / 'cmp'}", *overrides], "smoke")


def _gpus(monkeypatch, n: int, visible: str | None = None) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


def test_slots_follow_the_visible_devices(tmp_path, monkeypatch):
    _gpus(monkeypatch, 0)
    assert executors.job_slots(_cfg(tmp_path)) == [None]  # CPU: one job at a time, as before
    _gpus(monkeypatch, 1)
    assert executors.job_slots(_cfg(tmp_path)) == [None]
    _gpus(monkeypatch, 4)
    assert executors.job_slots(_cfg(tmp_path)) == ["0", "1", "2", "3"]
    assert executors.job_slots(_cfg(tmp_path, "gpus_per_job=2", "train.global_batch=2")) == ["0,1", "2,3"]
    _gpus(monkeypatch, 3, visible="4,6,7")
    assert executors.job_slots(_cfg(tmp_path)) == ["4", "6", "7"]
    assert executors.job_slots(_cfg(tmp_path, "gpus_per_job=2", "train.global_batch=2")) == ["4,6"]  # the odd one out idles
    with pytest.raises(ConfigError, match="gpus_per_job=4: this machine has 3 CUDA device"):
        executors.job_slots(_cfg(tmp_path, "gpus_per_job=4", "train.global_batch=4"))
    with pytest.raises(ConfigError, match="gpus_per_job must be >= 1"):
        _cfg(tmp_path, "gpus_per_job=0")


def test_jobs_run_concurrently_one_per_slot_and_students_after_teachers(monkeypatch):
    both_running = threading.Barrier(2, timeout=10)  # broken unless two jobs overlap
    log: list[tuple[str, str, float, float]] = []

    def fake_run_job(job, path, devices=None):
        t0 = time.perf_counter()
        if job.run_dir in ("a", "b"):
            both_running.wait()
        time.sleep(0.05)
        log.append((job.run_dir, devices, t0, time.perf_counter()))
        return {"run": job.run_dir, "devices": devices}

    monkeypatch.setattr(executors, "run_job", fake_run_job)
    jobs = [SimpleNamespace(run_dir=d, depends_on=[t] if t else []) for d, t in
            (("a", None), ("b", None), ("student-of-a", "a"), ("c", None))]
    items = [(f"job {i}", j, Path(f"{j.run_dir}.json")) for i, j in enumerate(jobs)]
    out = executors.run_jobs(items, ["0", "1"])
    assert [r["run"] for r in out] == ["a", "b", "student-of-a", "c"]  # results in job order
    seen = {d: (dev, t0, t1) for d, dev, t0, t1 in log}
    assert {seen["a"][0], seen["b"][0]} == {"0", "1"}  # a and b ran at once, on different GPUs
    assert seen["student-of-a"][1] >= seen["a"][2]  # the student started after its teacher ended
    # one slot: strictly one after another, in order
    log.clear()
    out = executors.run_jobs([it for it in items if it[1].run_dir != "b" and it[1].run_dir != "a"][:1], ["0"])
    assert out[0]["devices"] == "0"


def test_cpu_jobs_run_that_many_jobs_at_once_on_a_cpu(tmp_path, monkeypatch):
    _gpus(monkeypatch, 0)
    assert executors.job_slots(_cfg(tmp_path, "cpu_jobs=2")) == [None, None]
    _gpus(monkeypatch, 1)  # (a GPU machine: one job per GPU, as before)
    assert executors.job_slots(_cfg(tmp_path, "cpu_jobs=2")) == [None]
    with pytest.raises(ConfigError, match="cpu_jobs must be >= 1, got 0"):
        _cfg(tmp_path, "cpu_jobs=0")
    both_running = threading.Barrier(2, timeout=10)  # broken unless the two jobs overlap

    def fake_run_job(job, path, devices=None):
        both_running.wait()
        return {"run": job.run_dir, "devices": devices}

    monkeypatch.setattr(executors, "run_job", fake_run_job)
    items = [(f"job {d}", SimpleNamespace(run_dir=d, depends_on=[]), Path(f"{d}.json")) for d in ("a", "b")]
    assert executors.run_jobs(items, [None, None]) == [{"run": "a", "devices": None}, {"run": "b", "devices": None}]


def _job_train_sections(cfg) -> list[dict]:
    """The run.train section of every job (main and tuning) the compare would write."""
    from archlab.compare.runner import base_model_config, build_jobs, job_to_dict, resolved_entries
    from archlab.objectives import SpecialTokens

    class Tok:
        vocab_size = 600
        special = SpecialTokens()

    entries = resolved_entries(cfg, "pair")
    models = [base_model_config(cfg, e, Tok, 0) for e in entries]
    sized = {sc: [{"model": m, "params": 1.0, "flops_per_example": 100.0, "rule": "r", "deviation": 0.0,
                   "value": 1.0, "target": 1.0, "entry": e.label} for m, e in zip(models, entries)]
             for sc in {*cfg.budget.scales, 1.0}}
    jobs = [j for phase in ("tune", "main")
            for j in build_jobs(cfg, entries, sized, "pair", cfg.run_dir, 50.0, "tok", phase=phase)]
    assert jobs
    return [job_to_dict(j)["run"]["train"] for j in jobs]


def test_jobs_carry_one_global_batch_whatever_gpus_per_job(tmp_path):
    """gpus_per_job > 1 trains each job over several ranks: the job's config holds the
    compare's micro-batches per step as train.global_batch (grad_accum 1), so its ranks split
    that batch instead of each reading grad_accum micro-batches (README: several GPUs)."""
    tune = "tune={lr: [0.001, 0.002], steps: 5}"
    by_gpus = {}
    for gpus in (1, 2, 4):
        cfg = _cfg(tmp_path, "train.grad_accum=4", tune, f"gpus_per_job={gpus}")
        sections = _job_train_sections(cfg)
        assert all(t["global_batch"] == 4 and t["grad_accum"] == 1 for t in sections), sections[0]
        assert {t["parallel"] for t in sections} == ({"none"} if gpus == 1 else {"ddp"})
        by_gpus[gpus] = [{k: v for k, v in t.items() if k != "parallel"} for t in sections]
    assert by_gpus[1] == by_gpus[2] == by_gpus[4]  # nothing else in a job depends on its GPUs
    cfg = _cfg(tmp_path, "train.global_batch=6", "gpus_per_job=2")
    assert {t["global_batch"] for t in _job_train_sections(cfg)} == {6}


def test_gpus_per_job_must_divide_the_global_batch(tmp_path):
    with pytest.raises(ConfigError, match=r"gpus_per_job=2 does not divide the 1 micro-batch\(es\) per optimizer "
                                          r"step \(train.grad_accum=1\); set train.global_batch to a multiple of 2"):
        _cfg(tmp_path, "gpus_per_job=2")
    with pytest.raises(ConfigError, match="gpus_per_job=4 does not divide the 6 .*train.global_batch=6"):
        _cfg(tmp_path, "train.global_batch=6", "gpus_per_job=4")
    with pytest.raises(ConfigError, match="train.global_batch=4 and train.grad_accum=2 both set"):
        _cfg(tmp_path, "train.global_batch=4", "train.grad_accum=2")
    _cfg(tmp_path, "train.global_batch=6", "gpus_per_job=3")  # divides: accepted
