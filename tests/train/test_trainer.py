"""Trainer: schedule, accumulation, bit-exact resume after a crash, checkpoint integrity."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from archlab import build_model
from archlab.errors import ArchlabError
from archlab.objectives import Example, SpecialTokens, make_objective
from archlab.train.checkpoint import (
    latest_valid_checkpoint,
    list_checkpoints,
    verify_checkpoint,
)
from archlab.train.config import EvalConfig, TrainConfig
from archlab.train.trainer import Trainer, lr_at
from tests.helpers import tiny

SP = SpecialTokens(vocab_size=61, first_normal=8)


def _examples(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Example(ids=rng.integers(8, 61, size=int(rng.integers(5, 20))).tolist()) for _ in range(n)]


def _batches(examples, bs=4):
    def fn(epoch):
        order = np.random.default_rng(1000 + epoch).permutation(len(examples))
        return [[examples[i] for i in order[j : j + bs]] for j in range(0, len(order), bs)]
    return fn


class Crash(Exception):
    pass


class CrashingObjective:
    """Wraps an objective; raises on the n-th training micro-batch (a kill mid-step)."""

    def __init__(self, obj, crash_at):
        self.obj, self.crash_at, self.calls = obj, crash_at, 0
        self.name = obj.name

    def build(self, ex, rng):
        if len(ex) == 4:  # training micro-batches have 4 examples, validation batches 2
            self.calls += 1
            if self.calls == self.crash_at:
                raise Crash()
        return self.obj.build(ex, rng)

    def loss(self, model, batch):
        return self.obj.loss(model, batch)


def _trainer(tmp, obj=None, arch="decoder", objective="causal-lm", steps=12, **tc):
    torch.manual_seed(123)
    model = build_model(tiny(arch, dropout=0.1))
    obj = obj or make_objective(objective, SP, arch, 64)
    ex = _examples(40)
    kw = dict(steps=steps, lr=3e-3, warmup_steps=2, log_every=1, save_every=3, keep_last=2,
              grad_accum=2, tokens_per_batch=512, seed=7)
    kw.update(tc)
    cfg = TrainConfig(**kw)
    return Trainer(model=model, objective=obj, batches_for_epoch=_batches(ex), valid_examples=_examples(8, 1),
                   train_cfg=cfg, eval_cfg=EvalConfig(every=4), run_dir=tmp, progress=False,
                   log=lambda m: None)


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r and "eval" not in r], \
           [(r["step"], r["eval"]) for r in rows if "eval" in r]


def test_lr_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1) and lr_at(55, cfg) == pytest.approx(0.55)
    lin = TrainConfig(steps=100, lr=1.0, warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    assert lr_at(50, lin) == pytest.approx(0.5)
    wsd = TrainConfig(steps=100, lr=1.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_at(10, wsd) == lr_at(79, wsd) == pytest.approx(1.0)  # stable until the last 20 %
    assert lr_at(90, wsd) == pytest.approx(0.5) and lr_at(100, wsd) == pytest.approx(0.0)


@pytest.mark.slow
@pytest.mark.parametrize("arch,objective", [("decoder", "causal-lm"), ("encoder", "masked-lm")])
def test_crash_and_resume_is_bit_exact(tmp_path, arch, objective):
    ref_dir, crash_dir = tmp_path / "ref", tmp_path / "crash"
    ref = _trainer(ref_dir, arch=arch, objective=objective)
    res = ref.fit()
    assert res.step == 12 and res.stopped == "completed"

    base = make_objective(objective, SP, arch, 64)
    t = _trainer(crash_dir, obj=CrashingObjective(base, crash_at=16), arch=arch)  # mid step 8
    with pytest.raises(Crash):
        t.fit()
    assert [s for s, _ in list_checkpoints(crash_dir / "checkpoints")] == [6, 3]
    t2 = _trainer(crash_dir, obj=base, arch=arch)
    t2.fit(resume=True)

    assert _losses(crash_dir) == _losses(ref_dir)  # identical floats, step by step
    a = load_file(str(ref_dir / "checkpoints" / "step-0000012" / "model.safetensors"))
    b = load_file(str(crash_dir / "checkpoints" / "step-0000012" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_accumulation_matches_bigger_batch(tmp_path):
    # two micro-batches of 4 with token weighting == one batch of 8 (same examples, same order)
    ex = _examples(16)
    obj = make_objective("causal-lm", SP, "decoder", 64)
    results = []
    for accum, bs in ((2, 4), (1, 8)):
        torch.manual_seed(0)
        model = build_model(tiny("decoder"))
        cfg = TrainConfig(steps=2, lr=1e-2, warmup_steps=0, grad_accum=accum, log_every=1, save_every=0,
                          grad_clip=0.0, seed=1)
        tr = Trainer(model=model, objective=obj, batches_for_epoch=_batches(ex, bs), valid_examples=ex[:2],
                     train_cfg=cfg, eval_cfg=EvalConfig(every=0), run_dir=tmp_path / f"a{accum}",
                     progress=False, log=lambda m: None)
        tr.fit()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_truncated_checkpoint_is_refused_and_resume_falls_back(tmp_path, capsys):
    t = _trainer(tmp_path, steps=9)
    t.fit()
    cks = list_checkpoints(tmp_path / "checkpoints")
    newest = cks[0][1]
    w = newest / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(ArchlabError, match=r"model\.safetensors: truncated or altered"):
        verify_checkpoint(newest)
    assert latest_valid_checkpoint(tmp_path / "checkpoints") == cks[1][1]
    assert "skipping invalid checkpoint" in capsys.readouterr().err
    # altered (same size) is caught by the hash
    opt = cks[1][1] / "optimizer.safetensors"
    data = bytearray(opt.read_bytes())
    data[-1] ^= 0xFF
    opt.write_bytes(bytes(data))
    with pytest.raises(ArchlabError, match=r"optimizer\.safetensors: content does not match"):
        verify_checkpoint(cks[1][1])


@pytest.mark.slow
def test_crash_during_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    import archlab.train.checkpoint as ck

    t = _trainer(tmp_path, steps=12)
    real = ck._flatten_optimizer
    calls = {"n": 0}

    def boom(sd):
        calls["n"] += 1
        if calls["n"] == 2:  # during the second checkpoint (step 6)
            raise Crash()
        return real(sd)

    monkeypatch.setattr(ck, "_flatten_optimizer", boom)
    with pytest.raises(Crash):
        t.fit()
    monkeypatch.setattr(ck, "_flatten_optimizer", real)
    root = tmp_path / "checkpoints"
    assert [s for s, _ in list_checkpoints(root)] == [3]
    verify_checkpoint(root / "step-0000003")
    t2 = _trainer(tmp_path, steps=12)
    assert t2.fit(resume=True).step == 12
    assert not list(root.glob(".tmp-*"))


def test_resume_without_checkpoint_is_clear(tmp_path):
    t = _trainer(tmp_path)
    with pytest.raises(ArchlabError, match="no valid checkpoint to resume from"):
        t.fit(resume=True)


def test_early_stopping_and_best(tmp_path):
    t = _trainer(tmp_path, steps=40, lr=0.5)  # diverging lr: validation loss stops improving
    t.eval_cfg = EvalConfig(every=2, early_stopping_patience=2)
    saved = []
    t.save_model_dir = lambda p: saved.append(p.name)
    res = t.fit()
    assert res.stopped == "early_stopping" and res.step < 40
    assert "best" in saved and saved[-1] == "model"
    assert math.isfinite(res.best_metric)


def test_loss_falls_with_training(tmp_path):
    t = _trainer(tmp_path, steps=30)
    t.fit()
    _, evals = _losses(tmp_path)
    assert evals[-1][1]["loss"] < evals[0][1]["loss"]
    shutil.rmtree(tmp_path)


def test_model_config_keeps_padded_pretrained_vocabulary():
    """T5 checkpoints pad their embeddings (32128 rows for 32100 tokens): fine-tuning keeps the
    checkpoint's size; a tokenizer larger than the embeddings is refused."""
    from types import SimpleNamespace

    from archlab.config import ModelConfig
    from archlab.errors import ArchlabError
    from archlab.objectives import SpecialTokens
    from archlab.train.config import RunConfig
    from archlab.train.run import model_config_for

    base = ModelConfig(arch="encoder-decoder", vocab_size=128, d_model=32, n_heads=2, n_layers=1, d_ff=64)
    tok = SimpleNamespace(vocab_size=100, special=SpecialTokens())
    assert model_config_for(RunConfig(), tok, 0, base).vocab_size == 128
    assert model_config_for(RunConfig(), tok, 0).vocab_size == 100  # from scratch: the tokenizer's
    with pytest.raises(ArchlabError, match="only 128"):
        model_config_for(RunConfig(), SimpleNamespace(vocab_size=200, special=SpecialTokens()), 0, base)
