"""Compare entries that start from an imported checkpoint or are distilled from another entry:
configuration checks and the jobs they become (no training here)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from archlab import build_model
from archlab.compare.config import load_compare_config
from archlab.compare.runner import job_specs, size_entries
from archlab.compare.sizing import Shape
from archlab.config import ModelConfig
from archlab.errors import ConfigError
from archlab.objectives import SpecialTokens
from archlab.run import save_model_dir

TOK = SimpleNamespace(special=SpecialTokens(vocab_size=300), vocab_size=300)
SHAPE = Shape(12.0, 14.0)
BASE = ["model.d_model=32", "model.n_heads=2", "model.n_layers=2", "model.d_ff=64"]


def _cfg(tmp_path, entries, *extra):
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"entries": entries}))
    return load_compare_config(str(p), [*BASE, f"out_dir={tmp_path / 'out'}", *extra], preset="smoke")


def test_distilled_entry_gets_the_teacher_entrys_run_and_pays_its_forward(tmp_path):
    cfg = _cfg(tmp_path, [{"arch": "encoder-decoder", "name": "teacher"},
                          {"arch": "decoder", "name": "student", "distill_from": "teacher",
                           "distill": {"alpha": 0.7, "temperature": 3.0}}])
    sized = size_entries(cfg, TOK, SHAPE, 0)
    jobs = job_specs(cfg, sized, "pair", tmp_path / "out")
    seeds = cfg.seeds
    teacher_jobs = [j for j in jobs if j["entry"] == "teacher"]
    student_jobs = [j for j in jobs if j["entry"] == "student"]
    assert len(student_jobs) == len(seeds) and jobs.index(student_jobs[0]) > jobs.index(teacher_jobs[-1])
    for t, s in zip(teacher_jobs, student_jobs):
        obj = s["run"]["objective"]
        assert obj["name"] == "distillation" and obj["options"]["teacher"] == t["run_dir"]
        assert obj["options"]["base"] == "seq2seq" and obj["options"]["alpha"] == 0.7
        assert s["teacher_flops_per_example"] == sized[0]["flops_per_example"] > 0
        assert t["teacher_flops_per_example"] == 0 and t["run"]["objective"]["name"] == "seq2seq"


def test_imported_entry_is_not_sized_and_starts_from_its_checkpoint(tmp_path):
    m = ModelConfig(arch="decoder", vocab_size=300, d_model=48, n_heads=4, n_layers=3, d_ff=96)
    save_model_dir(tmp_path / "ckpt", build_model(m))
    cfg = _cfg(tmp_path, [{"arch": "encoder-decoder"},
                          {"name": "imported", "init_from": str(tmp_path / "ckpt")}],
               f"tokenizer.path={tmp_path / 'ckpt'}")
    sized = size_entries(cfg, TOK, SHAPE, 0)
    imp = sized[1]
    assert imp["rule"] == "imported checkpoint (not sized)" and imp["arch"] == "decoder"
    assert (imp["model"].d_model, imp["model"].n_layers) == (48, 3)
    job = [j for j in job_specs(cfg, sized, "pair", tmp_path / "out") if j["entry"] == "imported"][0]
    assert job["arch"] == "decoder"
    assert job["run"]["train"]["init_from"] == str((tmp_path / "ckpt").resolve())


@pytest.mark.parametrize("entries,extra,msg", [
    ([{"arch": "decoder", "distill_from": "encoder-decoder"}, {"arch": "encoder-decoder"}], [],
     "entries[0].distill_from: 'encoder-decoder' is not an earlier entry"),
    ([{"arch": "encoder-decoder"}, {"arch": "decoder", "distill_from": "nope"}], [],
     "entries[1].distill_from: 'nope' is not an earlier entry; choose one of: encoder-decoder"),
    ([{"arch": "encoder-decoder"}, {"arch": "decoder", "init_from": "/nonexistent"}], [],
     "entries[1].init_from: /nonexistent is not a directory"),
    ([{"arch": "encoder-decoder"}, {"arch": "decoder", "init_from": "{tmp}"}], [],
     "entries[1].init_from: set tokenizer.path to the checkpoint's tokenizer"),
])
def test_bad_entries_are_one_line_config_errors(tmp_path, entries, extra, msg):
    entries = [{k: (v.format(tmp=tmp_path) if isinstance(v, str) else v) for k, v in e.items()} for e in entries]
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, entries, *extra)
    assert msg in str(e.value) and "\n" not in str(e.value)
