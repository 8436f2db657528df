"""Where ``archlab compare`` runs its jobs (``executor:``).

Either way a job is the same child process, ``python -m archlab.compare.worker JOB.json``
(:func:`run_job`): it writes its ``result.json`` into its run directory, a finished job is
skipped, and a job that was interrupted resumes from its last checkpoint. Executors only
decide where and when each job runs:

- ``local`` (:class:`LocalExecutor`): this machine, one job per ``gpus_per_job`` visible CUDA
  devices at a time (one at a time on a CPU); a job starts once the jobs in its
  ``depends_on`` have finished.
- ``ray`` (:class:`RayExecutor`): each job a Ray task holding ``gpus_per_job`` GPUs and the CPUs
  it trains with, on any node of a Ray cluster. A job's task is given the object refs of the
  tasks it depends on (a distilled run's teacher, the pretraining it starts from), so Ray
  starts it once they have finished; a task whose worker died (killed, crashed, node lost) is
  run again from its checkpoint, ``ray.max_retries`` times. Run directories are read and written
  by every node: the output directory must be on a filesystem they all mount, which is checked
  at start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from archlab.compare.config import CompareConfig
from archlab.compare.jobs import JobSpec, job_to_dict, log
from archlab.errors import ArchlabError, ConfigError

Item = tuple[str, JobSpec, Path]  # (log line, job, job file)


class JobDied(ArchlabError):
    """A job's worker ended without an error of its own (no ``error.txt``): killed by a signal
    (OOM killer, pre-emption, ``kill -9``) or crashed. Worth running again; a job's own error
    (a bad setting, a diverged loss) is not."""


def _what(job: JobSpec) -> str:
    what = f"[{job.entry} seed {job.seed}" + (f" scale {job.scale:g}" if job.scale != 1.0 else "") + "]"
    if job.kind == "tune":
        what = f"[{job.entry} tuning " + ", ".join(f"{k} {v:g}" for k, v in job.candidate.items() if v is not None) + "]"
    elif job.kind == "pretrain":
        what = what[:-1] + " pretraining]"
    return what


def finished_result(job: JobSpec) -> dict[str, Any] | None:
    """The job's ``result.json`` if it finished earlier (a resumed compare skips it), else None."""
    p = Path(job.run_dir) / "result.json"
    if not p.exists():
        return None
    log(f"{_what(job)} done earlier: {p}")
    return json.loads(p.read_text())


def run_job(job: JobSpec, job_path: Path, devices: str | None = None) -> dict[str, Any]:
    """Run one job in a child process (or reuse its ``result.json``); returns its result.
    ``devices``: the CUDA devices it gets (``CUDA_VISIBLE_DEVICES``); with more than one the
    worker trains under torch's elastic launcher, one process per device (DDP). Raises
    :class:`JobDied` when the worker ended without an error of its own, else ArchlabError."""
    done = finished_result(job)
    if done is not None:
        return done
    what = _what(job)
    result_path = Path(job.run_dir) / "result.json"
    job_path.parent.mkdir(parents=True, exist_ok=True)
    job_path.write_text(json.dumps(job_to_dict(job), indent=1))
    err = Path(job.run_dir) / "error.txt"
    err.unlink(missing_ok=True)  # (an earlier attempt's: this attempt's own tells the two apart)
    if job.evaluate_only:
        log(f"{what} evaluating its checkpoint as it is ({job.arch}, zero-shot: no training)")
    else:
        log(f"{what} training {job.arch} with {job.objective} for {job.run.train.steps} steps"
            + (f" after {job.pretrain_objective} pretraining" if job.pretrain_objective else ""))
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["ARCHLAB_PARENT_PID"] = str(os.getpid())  # the worker dies with this process (worker.py)
    cmd = [sys.executable, "-m", "archlab.compare.worker", str(job_path)]
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
        n = len(devices.split(","))
        if n > 1:  # torchrun: rank 0 decodes and scores after the ranks trained
            env.pop("ARCHLAB_PARENT_PID")  # (the ranks' parent is torchrun)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                   "-m", "archlab.compare.worker", str(job_path)]
    proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        if err.exists():
            raise ArchlabError(f"entry {job.entry} seed {job.seed} failed: {err.read_text().strip()}")
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        log(f"{what} worker died ({how}) without an error of its own")
        raise JobDied(f"entry {job.entry} seed {job.seed} failed: worker died ({how})")
    return json.loads(result_path.read_text())


def check_order(items: list[Item]) -> None:
    """Every job is listed after the jobs of the same list it depends on (build_jobs' order)."""
    order = {job.run_dir: i for i, (_, job, _) in enumerate(items)}
    for i, (_, job, _) in enumerate(items):
        late = [d for d in job.depends_on if order.get(d, -1) >= i]
        if late:
            raise ArchlabError(f"compare: job {job.run_dir} is listed before {late[0]}, which it needs")


class Executor:
    """Runs a list of jobs, results in list order. A job waits for the jobs of the same list in
    its ``depends_on``; those of earlier lists have finished."""

    def start(self, out: Path) -> None:
        """Before the first job (``out``: the compare's output directory)."""

    def run(self, items: list[Item]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        """After the last job (also after a failure)."""


def job_slots(cfg: CompareConfig) -> list[str | None]:
    """Concurrent job slots: the visible CUDA devices in groups of ``gpus_per_job`` (each
    slot's ``CUDA_VISIBLE_DEVICES``); ``[None]`` (one job at a time, the parent's devices)
    with fewer than two GPUs and ``gpus_per_job`` 1; on a machine without CUDA, ``cpu_jobs``
    slots of ``None`` (that many jobs at once, each with ``train.threads`` threads)."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    k = cfg.gpus_per_job
    if k > 1 and n < k:
        raise ConfigError(f"gpus_per_job={k}: this machine has {n} CUDA device(s)")
    if n == 0 and k == 1:
        return [None] * cfg.cpu_jobs
    if n < 2 and k == 1:
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in visible.split(",") if x.strip()][:n] if visible else [str(i) for i in range(n)]
    return [",".join(ids[i:i + k]) for i in range(0, len(ids) - k + 1, k)]


def run_jobs(items: list[Item], slots: list[str | None]) -> list[dict[str, Any]]:
    """Run jobs on this machine, one per slot at a time, results in order. A job starts after
    the jobs of the same list in its ``depends_on`` (a distilled run's teacher, the pretraining
    it starts from) have finished; those of earlier lists are done. One at a time, the list's
    order is the order (:func:`~archlab.compare.runner.build_jobs` lists a dependency first)."""
    check_order(items)
    if len(slots) <= 1:
        slot = slots[0] if slots else None
        out = []
        for line, job, path in items:
            log(line)
            out.append(run_job(job, path) if slot is None else run_job(job, path, slot))
        return out
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    results: dict[int, dict[str, Any]] = {}
    free = list(slots)  # (only this thread takes and returns slots)
    pending = list(range(len(items)))
    dirs = {items[i][1].run_dir: i for i in pending}
    running: dict[Any, tuple[int, str | None]] = {}
    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        while pending or running:
            ready = [i for i in pending if all(d not in dirs or dirs[d] in results
                                               for d in items[i][1].depends_on)]
            while ready and free:
                i = ready.pop(0)
                pending.remove(i)
                slot = free.pop(0)
                line, job, path = items[i]
                log(f"{line}" + (f" (devices {slot})" if slot is not None else ""))
                running[pool.submit(run_job, job, path, slot)] = (i, slot)
            if not running:
                raise ArchlabError("compare: jobs wait on a dependency that is not scheduled")  # (not reachable)
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in done:
                i, slot = running.pop(f)
                results[i] = f.result()  # a failed job raises here; the running ones finish first
                free.append(slot)
    return [results[i] for i in range(len(items))]


class LocalExecutor(Executor):
    """This machine: :func:`run_jobs` over :func:`job_slots`."""

    def __init__(self, cfg: CompareConfig) -> None:
        self.cfg = cfg
        self.slots: list[str | None] = [None]

    def start(self, out: Path) -> None:
        self.slots = job_slots(self.cfg)  # one job per GPU (or per gpus_per_job GPUs) at a time; on a CPU, one
        if self.slots != [None]:
            log(f"compare: {len(self.slots)} job(s) at a time, " + (
                f"on CUDA devices {' | '.join(str(x) for x in self.slots)}" if self.slots[0] is not None
                else f"on the CPU ({self.cfg.train.threads or 'default'} torch thread(s) each)"))

    def run(self, items: list[Item]) -> list[dict[str, Any]]:
        return run_jobs(items, self.slots)


# --------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------
def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("executor: ray needs the ray package: pip install archlab[ray]") from None
    return ray


def _ray_job(job: JobSpec, job_path: str, cwd: str, *dependencies: Any) -> dict[str, Any]:
    """One job as a Ray task. ``dependencies``: the results of the jobs it waits on (Ray resolves
    the refs it was given before calling it, so a job never starts before them)."""
    import ray

    os.chdir(cwd)  # the driver's directory: relative paths (out_dir, data.path) mean the same here
    devices = os.environ.get("CUDA_VISIBLE_DEVICES") if ray.get_gpu_ids() else None  # (set by Ray)
    return run_job(job, Path(job_path), devices)


def _read_marker(path: str, cwd: str) -> tuple[str | None, bool]:
    """On one node: the marker the driver wrote (None if this node does not see it) and whether
    the driver's working directory exists here."""
    p = Path(path)
    return (p.read_text() if p.exists() else None), os.path.isdir(cwd)


class RayExecutor(Executor):
    """Each job a Ray task (module docstring); ``cfg.ray``: the cluster address and retries."""

    def __init__(self, cfg: CompareConfig) -> None:
        self.ray = _import_ray()
        self.cfg = cfg
        self.cwd = os.getcwd()
        self.started_ray = False
        self.options: dict[str, Any] = {}

    def start(self, out: Path) -> None:
        ray = self.ray
        addr = self.cfg.ray.address
        if not ray.is_initialized():  # (a caller's own ray.init, e.g. a test's, is used as it is)
            self._check_answers(addr)
            try:
                ray.init(address=addr)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ArchlabError(f"ray.address={addr}: cannot join a Ray cluster: "
                                   f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}; "
                                   "start one with `ray start --head` or give --ray-address HOST:PORT") from None
            self.started_ray = True
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.options = self._resources(nodes)
        log(f"compare: jobs as Ray tasks on {len(nodes)} node(s), each holding "
            f"{self.options['num_cpus']:g} CPU(s) and {self.options['num_gpus']:g} GPU(s), up to "
            f"{self.options['max_retries']} retries")
        self.check_shared(out, nodes)
        self.remote = ray.remote(_ray_job).options(**self.options)

    @staticmethod
    def _check_answers(addr: str | None) -> None:
        """The cluster ray.init would join answers, else one line: Ray retries a dead address
        without end (as with a record of a cluster that was killed, which ``auto`` and the default
        read). Where Ray's own lookup is not there, nothing is checked."""
        import socket

        try:
            from ray._private.services import canonicalize_bootstrap_address

            where = canonicalize_bootstrap_address(addr or "auto")
        except Exception:  # (a private helper of Ray's; its absence or a bad address is ray.init's)
            return
        if not where or addr == "local":
            return  # ray.init starts a new local cluster
        host, _, port = where.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except (OSError, ValueError):
            raise ArchlabError(f"ray.address={addr or '(default)'}: no Ray cluster answers at {where}; start one "
                               "with `ray start --head`, give --ray-address HOST:PORT of a running one, or "
                               "--ray-address local for a new one on this machine") from None

    def _resources(self, nodes: list[dict[str, Any]]) -> dict[str, Any]:
        """Task options: ``gpus_per_job`` GPUs on a cluster with GPUs (none on a CPU cluster, as
        the local executor trains on the CPU), the job's CPUs; refused, in one line, where no
        node has that much (Ray would wait for such a node forever)."""
        cfg = self.cfg
        k = cfg.gpus_per_job
        most_gpus = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
        if most_gpus == 0 and k > 1:
            raise ConfigError(f"gpus_per_job={k}: the Ray cluster has no GPU")
        if 0 < most_gpus < k:
            raise ConfigError(f"gpus_per_job={k}: no node of the Ray cluster has {k} GPUs (most: {most_gpus:g})")
        gpus = k if most_gpus else 0
        cpus = cfg.ray.cpus_per_job or (cfg.train.threads or 1) * max(gpus, 1)  # one process per GPU
        most_cpus = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
        if most_cpus < cpus:
            raise ConfigError(f"ray.cpus_per_job: a job needs {cpus} CPU(s) (train.threads x processes) and no "
                              f"node of the Ray cluster has that many (most: {most_cpus:g}); set "
                              "ray.cpus_per_job or train.threads lower")
        return {"num_cpus": cpus, "num_gpus": gpus, "max_retries": cfg.ray.max_retries,
                "retry_exceptions": [JobDied]}

    def check_shared(self, out: Path, nodes: list[dict[str, Any]]) -> None:
        """Every node sees the output directory: a task pinned to each node reads a marker with
        a fresh token that the driver wrote there. One line naming the path and node if not."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.ray
        out.mkdir(parents=True, exist_ok=True)
        marker = out.resolve() / f".ray-visible-{uuid.uuid4().hex[:8]}"
        token = uuid.uuid4().hex
        marker.write_text(token)
        try:
            probe = ray.remote(_read_marker)
            refs = [probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
                n["NodeID"], soft=False)).remote(str(marker), self.cwd) for n in nodes]
            for n, (seen, has_cwd) in zip(nodes, ray.get(refs)):
                where = n.get("NodeManagerHostname") or n.get("NodeManagerAddress")
                if seen != token:
                    raise ArchlabError(f"{out.resolve()}: Ray node {where} does not see this output directory "
                                       f"({'another' if seen is not None else 'no'} {marker.name} there); put --out on "
                                       "a filesystem that every node mounts at the same path")
                if not has_cwd:
                    raise ArchlabError(f"{self.cwd}: Ray node {where} has no such directory; run archlab compare "
                                       "from a directory on the filesystem every node mounts")
        finally:
            marker.unlink(missing_ok=True)

    def run(self, items: list[Item]) -> list[dict[str, Any]]:
        """Submit every unfinished job at once, each with the refs of the jobs it waits on;
        then collect. A failed job does not stop the others (their results are kept for a
        resumed compare); the first failure in list order is raised when all have ended."""
        ray = self.ray
        check_order(items)
        results: dict[int, dict[str, Any]] = {}
        refs: dict[str, Any] = {}  # run_dir -> the ref of its task
        index: dict[Any, int] = {}
        for i, (line, job, path) in enumerate(items):
            done = finished_result(job)
            if done is not None:
                results[i] = done
                continue
            deps = [refs[d] for d in job.depends_on if d in refs]  # (finished ones need no waiting)
            log(f"{line}: Ray task {_what(job)}" + (f", after {len(deps)} job(s) it needs" if deps else ""))
            ref = self.remote.remote(job, str(path), self.cwd, *deps)
            refs[job.run_dir] = ref
            index[ref] = i
        failed: dict[int, str] = {}
        pending = list(index)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            i = index[ready[0]]
            job = items[i][1]
            try:
                results[i] = ray.get(ready[0])
                log(f"{items[i][0]} finished: {_what(job)} ({len(results)}/{len(items)})")
            except ray.exceptions.RayTaskError as e:
                # the job's own error, or that of a job it waited on (the earlier one is raised)
                cause = e.cause if isinstance(e.cause, BaseException) else e
                failed[i] = str(cause).strip().splitlines()[0]
            except ray.exceptions.RayError as e:  # its worker or node died past the retries
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                failed[i] = f"entry {job.entry} seed {job.seed} failed: {type(e).__name__}: {first}"
        if failed:
            first = min(failed)
            more = len(failed) - 1
            raise ArchlabError(failed[first] + (f" ({more} more job(s) failed or waited on a failed one; "
                                                "finished jobs are kept)" if more else ""))
        return [results[i] for i in range(len(items))]

    def close(self) -> None:
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False


def make_executor(cfg: CompareConfig) -> Executor:
    """The executor ``cfg.executor`` names (ray: ConfigError, in one line, without the package)."""
    return RayExecutor(cfg) if cfg.executor == "ray" else LocalExecutor(cfg)
