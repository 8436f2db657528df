"""Tuning at the full horizon (``tune.horizon: full``): candidates run each budget's full run,
the chosen one *is* that budget's run for the tuning seed (taken over, not retrained), and
only the other candidates count as tuning FLOPs; per-entry training settings (``entries[i].
train``); the report's tuning, edge-of-grid and learning-rate-source lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archlab.compare import runner
from archlab.compare.report import verdict
from archlab.compare.runner import build_jobs, choose_tuned, resolved_entries
from archlab.compare.worker import _take_over
from archlab.config import save_yaml
from archlab.errors import ArchlabError, ConfigError
from tests.compare.test_engine import _cfg, _stand_in

FULL = "tune={lr: [0.001, 0.002, 0.004], horizon: full}"


def _jobs(cfg, phase, tuned=None, reuse_dirs=None):
    entries = resolved_entries(cfg, "pair")
    return build_jobs(cfg, entries, _stand_in(cfg, entries), "pair", cfg.run_dir, 50.0, "tok", tuned,
                      phase=phase, reuse_dirs=reuse_dirs)


def test_full_horizon_tunes_every_budget_at_its_own_length(tmp_path):
    cfg = _cfg(tmp_path, FULL, "budget.scales=[0.5,1]", "seeds=[0]", "budget.seeds_at_largest=[0,1]")
    tune = _jobs(cfg, "tune")
    assert sorted({(j.scale, j.run.train.steps, j.run.train.lr) for j in tune if j.entry == "decoder"}) == [
        (0.5, 15, 0.001), (0.5, 15, 0.002), (0.5, 15, 0.004), (1.0, 30, 0.001), (1.0, 30, 0.002), (1.0, 30, 0.004)]
    main = _jobs(cfg, "main")
    for j in tune:
        # the budget's own run: its warm-up, checkpoints and evaluations, not the short-run ones
        twin = next(m for m in main if (m.entry, m.scale, m.seed) == (j.entry, j.scale, 0))
        assert j.run.train.warmup_steps == cfg.train.warmup_steps
        assert (j.run.train.save_every, j.run.eval) == (twin.run.train.save_every, twin.run.eval)
    assert len({j.run_dir for j in tune}) == len(tune)
    # short horizon (the default) keeps one set of short runs at scale 1
    short = _jobs(_cfg(tmp_path, "tune={lr: [0.001, 0.002], steps: 7}", "budget.scales=[0.5,1]"), "tune")
    assert {(j.scale, j.run.train.steps) for j in short} == {(1.0, 7)}


def test_choose_tuned_per_budget_scale():
    rows = [{"entry": "a", "scale": sc, "lr": lr, "val_loss": v, "metric": None}
            for sc, lr, v in ((0.5, 1e-3, 3.0), (0.5, 4e-3, 2.0), (1.0, 1e-3, 1.5), (1.0, 4e-3, 1.9))]
    assert choose_tuned(rows, "val_loss") == {("a", 0.5): {"lr": 4e-3}, ("a", 1.0): {"lr": 1e-3}}
    rows[2]["val_loss"] = rows[3]["val_loss"] = None
    with pytest.raises(ArchlabError, match="every tuning run at scale 1 diverged"):
        choose_tuned(rows, "val_loss")


def _fake_compare(tmp_path, monkeypatch, cfg):
    """Run the orchestration with a fake worker: tuning losses favour 4e-3 at the small budget
    and 1e-3 at the large one (the short-horizon bias the full horizon exists for)."""
    from archlab.data.datasets import Dataset, TextExample

    train = [TextExample(source=f"a b c {i % 7} d", target=f"x y {i % 5} z") for i in range(60)]
    ds = Dataset(train=train, valid=train[:4], test=train[:4], kind="pair", name="t")
    monkeypatch.setattr("archlab.data.load_dataset", lambda _cfg: ds)
    seen: dict = {}
    monkeypatch.setattr("archlab.compare.report.write_report", lambda *a, **k: seen.update(k, results=a[2]))
    monkeypatch.setattr(runner, "measure_latency", lambda *a, **k: None)
    jobs: list = []

    def fake_run_job(job, job_path):
        jobs.append(job)
        lr, steps = job.run.train.lr, job.run.train.steps
        loss = (abs(lr - 4e-3) if steps < 30 else abs(lr - 1e-3)) + 1.0
        return {"val_loss": loss if job.kind == "tune" else 9.0, "metric": None, "train_flops": lr * 1e6,
                "entry": job.entry, "scale": job.scale, "seed": job.seed}

    monkeypatch.setattr(runner, "run_job", fake_run_job)
    runner.compare(cfg)
    return jobs, seen


def test_full_horizon_main_run_of_the_tuning_seed_takes_the_chosen_run_over(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, FULL, "budget.scales=[0.5,1]", "seeds=[0]", "budget.seeds_at_largest=[0,1]",
               "tokenizer.vocab_size=300", "tokenizer.n_sentinels=0", "budget.match=params")
    jobs, seen = _fake_compare(tmp_path, monkeypatch, cfg)
    main = [j for j in jobs if j.kind == "main"]
    by = {(j.entry, j.scale, j.seed): j for j in main}
    # each budget got its own choice, and the tuning seed's run is the chosen tuning run
    for (entry, scale, seed), j in by.items():
        want_lr = 4e-3 if scale == 0.5 else 1e-3
        assert j.run.train.lr == want_lr and j.tuned == {"lr": want_lr}
        if seed == 0:
            chosen = next(t for t in jobs if t.kind == "tune" and (t.entry, t.scale) == (entry, scale)
                          and t.run.train.lr == want_lr)
            assert j.reuse_run_dir == chosen.run_dir
        else:
            assert j.reuse_run_dir is None  # other seeds train
    # tuning FLOPs: the candidates not chosen (fake FLOPs = lr * 1e6), per budget
    res = {(r["entry"], r["scale"], r["seed"]): r for r in seen["results"]}
    assert res[("decoder", 0.5, 0)]["tune_flops"] == pytest.approx((1e-3 + 2e-3) * 1e6)
    assert res[("decoder", 1.0, 1)]["tune_flops"] == pytest.approx((2e-3 + 4e-3) * 1e6)
    tuning = json.loads((cfg.run_dir / "tuning.json").read_text())
    assert {(r["scale"], r["lr"]) for r in tuning if r["chosen"]} == {(0.5, 4e-3), (1.0, 1e-3)}


def test_take_over_copies_the_run_and_refuses_a_different_one(tmp_path):
    cfg = _cfg(tmp_path, FULL)
    tune = next(j for j in _jobs(cfg, "tune") if j.entry == "decoder" and j.run.train.lr == 0.002)
    src = Path(tune.run_dir)
    (src / "model").mkdir(parents=True)
    (src / "model" / "w.bin").write_text("weights")
    (src / "checkpoints" / "step-0000030").mkdir(parents=True)
    (src / "summary.json").write_text(json.dumps({"steps": 30}))
    (src / "result.json").write_text("{}")  # the tuning result: not the main run's
    save_yaml(tune.run, src / "config.yaml")  # as the trainer saves it
    main = next(j for j in _jobs(cfg, "main", {"decoder": {"lr": 0.002}}, {("decoder", 1.0): str(src)})
                if j.entry == "decoder")
    assert main.reuse_run_dir == str(src)
    _take_over(main, Path(main.run_dir))
    dst = Path(main.run_dir)
    assert (dst / "model" / "w.bin").read_text() == "weights" and (dst / "summary.json").exists()
    assert not (dst / "checkpoints").exists() and not (dst / "result.json").exists()
    # a main job with another rate must not pass the tuning run off as its own
    other = next(j for j in _jobs(cfg, "main", {"decoder": {"lr": 0.004}}, {("decoder", 1.0): str(src)})
                 if j.entry == "decoder")
    with pytest.raises(ArchlabError, match="cannot stand in.*differs in train"):
        _take_over(other, tmp_path / "elsewhere")


def test_entry_train_settings_apply_and_tuning_overrides_them(tmp_path):
    entries = ("entries=[{arch: encoder-decoder, train: {lr: 0.0007, warmup_steps: 3}}, {arch: decoder}, "
               "{arch: prefix-lm}]")
    cfg = _cfg(tmp_path, entries)
    lr = {j.entry: (j.run.train.lr, j.run.train.warmup_steps) for j in _jobs(cfg, "main")}
    assert lr == {"encoder-decoder": (0.0007, 3), "decoder": (cfg.train.lr, cfg.train.warmup_steps),
                  "prefix-lm": (cfg.train.lr, cfg.train.warmup_steps)}
    tuned = _jobs(cfg, "main", {"encoder-decoder": {"lr": 0.002}})
    assert next(j for j in tuned if j.entry == "encoder-decoder").run.train.lr == 0.002
    for bad, msg in (("steps: 5", "entries.0..train.steps: shared by every entry"),
                     ("lrr: 1", "entries.0..train.lrr: unknown"),
                     ("lr: fast", "entries.0..train.lr")):
        with pytest.raises(ConfigError, match=msg.replace("entries.0..", r"entries\[0\]\.")):
            _cfg(tmp_path, f"entries=[{{arch: decoder, train: {{{bad}}}}}]")


def _agg(entry, lr):
    return {"entry": entry, "scale": 1.0, "lr": lr, "bleu": 1.0, "seeds": [0]}


def test_report_says_where_the_rates_came_from_and_flags_the_grid_edge():
    line = next(v for v in verdict([_agg("a", 2e-3), _agg("b", 2e-3)], "pair", []) if v.startswith("Learning"))
    assert line.startswith("Learning rate: one shared rate, 0.002, not tuned per entry")
    line = next(v for v in verdict([_agg("a", 1e-3), _agg("b", 2e-3)], "pair", []) if v.startswith("Learning"))
    assert line == "Learning rates: set per entry in the config, not tuned in this run (a 0.001, b 0.002)."
    tuning = [{"entry": e, "seed": 0, "scale": sc, "steps": st, "lr": lr, "val_loss": 1.0, "flops": 1e9,
               "chosen": lr == pick} for e, sc, st, pick in (("a", 0.5, 10, 4e-3), ("a", 1.0, 20, 2e-3),
                                                              ("b", 1.0, 20, 1e-3)) for lr in (1e-3, 2e-3, 4e-3)]
    lines = verdict([_agg("a", None), _agg("b", None)], "pair", [], tuning=tuning)
    tl = next(v for v in lines if v.startswith("Tuning"))
    assert "at each budget, full-length runs" in tl and "a chose lr 0.004 at 10 steps, lr 0.002 at 20 steps" in tl
    assert "(of 3 candidates per budget; 4.00G FLOPs beyond the chosen runs)" in tl
    edge = next(v for v in lines if v.startswith("Edge of the grid"))
    assert "a at 10 steps: tuning chose the largest rate tried (0.004)" in edge
    assert "b at 20 steps: tuning chose the smallest rate tried (0.001)" in edge
    assert "a at 20 steps" not in edge  # 2e-3 lies inside the grid
