"""Compare entries that start from an imported checkpoint or are distilled from another entry:
configuration checks, the typed jobs they become, the order they run in and the FLOPs a
distilled run is charged (no training here)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from archlab import build_model
from archlab.compare import executors, runner
from archlab.compare.config import load_compare_config
from archlab.compare.runner import build_jobs, main_run_dir, size_entries, tuning_teacher, validate
from archlab.compare.sizing import Shape
from archlab.config import ModelConfig
from archlab.errors import ConfigError
from archlab.objectives import SpecialTokens
from archlab.run import save_model_dir

TOK = SimpleNamespace(special=SpecialTokens(vocab_size=300), vocab_size=300)
SHAPE = Shape(12.0, 14.0)
BASE = ["model.d_model=32", "model.n_heads=2", "model.n_layers=2", "model.d_ff=64"]
TEACHER_STUDENT = [{"arch": "encoder-decoder", "name": "teacher"},
                   {"arch": "decoder", "name": "student", "distill_from": "teacher",
                    "distill": {"alpha": 0.7, "temperature": 3.0}}]


def _cfg(tmp_path: Path, entries: list[dict], *extra: str):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"entries": entries}))
    return load_compare_config(str(p), [*BASE, f"out_dir={tmp_path / 'out'}", *extra], preset="smoke")


def _jobs(cfg, phase="main", tuned=None):
    out = cfg.run_dir
    sized = {sc: size_entries(cfg, cfg.entries, TOK, SHAPE, 0, sc if cfg.budget.scale_model else 1.0)
             for sc in {*cfg.budget.scales, 1.0}}
    return sized, build_jobs(cfg, cfg.entries, sized, "pair", out, 30.0, "tok", tuned, phase=phase)


def _ckpt(tmp_path: Path, arch: str = "decoder") -> Path:
    m = ModelConfig(arch=arch, vocab_size=300, d_model=48, n_heads=4, n_layers=3, d_ff=96)
    return save_model_dir(tmp_path / "ckpt", build_model(m))


def test_distilled_entry_reads_the_teacher_run_of_its_scale_and_seed(tmp_path):
    cfg = _cfg(tmp_path, TEACHER_STUDENT, "budget.scales=[0.5,1]", "budget.scale_model=true")
    sized, jobs = _jobs(cfg)
    teacher = {(j.scale, j.seed): j for j in jobs if j.entry == "teacher"}
    students = [j for j in jobs if j.entry == "student"]
    assert len(students) == len(teacher) == 2 * len(cfg.seeds)
    for s in students:
        t = teacher[(s.scale, s.seed)]
        assert jobs.index(t) < jobs.index(s)  # the teacher is trained first
        obj = s.run.objective
        assert obj.name == "distillation" and obj.options["teacher"] == t.run_dir == s.teacher_run_dir
        assert (obj.options["base"], obj.options["alpha"], obj.options["temperature"]) == ("seq2seq", 0.7, 3.0)
        assert s.objective == "seq2seq"  # scored as a plain seq2seq model
        # the teacher's forward FLOPs at this scale (scale_model: the teacher is smaller at 0.5)
        assert s.teacher_flops_per_example == sized[s.scale][0]["flops_per_example"] == t.sizing["flops_per_example"]
        assert t.teacher_flops_per_example == 0 and t.run.objective.name == "seq2seq" and t.teacher_run_dir is None
    assert len({s.teacher_flops_per_example for s in students}) == 2


def test_distilled_entry_is_charged_its_teachers_forward(tmp_path):
    from archlab.compare import worker

    _, jobs = _jobs(_cfg(tmp_path, TEACHER_STUDENT))
    t, s = jobs[0], jobs[1]
    summary = {"tokens": 300.0}  # 10 typical examples of 30 tokens
    assert worker._train_flops(summary, t) == pytest.approx(10 * 3 * t.sizing["flops_per_example"])
    assert worker._train_flops(summary, s) == pytest.approx(
        10 * (3 * s.sizing["flops_per_example"] + t.sizing["flops_per_example"]))
    # pretraining has no teacher
    assert worker._train_flops(summary, s, distilled=False) == pytest.approx(10 * 3 * s.sizing["flops_per_example"])


def test_distilled_entry_tuning_reads_the_teachers_full_run(tmp_path):
    cfg = _cfg(tmp_path, TEACHER_STUDENT, "tune={lr: [0.001, 0.003], steps: 4}", "seeds=[3,4]",
               "budget.scales=[0.5,2]")
    assert tuning_teacher(cfg) == (2.0, 3)  # no scale 1: the largest; the tuning seed (first)
    _, tune = _jobs(cfg, "tune")
    st = [j for j in tune if j.entry == "student"]
    assert len(st) == 2
    for j in st:
        assert j.run.objective.options["teacher"] == str(main_run_dir(cfg, cfg.run_dir, "teacher", 2.0, 3))
    _, main = _jobs(cfg)
    assert {j.run_dir for j in main if j.entry == "teacher"} >= {j.teacher_run_dir for j in st}


def test_whole_config_validated_with_a_distilled_entry(tmp_path):
    cfg = _cfg(tmp_path, TEACHER_STUDENT, "tune={lr: [0.001], steps: 4}")
    validate(cfg, cfg.entries, "pair", 0)  # the teacher run does not exist yet: no error
    bad = [TEACHER_STUDENT[0], {**TEACHER_STUDENT[1], "distill": {"alpha": 2.0}}]
    cfg = _cfg(tmp_path, bad)
    with pytest.raises(ConfigError, match=r"entry student.*objective.options.alpha: must be in \[0, 1\]"):
        validate(cfg, cfg.entries, "pair", 0)
    assert not (tmp_path / "out").exists()


def test_compare_runs_teachers_before_students_also_with_tuning(tmp_path, monkeypatch):
    """The orchestration: each distilled run (tuning or full) starts after its teacher's full run."""
    from archlab.data.datasets import Dataset, TextExample

    train = [TextExample(source=f"a b c {i % 7} d", target=f"x y {i % 5} z") for i in range(60)]
    ds = Dataset(train=train, valid=train[:4], test=train[:4], kind="pair", name="t")
    monkeypatch.setattr("archlab.data.load_dataset", lambda _cfg: ds)
    monkeypatch.setattr("archlab.compare.report.write_report", lambda *a, **k: None)
    monkeypatch.setattr(runner, "measure_latency", lambda *a, **k: None)
    done: list[str] = []
    order: list[tuple[str, str]] = []

    def fake_run_job(job, job_path):
        if job.teacher_run_dir is not None:
            assert job.teacher_run_dir in done, f"{job.entry} {job.kind} before its teacher"
        order.append((job.entry, job.kind))
        if job.kind == "main":
            done.append(job.run_dir)
        return {"val_loss": 1.0 / job.run.train.lr if job.kind == "tune" else 2.0, "metric": None,
                "train_flops": 1.0}

    monkeypatch.setattr(executors, "run_job", fake_run_job)
    cfg = _cfg(tmp_path, TEACHER_STUDENT, "tune={lr: [0.001, 0.003], steps: 4}", "tokenizer.vocab_size=300",
               "tokenizer.n_sentinels=0", "budget.match=params")
    runner.compare(cfg)
    assert order == [("teacher", "tune")] * 2 + [("teacher", "main")] * 2 + [("student", "tune")] * 2 \
        + [("student", "main")] * 2
    tuning = yaml.safe_load((cfg.run_dir / "tuning.json").read_text())
    assert [r["entry"] for r in tuning if r["chosen"]] == ["teacher", "student"]


def test_imported_entry_is_not_sized_and_starts_from_its_checkpoint(tmp_path):
    ck = _ckpt(tmp_path)
    cfg = _cfg(tmp_path, [{"arch": "encoder-decoder"}, {"name": "imported", "init_from": str(ck)}],
               f"tokenizer.path={ck}", "tune={lr: [0.001], steps: 4}")
    assert cfg.entries[1].arch == "decoder"  # the checkpoint's
    sized, jobs = _jobs(cfg)
    imp = sized[1.0][1]
    assert imp["rule"] == "imported checkpoint (not sized)" and imp["imported"]
    assert (imp["model"].d_model, imp["model"].n_layers) == (48, 3)  # not the base block's 32 x 2
    job = [j for j in jobs if j.entry == "imported"][0]
    assert job.arch == "decoder" and job.run.train.init_from == str(ck.resolve())
    _, tune = _jobs(cfg, "tune")  # tuned like any entry, each run from the checkpoint
    assert [j.run.train.init_from for j in tune if j.entry == "imported"] == [str(ck.resolve())]
    validate(cfg, cfg.entries, "pair", 0)


def test_imported_entry_with_model_overrides_and_pretraining(tmp_path):
    ck = _ckpt(tmp_path)
    cfg = _cfg(tmp_path, [{"arch": "encoder-decoder"},
                          {"name": "imp", "init_from": str(ck), "model": {"dropout": 0.2},
                           "pretrain": {"objective": "causal-lm", "steps": 3}}], f"tokenizer.path={ck}")
    _, jobs = _jobs(cfg)
    job = [j for j in jobs if j.entry == "imp" and j.kind == "main"][0]
    pre = [j for j in jobs if j.entry == "imp" and j.kind == "pretrain"][0]
    assert job.run.model.dropout == 0.2 and job.run.model.d_model == 48
    # pretraining continues from the checkpoint, fine-tuning from the pretrained model
    assert pre.run.train.init_from == str(ck.resolve()) and pre.run.model.dropout == 0.2
    assert job.run.train.init_from == str(Path(pre.run_dir) / "model") and job.depends_on == [pre.run_dir]


@pytest.mark.parametrize("entries,extra,msg", [
    ([{"arch": "decoder", "distill_from": "encoder-decoder"}, {"arch": "encoder-decoder"}], [],
     "entries[0].distill_from: 'encoder-decoder' is not an earlier entry; choose one of: (none"),
    ([{"arch": "encoder-decoder"}, {"arch": "decoder", "distill_from": "nope"}], [],
     "entries[1].distill_from: 'nope' is not an earlier entry; choose one of: encoder-decoder"),
    ([{"arch": "encoder-decoder"}, {"arch": "decoder", "distill_from": "encoder-decoder",
                                    "distill": {"teacher": "/x"}}], [],
     "entries[1].distill.teacher: set by the compare"),
    ([{"arch": "encoder-decoder"}, {"arch": "decoder", "distill": {"alpha": 0.5}}], [],
     "entries[1].distill: options without distill_from"),
    ([{"arch": "encoder-decoder"}, {"arch": "decoder", "init_from": "/nonexistent"}], [],
     "entries[1].init_from: /nonexistent is not a directory"),
    ([{"arch": "encoder-decoder"}, {"arch": "decoder", "init_from": "{ckpt}"}], [],
     "entries[1].init_from: set tokenizer.path to the checkpoint's tokenizer"),
    ([{"arch": "encoder-decoder"}, {"arch": "decoder", "init_from": "{tmp}"}], ["tokenizer.path={tmp}"],
     "holds neither model.yaml (archlab model directory) nor config.json"),
    ([{"arch": "encoder-decoder"}, {"arch": "prefix-lm", "init_from": "{ckpt}"}], ["tokenizer.path={ckpt}"],
     "entries[1].arch: prefix-lm differs from the checkpoint's (decoder"),
])
def test_bad_entries_are_one_line_config_errors(tmp_path, entries, extra, msg):
    ck = _ckpt(tmp_path)
    (tmp_path / "empty").mkdir()

    def fmt(v):
        return v.format(tmp=tmp_path / "empty", ckpt=ck) if isinstance(v, str) else v

    entries = [{k: fmt(v) for k, v in e.items()} for e in entries]
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, entries, *[fmt(x) for x in extra])
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_given_tokenizer_is_shared_by_every_entry(tmp_path):
    """tokenizer.path (an archlab model directory's tokenizer/) is used, not a new one trained."""
    from archlab.data import Tokenizer
    from archlab.data.datasets import Dataset, TextExample
    from archlab.run import save_model_dir

    tok = Tokenizer.train([f"alpha beta gamma {i}" for i in range(50)], 280, kind="bpe", n_sentinels=0)
    m = ModelConfig(arch="decoder", vocab_size=tok.vocab_size, d_model=32, n_heads=2, n_layers=1, d_ff=64)
    ck = save_model_dir(tmp_path / "ckpt", build_model(m), tok)
    train = [TextExample(source="zeta eta theta", target="iota kappa") for _ in range(10)]
    ds = Dataset(train=train, valid=train[:2], test=train[:2], kind="pair", name="t")
    cfg = _cfg(tmp_path, [{"arch": "encoder-decoder"}, {"name": "imp", "init_from": str(ck)}],
               f"tokenizer.path={ck}", "tokenizer.vocab_size=300")
    _, got, _ = runner.prepare(cfg, ds, "pair")
    assert got.sha256 == tok.sha256
    assert Tokenizer.load(cfg.run_dir / "tokenizer").sha256 == tok.sha256  # what every job reads
