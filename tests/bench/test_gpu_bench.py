"""bench/gpu.py: the peak table it computes MFU from, and that its smoke run (toy sizes, CPU)
runs end to end on matched weights and prints one ratio line per comparison."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_peak_by_device_name():
    peak = _load().peak_tflops
    assert peak("NVIDIA H200") == 989.0
    assert peak("NVIDIA H100 80GB HBM3") == 989.0  # SXM
    assert peak("NVIDIA H100 PCIe") == 756.0
    assert peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak("NVIDIA L4") == 121.0
    assert peak("NVIDIA L40S") == 362.0  # not L4's
    assert peak("NVIDIA A10G") is None  # not A10's: no published bf16 figure
    assert peak("Tesla T4") is None


@pytest.mark.slow
def test_smoke_run_on_cpu():
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(SCRIPT.parents[1] / "src")}
    r = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--device", "cpu"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "SMOKE RUN" in r.stdout
    names = re.findall(r"^ratio (\S+) = \d+\.\d+$", r.stdout, re.M)
    assert sorted(names) == sorted(f"{c}-{p}" for c in ("decoder", "t5")
                                   for p in ("train", "decode-b1", "decode-b8"))
    # same weights in both libraries: equal first-step losses (fp32) and equal greedy tokens
    losses = re.findall(r"first-step loss .*: archlab (\S+), HF (\S+);", r.stdout)
    assert len(losses) == 2 and all(a == b for a, b in losses), losses
    assert re.findall(r"same tokens as HF: (\d+)/(\d+)", r.stdout) == [("1", "1"), ("8", "8")] * 2
