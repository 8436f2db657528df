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
    assert executors.job_slots(_cfg(tmp_path, "gpus_per_job=2")) == ["0,1", "2,3"]
    _gpus(monkeypatch, 3, visible="4,6,7")
    assert executors.job_slots(_cfg(tmp_path)) == ["4", "6", "7"]
    assert executors.job_slots(_cfg(tmp_path, "gpus_per_job=2")) == ["4,6"]  # the odd one out idles
    with pytest.raises(ConfigError, match="gpus_per_job=4: this machine has 3 CUDA device"):
        executors.job_slots(_cfg(tmp_path, "gpus_per_job=4"))
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
