"""Data-parallel overhead on this machine: one process vs 2 gloo processes (DDP and FSDP2).

The same run three ways, same global batch (so the same per-step losses, which the bench
checks): one process with ``--threads`` torch threads and ``grad_accum = 2 x G``; and two
processes (``archlab train --nproc 2``: torch's elastic launcher, gloo) with one thread each
and ``grad_accum = G``, once with ``train.parallel=ddp`` and once with ``fsdp``. A GPT-2-like
decoder (causal LM) on a synthetic corpus written to a temporary directory. The runs take
turns, ``--rounds`` times; training tokens/s is the run's own figure (tokens / training time,
start-up excluded), the median over rounds is reported, with the whole command's wall time.

On a 2-core CPU no speed-up is expected (two 1-thread processes against one 2-thread
process); the point is what the extra processes, the gradient all-reduce (DDP) or the
all-gathers and reduce-scatters (FSDP2) cost. Prints ``ratio NAME = X`` (2-process tokens/s /
1-process tokens/s).

    python bench/scale.py [--rounds 2] [--steps 30] [--threads 2] [--d-model 256]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _corpus(path: Path) -> None:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(600)]
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(40, 120)))
                              for _ in range(3000)))


def _losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and "eval" not in r]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the one-process run")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--grad-accum", type=int, default=2, help="micro-batches per rank (G)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="archlab-scale-"))
    corpus = tmp / "corpus.txt"
    _corpus(corpus)
    d = args.d_model
    cfg = tmp / "run.yaml"
    cfg.write_text(f"""
model: {{arch: decoder, d_model: {d}, n_heads: {max(1, d // 64)}, n_layers: 4, d_ff: {4 * d}, dropout: 0.0,
        max_seq_len: 256, position: learned, activation: gelu_tanh, norm: layernorm}}
data: {{task: file, path: {corpus}}}
tokenizer: {{vocab_size: 2000, n_sentinels: 0}}
objective: {{name: causal-lm}}
train: {{steps: {args.steps}, lr: 1.0e-3, warmup_steps: 5, tokens_per_batch: 4096, max_len: 256,
         save_every: 0, log_every: 1, seed: 0}}
eval: {{every: 0, max_examples: 32, decode_examples: 0}}
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    g = args.grad_accum
    cases = {
        "1 process": ([f"train.grad_accum={2 * g}", f"train.threads={args.threads}"], {}),
        "ddp x2": ([f"train.grad_accum={g}", "train.threads=1", "train.parallel=ddp", "--nproc", "2"], {}),
        "fsdp x2": ([f"train.grad_accum={g}", "train.threads=1", "train.parallel=fsdp", "--nproc", "2"], {}),
    }
    speed: dict[str, list[float]] = {k: [] for k in cases}
    wall: dict[str, list[float]] = {k: [] for k in cases}
    losses: dict[str, list[float]] = {}
    print(f"decoder d_model {d}, 4 layers, {args.steps} steps, global batch {2 * g} micro-batches of "
          f"4096 padded tokens; {args.rounds} round(s), the cases taking turns", flush=True)
    for rnd in range(args.rounds):
        for name, (extra, _) in cases.items():
            out = tmp / f"{name.replace(' ', '_')}-{rnd}"
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "archlab", "train", str(cfg), *extra, "--out", str(out),
                                "--no-progress"], env=env, capture_output=True, text=True)
            dt = time.perf_counter() - t0
            if r.returncode != 0:
                print(f"FAILED {name}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
                return 1
            summary = json.loads(r.stdout.strip().splitlines()[-1])
            speed[name].append(summary["tokens"] / summary["train_time_s"])
            wall[name].append(dt)
            losses[name] = _losses(out)
            print(f"  round {rnd + 1} {name:10s} {speed[name][-1]:9.0f} tokens/s (training), wall {dt:5.1f} s",
                  flush=True)
    ref = losses["1 process"]
    print(f"\n{'case':12s} {'tokens/s':>10s} {'wall s':>8s}  max loss difference vs 1 process")
    for name in cases:
        diff = max(abs(a - b) / abs(a) for a, b in zip(ref, losses[name]))
        print(f"{name:12s} {statistics.median(speed[name]):10.0f} {statistics.median(wall[name]):8.1f}  {diff:.1e}")
    base = statistics.median(speed["1 process"])
    for name, key in (("ddp x2", "scale-ddp2-vs-1proc"), ("fsdp x2", "scale-fsdp2-vs-1proc")):
        print(f"ratio {key} = {statistics.median(speed[name]) / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
