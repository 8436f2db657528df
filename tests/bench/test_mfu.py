"""bench/_gemm.py, the measured-GEMM ceiling behind the CPU benches' ``mfu NAME`` lines: the
shapes it times are the model's largest products, its rates come from timed trials, the line
format; and bench/moe.py's tiny run prints an mfu line beside each training ratio and finds
the three expert paths equal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from archlab.config import ModelConfig, MoEConfig, SSMConfig

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def gemm():
    sys.path.insert(0, str(BENCH))
    try:
        import _gemm

        yield _gemm
    finally:
        sys.path.remove(str(BENCH))


def test_shapes_are_the_models_largest_products(gemm):
    gpt2 = ModelConfig(arch="decoder", vocab_size=8192, d_model=384, n_heads=6, n_layers=6, d_ff=1536,
                       activation="gelu")
    assert gemm.gemm_shapes(gpt2, 2048) == [(2048, 384, 8192), (2048, 384, 1536), (2048, 1536, 384)]
    # SwiGLU fuses gate and up; GQA's fused qkv projection
    llama = ModelConfig(arch="decoder", vocab_size=100, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2,
                        d_ff=512, activation="swiglu")
    assert gemm.gemm_shapes(llama, 10, top=4) == [(10, 64, 1024), (10, 512, 64), (10, 64, 128), (10, 64, 100)]
    # experts: each gets n x k / E rows
    moe = ModelConfig(arch="decoder", vocab_size=64, d_model=256, n_heads=4, n_layers=1, d_ff=512,
                      activation="swiglu", ffn="E", moe=MoEConfig(n_experts=8, top_k=2))
    assert {(256, 256, 1024), (256, 512, 256)} <= set(gemm.gemm_shapes(moe, 1024, top=6))
    # Mamba-2's in_proj: x, z (2 d_inner), B and C (2 G N) and dt (heads) in one product
    m2 = ModelConfig(arch="decoder", vocab_size=64, d_model=256, n_layers=2, layers="S*",
                     ssm=SSMConfig(d_state=64, head_dim=64))
    assert gemm.gemm_shapes(m2, 100)[0] == (100, 256, 2 * 512 + 2 * 64 + 8)


def test_rates_come_from_timed_trials_and_the_line_format(gemm):
    torch.set_num_threads(1)
    shapes = [(64, 32, 48), (16, 16, 16)]
    r = gemm.measure_gemm(shapes + [(64, 32, 48)], trials=3, min_trial_s=0.001)
    assert r.shapes == shapes and [len(t) for t in r.trials] == [3, 3] and r.threads == 1
    assert all(b >= m > 0 for b, m in zip(r.best, r.median)) and r.peak == max(r.best)
    both = r + gemm.measure_gemm(shapes, trials=2, min_trial_s=0.001)
    assert [len(t) for t in both.trials] == [5, 5] and both.peak >= r.peak
    fake = gemm.GemmRate([(1, 1, 1)], [[2e10, 1e10]], 2)
    assert gemm.mfu_line("gpt2", 3e10, 2.0, fake) == "mfu gpt2 = 0.75 (of measured GEMM 20.0 GFLOP/s)"
    assert "2 threads, best of 2 per shape" in fake.describe() and "ceiling 20.0 GFLOP/s" in fake.describe()


@pytest.mark.slow
def test_moe_bench_tiny_prints_mfu_beside_the_training_ratios():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(BENCH.parent / "src")}
    r = subprocess.run([sys.executable, str(BENCH / "moe.py"), "--tiny", "--threads", "1", "--steps", "1",
                        "--rounds", "1", "--only", "train,experts"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stdout.splitlines()
    for ratio, mfu in (("train", "train"), ("moe-vs-dense-train", "dense-train")):
        i = lines.index(next(x for x in lines if x.startswith(f"ratio {ratio} = ")))
        assert re.fullmatch(rf"mfu {mfu} = \d+\.\d\d \(of measured GEMM \d+\.\d GFLOP/s\)", lines[i + 1]), lines[i:i + 2]
    diffs = re.findall(r"\[experts\] (\S+) +max \|difference\| to the loop \(output, grads\): (\S+)", r.stdout)
    assert [n for n, _ in diffs] == ["loop", "grouped_mm", "padded-bmm"] and all(float(d) <= 1e-5 for _, d in diffs)
    assert re.search(r"^ratio grouped-vs-loop-train = \d+\.\d\d$", r.stdout, re.M)
