"""This machine's dense fp32 GEMM rate, and "MFU vs measured GEMM" lines for the CPU benches
(bench/train_step.py, bench/ssm.py, bench/moe.py).

A CPU has no published peak that a training step could reach, so the ceiling is measured: the
same ``torch.matmul`` on the model's own largest products (:func:`gemm_shapes`), with the
threads the bench runs with, best of several timed trials per shape. A training step's MFU is
then the model's FLOPs per step (archlab's accounting, ``archlab.flops_per_example(...).train``:
3 x the forward matrix products it executes, MoE active experts only, Mamba-2's chunked SSD
products included) over the step time, as a fraction of that rate. The step time includes
everything the step does (elementwise work, softmax, routing, the optimizer where the bench
runs one), so 1.0 would be a step made only of GEMMs at the best GEMM speed.

    from _gemm import gemm_shapes, measure_gemm, mfu_line
    shapes = gemm_shapes(model.cfg, n_tokens=B * T)
    rate = measure_gemm(shapes)
    ...  # the timed training steps
    rate = rate + measure_gemm(shapes)  # before and after: one busy moment does not set it
    print(rate.describe())
    print(mfu_line("gpt2", train_flops, step_seconds, rate))
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch

from archlab.config import ModelConfig

Shape = tuple[int, int, int]  # (M, K, N): (M, K) @ (K, N)


def gemm_shapes(cfg: ModelConfig, n_tokens: int, top: int = 3) -> list[Shape]:
    """The ``top`` largest forward matrix products (by FLOPs) of one step of ``cfg`` over
    ``n_tokens`` tokens per stack: attention projections, dense or expert feed-forwards (an
    expert's rows: n_tokens x top_k / n_experts, its share under even routing), Mamba
    projections, and the LM head over every token."""
    d, g = cfg.d_model, (2 if cfg.gated else 1)
    n = max(1, n_tokens)
    shapes: set[Shape] = {(n, d, cfg.vocab_size)}
    for mixer, ffn in cfg.all_layer_kinds():
        if mixer == "attention":
            q, kv = cfg.n_heads * cfg.dim_head, cfg.kv_heads * cfg.dim_head
            shapes |= {(n, d, q + 2 * kv), (n, q, d)}
        else:
            s = cfg.ssm_cfg
            di = s.inner(d)
            if mixer == "mamba":
                shapes |= {(n, d, 2 * di), (n, di, d)}
            else:  # Mamba-2's in_proj: x, z, B, C and dt in one product
                shapes |= {(n, d, 2 * di + 2 * s.n_groups * s.d_state + s.heads(d)), (n, di, d)}
        if ffn == "dense":
            shapes |= {(n, d, g * cfg.d_ff), (n, cfg.d_ff, d)}
        elif ffn == "moe":
            m = cfg.moe_cfg
            F = m.d_expert(cfg.d_ff)
            rows = max(1, round(n * m.top_k / m.n_experts))
            shapes |= {(rows, d, g * F), (rows, F, d)}
    return sorted(shapes, key=lambda s: -s[0] * s[1] * s[2])[:top]


@dataclass
class GemmRate:
    """Measured fp32 GEMM FLOP/s of each trial, per shape, at ``threads`` threads."""

    shapes: list[Shape]
    trials: list[list[float]]  # per shape: FLOP/s of each timed trial
    threads: int

    @property
    def best(self) -> list[float]:
        return [max(t) for t in self.trials]

    @property
    def median(self) -> list[float]:
        return [statistics.median(t) for t in self.trials]

    @property
    def peak(self) -> float:
        """The ceiling used for MFU: the fastest shape's best trial (FLOP/s)."""
        return max(self.best)

    def __add__(self, other: GemmRate) -> GemmRate:
        """The trials of two measurements of the same shapes (taken before and after a case's
        timed steps, so that a busy moment during one does not set the ceiling)."""
        assert self.shapes == other.shapes and self.threads == other.threads
        return GemmRate(self.shapes, [a + b for a, b in zip(self.trials, other.trials)], self.threads)

    def describe(self) -> str:
        per = ", ".join(f"{m}x{k}x{n} {b / 1e9:.1f} (median {md / 1e9:.1f})"
                        for (m, k, n), b, md in zip(self.shapes, self.best, self.median))
        n = min(len(t) for t in self.trials)
        return (f"fp32 GEMM measured ({self.threads} threads, best of {n} per shape, GFLOP/s): "
                f"{per}; ceiling {self.peak / 1e9:.1f} GFLOP/s")


def measure_gemm(shapes: list[Shape], trials: int = 7, min_trial_s: float = 0.02) -> GemmRate:
    """Time ``torch.matmul`` of each (M, K) @ (K, N) fp32 shape with torch's current thread
    count: two warm-up products, then ``trials`` trials of enough repeats to last about
    ``min_trial_s`` each; the FLOP/s of every trial."""
    shapes = list(dict.fromkeys(shapes))  # each shape once, in order
    out_trials = []
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        out = torch.empty(m, n)
        for _ in range(2):
            torch.matmul(a, b, out=out)
        t = time.perf_counter()
        torch.matmul(a, b, out=out)
        reps = max(1, math.ceil(min_trial_s / max(time.perf_counter() - t, 1e-9)))
        rates = []
        for _ in range(trials):
            t = time.perf_counter()
            for _ in range(reps):
                torch.matmul(a, b, out=out)
            rates.append(2 * m * k * n * reps / (time.perf_counter() - t))
        out_trials.append(rates)
    return GemmRate(shapes, out_trials, torch.get_num_threads())


def mfu(flops: float, seconds: float, rate: GemmRate) -> float:
    return flops / seconds / rate.peak


def mfu_line(name: str, flops: float, seconds: float, rate: GemmRate) -> str:
    """``mfu NAME = 0.xx (of measured GEMM X GFLOP/s)``, printed beside ``ratio NAME = X``."""
    return f"mfu {name} = {mfu(flops, seconds, rate):.2f} (of measured GEMM {rate.peak / 1e9:.1f} GFLOP/s)"


def profile_step(fn, name: str, rows: int = 12) -> None:
    """``--profile``: one call of ``fn`` (a training step) under torch.profiler: operators by
    self CPU time, and the share of the step the matrix products took with the rate they ran
    at (the profiler's FLOPs for mm / addmm / bmm; it has none for _grouped_mm). MFU is about
    that share x that rate / the ceiling, so the two say where an MFU below target goes."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)  # microseconds
    mm = [e for e in events if e.key in _MATMUL_OPS]
    mm_t = sum(e.self_cpu_time_total for e in mm)
    counted = [e for e in mm if e.flops]
    rate = (sum(e.flops for e in counted) / max(sum(e.self_cpu_time_total for e in counted), 1) / 1e3
            if counted else float("nan"))  # GFLOP/s
    per = ", ".join(f"{e.key} {e.self_cpu_time_total / 1e3:.0f} ms"
                    + (f" at {e.flops / max(e.self_cpu_time_total, 1) / 1e3:.1f} GFLOP/s" if e.flops else "")
                    for e in sorted(mm, key=lambda e: -e.self_cpu_time_total))
    print(f"[profile {name}] one step, {total / 1e3:.1f} ms of operator self time; matrix products "
          f"{mm_t / max(total, 1):.0%} of it, at {rate:.1f} GFLOP/s ({per}); the rest: elementwise, "
          "copies, reductions, attention kernels")
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows))


_MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::_grouped_mm"}
