"""archlab compare on the probe tasks: they are tuned and selected by token accuracy (their data
kind is pair, but they are scored as probes: data.datasets.score_kind), a BLEU-like eval.metric
is refused before any work, a tiny end-to-end compare runs on each of the four probe tasks
(slow), and a suite runs each member as its own compare with a combined report (slow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from archlab.compare.config import compare_config_from_dict, suite_members
from archlab.compare.runner import TASK_METRIC, build_jobs, compare, resolved_entries, size_entries, validate
from archlab.compare.sizing import Shape
from archlab.config import from_dict
from archlab.data import DataConfig, load_dataset
from archlab.data.datasets import score_kind
from archlab.errors import ConfigError

OPTIONS = {
    "mqar": {"vocab_size": 32, "n_pairs": 2, "seq_len": 8},
    "selective-copy": {"seq_len": 16, "n_tokens": 3, "vocab": 4},
    "induction": {"train_len": 8, "eval_lens": [8, 16], "vocab": 6},
    "copy": {"vocab": 6, "min_len": 2, "max_len": 4, "eval_lens": [4, 8]},
}
MAX_LEN = {"mqar": 16, "selective-copy": 24, "induction": 16, "copy": 16}
ENTRIES = [{"arch": "decoder", "name": "attention"},
           {"arch": "decoder", "name": "mamba-2", "model": {"layers": "S", "ssm": {"head_dim": 16, "d_state": 8}}}]


def _data(task: str) -> dict[str, Any]:
    return {"task": task, "options": {**OPTIONS[task], "n_train": 300, "n_valid": 16, "n_test": 12}}


def _cfg(tmp_path: Path, task: str = "mqar", entries: list[dict] | None = None, **extra: Any):
    d: dict[str, Any] = {
        "name": f"tiny-{task}", "out_dir": str(tmp_path / "out"), "data": _data(task),
        "tokenizer": {"kind": "word", "vocab_size": 64, "n_sentinels": 0},
        "model": {"d_model": 32, "n_heads": 2, "n_layers": 1, "d_ff": 64, "max_seq_len": 256, "dropout": 0.0,
                  "position": "rope"},
        "budget": {"match": "flops", "reference": "decoder"},
        "entries": entries or ENTRIES, "seeds": [0],
        "train": {"steps": 5, "lr": 3e-3, "warmup_steps": 1, "tokens_per_batch": 256, "max_len": MAX_LEN[task],
                  "save_every": 0, "log_every": 1, "threads": 1},
        "eval": {"every": 5, "max_examples": 16, "decode_examples": 8, "metric": "token_acc"},
        "decode": {"num_beams": 1, "test_examples": None, "latency_examples": 2},
    }
    d.update(extra)
    return compare_config_from_dict(d, "test")


def test_probe_tasks_tune_on_token_accuracy(tmp_path):
    assert TASK_METRIC["probe"] == "token_acc" and TASK_METRIC["pair"] == "bleu"
    cfg = _cfg(tmp_path, tune={"lr": [1e-3, 3e-3], "steps": 4, "metric": "task", "decode_examples": 8})
    ds = load_dataset(from_dict(DataConfig, cfg.data))
    assert ds.kind == "pair" and score_kind(ds) == "probe"  # pair data, scored as a probe
    sized = {1.0: size_entries(cfg, cfg.entries, _Tok, Shape(6.0, 4.0), 0)}
    tune = build_jobs(cfg, cfg.entries, sized, ds.kind, cfg.run_dir, 10.0, "tok", phase="tune",
                      scoring=score_kind(ds))
    assert tune and {j.run.eval.metric for j in tune} == {"token_acc"} and {j.score_kind for j in tune} == {"probe"}
    assert all(j.run.eval.decode_examples == 8 for j in tune)  # validation answers decoded
    # the data kind alone (a translation task) would tune on BLEU
    pair = build_jobs(cfg, cfg.entries, sized, "pair", cfg.run_dir, 10.0, "tok", phase="tune")
    assert {j.run.eval.metric for j in pair} == {"bleu"}
    validate(cfg, resolved_entries(cfg, ds.kind), ds.kind, 0, scoring=score_kind(ds))  # token_acc is valid


def test_a_bleu_metric_on_a_probe_compare_fails_before_any_work(tmp_path):
    cfg = _cfg(tmp_path, eval={"every": 5, "decode_examples": 8, "metric": "bleu"})
    with pytest.raises(ConfigError) as e:
        compare(cfg)
    assert "\n" not in str(e.value)
    assert "eval.metric=bleu: probe task mqar is scored by token_acc and exact_match" in str(e.value)
    assert not cfg.run_dir.exists()


def test_suite_members_take_their_own_data_and_sections(tmp_path):
    suite = [{"name": "a", "data": _data("mqar")},
             {"name": "b", "data": _data("copy"), "train": {"max_len": 20, "steps": 7}, "tokenizer": {"vocab_size": 32}}]
    cfg = _cfg(tmp_path, suite=suite)
    (na, a), (nb, b) = suite_members(cfg)
    assert (na, nb) == ("a", "b") and a.data == _data("mqar") and b.data == _data("copy")
    assert (a.train.max_len, a.train.steps) == (16, 5) and (b.train.max_len, b.train.steps) == (20, 7)
    assert b.train.lr == cfg.train.lr and (b.tokenizer.vocab_size, b.tokenizer.kind) == (32, "word")
    assert a.run_dir == cfg.run_dir / "a" and b.run_dir == cfg.run_dir / "b" and not a.suite
    assert [e.label for e in b.entries] == [e.label for e in cfg.entries] and b.seeds == cfg.seeds


@pytest.mark.parametrize("suite, msg", [
    ([{"name": "a b", "data": {"task": "mqar"}}], "suite[0].name: 'a b'; give each member a name of letters"),
    ([{"name": "a", "data": {"task": "mqar"}}, {"name": "a", "data": {"task": "copy"}}],
     "suite[1].name: 'a' is used twice"),
    ([{"name": "a"}], "suite[0].data: give the member's data section"),
    ([{"name": "runs", "data": {"task": "mqar"}}], "is a directory a compare uses itself"),
    ([{"name": "a", "data": {"task": "mqar"}, "train": {"stepz": 3}}], "suite[0] (a): unknown key train.stepz"),
])
def test_bad_suites_are_one_line_errors(tmp_path, suite, msg):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, suite=suite)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_a_bad_suite_member_fails_before_any_member_runs(tmp_path):
    # the second member's data is refused when its dataset is made: before the first trains
    suite = [{"name": "ok", "data": _data("mqar")},
             {"name": "bad", "data": {"task": "copy", "options": {"min_len": 9, "max_len": 4}}}]
    cfg = _cfg(tmp_path, suite=suite)
    with pytest.raises(ConfigError, match=r"^suite member bad: data.options.min_len: need 1 <= min_len <= max_len"):
        compare(cfg)
    assert not cfg.run_dir.exists()


class _Tok:
    from archlab.objectives import SpecialTokens as _S

    vocab_size = 64
    special = _S(vocab_size=64)


# ---------------------------------------------------------------------------------------------
# end to end (worker processes): each probe task, a tuned probe compare, a suite
# ---------------------------------------------------------------------------------------------
def _check_probe_results(out: Path, task: str) -> dict[str, Any]:
    doc = json.loads((out / "results.json").read_text())
    assert doc["task_kind"] == "probe" and doc["primary_metric"] == "token_acc"
    lengths = OPTIONS[task].get("eval_lens", [])
    assert doc["probe"]["eval_lengths"] == lengths
    md = (out / "report.md").read_text()
    for r in doc["results"]:
        assert 0.0 <= r["token_acc"] <= 1.0 and 0.0 <= r["exact_match"] <= 1.0
        assert [k for k in r if k.startswith("token_acc@")] == [f"token_acc@{n}" for n in lengths]
        outs = [json.loads(x) for x in (out / r["outputs_path"]).read_text().splitlines()]
        # per example its scored and right answer tokens: their sums give the run's token_acc
        assert sum(o["right"] for o in outs) / sum(o["scored"] for o in outs) == pytest.approx(r["token_acc"])
        assert r["decode_state_bytes_per_example"] > 0 and r["family"].startswith("decoder")
    for a in doc["entries"]:
        assert f"| {a['entry']} |" in md and f"{a['token_acc']:.3f}" in md
    assert any(v.startswith("Solved (token accuracy >= 0.99") for v in doc["verdict"])
    assert "## Probe accuracy" in md
    assert (out / ("accuracy_vs_length.png" if len(lengths) > 1 else "decode_memory.png")).exists()
    return doc


@pytest.mark.slow
@pytest.mark.parametrize("task", list(OPTIONS))
def test_tiny_compare_on_each_probe_task(tmp_path, task):
    out = compare(_cfg(tmp_path, task))
    doc = _check_probe_results(out, task)
    assert {r["entry"] for r in doc["results"]} == {"attention", "mamba-2"}
    sizing = json.loads((out / "sizing.json").read_text())
    assert [s["reference"] for s in sizing["entries"]] == ["attention", "attention"]


@pytest.mark.slow
def test_a_tuned_probe_compare_picks_by_token_accuracy(tmp_path):
    cfg = _cfg(tmp_path, "mqar", entries=ENTRIES[:1],
               tune={"lr": [1e-4, 1e-2], "steps": 6, "metric": "task", "decode_examples": 16})
    out = compare(cfg)
    tuning = json.loads((out / "tuning.json").read_text())
    assert len(tuning) == 2
    for row in tuning:
        # the tuning run's score is its last validation token_acc (not a BLEU it never had)
        evals = [json.loads(x) for x in (out / row["run_dir"] / "metrics.jsonl").read_text().splitlines()]
        last = [e["eval"] for e in evals if "eval" in e][-1]
        assert row["metric"] == last["token_acc"] is not None
    best = max(tuning, key=lambda r: r["metric"])  # (the first of a tie, as choose_tuned)
    assert [r["chosen"] for r in tuning] == [r is best for r in tuning]
    doc = json.loads((out / "results.json").read_text())
    assert doc["results"][0]["lr"] == best["lr"] == doc["results"][0]["tuned"]["lr"]


@pytest.mark.slow
def test_a_suite_runs_each_member_and_reports_them_together(tmp_path):
    suite = [{"name": "mqar-8", "data": _data("mqar")},
             {"name": "copy", "data": _data("copy"), "train": {"max_len": MAX_LEN["copy"]}}]
    cfg = _cfg(tmp_path, "mqar", suite=suite)
    out = compare(cfg)
    assert out == cfg.run_dir
    members = {name: m for name, m in suite_members(cfg)}
    docs = {}
    for name in ("mqar-8", "copy"):
        assert members[name].run_dir == out / name
        docs[name] = _check_probe_results(out / name, "mqar" if name == "mqar-8" else "copy")
    top = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in top["suite"]] == ["mqar-8", "copy"]
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for name, doc in docs.items():
        assert f"## {name}: {doc['task']['task']}, accuracy per answer token and per example" in md
        assert [m["entries"] for m in top["suite"] if m["name"] == name] == [doc["entries"]]
        for a in doc["entries"]:
            cell = f"{a['token_acc']:.3f}"
            row = f"| {name} | {a['entry']} | {a['d_model']} | {a['d_state'] if a['d_state'] else '-'} | "
            assert row + f"token accuracy | {cell} |" in md, row
            assert f"<td>{cell}</td>" in html
        for v in doc["verdict"]:
            if v.startswith("Solved"):
                assert f"- {name} ({doc['task']['task']}): {v}" in md
    # the copy member's extrapolation plot, inlined in the combined report
    assert (out / "copy" / "accuracy_vs_length.png").exists() and 'alt="copy/accuracy_vs_length"' in html


@pytest.mark.parametrize("preset, members", [("recall", ["mqar-16", "mqar-32"]),
                                             ("copying", ["selective-copy", "induction", "copy"])])
def test_probe_presets_check_and_size(tmp_path, preset, members):
    """Each member of --preset recall / copying passes the whole compare check and sizes every
    entry within 10 % of its group's reference (no training)."""
    from archlab.compare.config import load_compare_config
    from archlab.compare.runner import _checked, prepare

    cfg = load_compare_config(None, [f"out_dir={tmp_path / preset}"], preset)
    assert [n for n, _ in suite_members(cfg)] == members and cfg.cpu_jobs == 2
    for _, m in suite_members(cfg):
        ds, kind, n_classes, _, entries = _checked(m)
        assert score_kind(ds) == "probe" and m.eval.metric == "token_acc"
        _, tok, shape = prepare(m, ds, kind)
        sized = size_entries(m, entries, tok, shape, n_classes, 1.0, kind)
        for s in sized:
            assert abs(s["deviation"]) <= 0.10, s["entry"]
            if "hybrid" in s["entry"]:  # a sized hybrid keeps its attention layer
                assert "attention" in {k for k, _ in s["model"].layer_kinds("decoder")}
        if preset == "recall":
            assert {s["group"] for s in sized} == {"d64", "d128"}
            assert {s["reference"] for s in sized} == {"attention d64", "attention d128"}
