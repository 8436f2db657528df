"""Distillation: zero loss and gradient when the student is the teacher, the temperature
formula, cross-family alignment, a trained teacher makes a student closer to it than training
alone, one-line errors."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from archlab import build_model
from archlab.errors import ConfigError
from archlab.objectives import Distillation, Example, SpecialTokens, make_objective, token_loss
from archlab.objectives.distill import kl_to_teacher, soft_kl
from tests.helpers import tiny

V = 61
SP = SpecialTokens(vocab_size=V, first_normal=6)


def _pairs(n=6, seed=0):
    g = np.random.default_rng(seed)
    return [Example(src=g.integers(6, V, int(g.integers(3, 9))).tolist(),
                    tgt=g.integers(6, V, int(g.integers(2, 7))).tolist()) for _ in range(n)]


def _texts(n=6, seed=0):
    g = np.random.default_rng(seed)
    return [Example(ids=g.integers(6, V, int(g.integers(4, 12))).tolist(), label=int(g.integers(0, 3)))
            for _ in range(n)]


def _model(arch, seed=0, **kw):
    torch.manual_seed(seed)
    model = build_model(tiny(arch, vocab_size=V, **kw))
    if model.cls_head is not None:  # class logits far from uniform, so two students differ
        for p in model.cls_head.parameters():
            torch.nn.init.normal_(p, std=1.0)
    return model


CASES = [("decoder", "seq2seq", _pairs), ("encoder-decoder", "seq2seq", _pairs), ("prefix-lm", "prefix-lm", _texts),
         ("encoder", "masked-lm", _texts), ("decoder", "classification", _texts),
         ("encoder-decoder", "causal-lm", _texts)]


@pytest.mark.parametrize("arch,base,data", CASES)
def test_student_equal_to_teacher_gives_zero_loss_and_gradient(arch, base, data):
    kw = dict(n_classes=3) if base == "classification" else {}
    teacher = _model(arch, **kw)
    student = copy.deepcopy(teacher).train()
    obj = Distillation(SP, arch, 64, teacher=teacher, base=base, alpha=1.0, temperature=2.0,
                       cosine=0.0 if base == "classification" else 1.0)
    batch = obj.build(data(), np.random.default_rng(0))
    out = obj.loss(student, batch)
    out.loss.backward()
    assert abs(float(out.loss.detach())) < 1e-6
    g = max(float(p.grad.abs().max()) for p in student.parameters() if p.grad is not None)
    # a different student: positive loss and a real gradient (the check is not vacuous)
    other = _model(arch, seed=1, **kw).train()
    out = obj.loss(other, batch)
    out.loss.backward()
    assert float(out.loss.detach()) > 1e-3
    g_other = max(float(p.grad.abs().max()) for p in other.parameters() if p.grad is not None)
    # fp32 rounding only: softmax rows sum to 1 within ~1e-7, which leaves a residual gradient
    # that large classifier weights carry back to ~1e-5 at most
    assert g < 3e-5 and g < 1e-3 * g_other, (g, g_other)


def test_soft_kl_matches_the_hand_formula():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    for T in (1.0, 2.0, 4.0):
        want = 0.0
        for zs, zt in zip(s.tolist(), t.tolist()):
            es = [math.exp(z / T) for z in zs]
            et = [math.exp(z / T) for z in zt]
            ps = [e / sum(es) for e in es]
            pt = [e / sum(et) for e in et]
            want += sum(q * math.log(q / p) for q, p in zip(pt, ps))
        want = want / 2 * T * T
        assert float(soft_kl(s, t, T)) == pytest.approx(want, rel=1e-6)


def test_loss_mixes_kl_and_the_own_objective_by_alpha():
    teacher, student = _model("decoder", 0), _model("decoder", 1).train()
    ex = _pairs()
    T, alpha = 3.0, 0.3
    obj = Distillation(SP, "decoder", 64, teacher=teacher, base="seq2seq", alpha=alpha, temperature=T)
    batch = obj.build(ex, np.random.default_rng(0))
    got = float(obj.loss(student, batch).loss.detach())
    hs = obj.base.forward(student, batch).hidden
    ce = float(token_loss(student, hs, batch["labels"]).loss.detach())
    sel = batch["labels"] != -100
    with torch.no_grad():
        zs = student.lm_logits(hs[sel])
        zt = teacher.eval().lm_logits(obj.base.forward(teacher, batch).hidden[sel])
    kl = (torch.softmax(zt / T, -1) * (torch.log_softmax(zt / T, -1) - torch.log_softmax(zs / T, -1))).sum(-1).mean()
    assert got == pytest.approx(alpha * T * T * float(kl) + (1 - alpha) * ce, rel=1e-5)


def test_encoder_decoder_teacher_aligns_with_a_decoder_student():
    """Token-level KD across families: the positions matched between the student's
    ``<bos> src <sep> tgt <eos>`` and the teacher's ``src <eos>`` -> ``tgt <eos>`` predict the
    same tokens, every target token once."""
    teacher = _model("encoder-decoder")
    obj = Distillation(SP, "decoder", 64, teacher=teacher, base="seq2seq")
    ex = _pairs(8)
    b = obj.build(ex, np.random.default_rng(0))
    s_lab = b["labels"].flatten()[b["kd_student_index"]]
    t_lab = b["teacher_labels"].flatten()[b["kd_teacher_index"]]
    assert torch.equal(s_lab, t_lab)
    assert len(s_lab) == sum(len(e.tgt) + 1 for e in ex)
    student = _model("decoder", 1).train()
    out = obj.loss(student, b)
    out.loss.backward()
    assert float(out.loss.detach()) > 0 and obj.teacher_flops(b) > 0


def test_teacher_flops_are_the_teachers_forward():
    from archlab.model.flops import flops_per_example

    teacher = _model("decoder")
    obj = Distillation(SP, "decoder", 64, teacher=teacher, base="seq2seq")
    b = obj.build(_pairs(4), np.random.default_rng(0))
    B, T = b["input_ids"].shape
    n = int((b["labels"] != -100).sum())
    body = flops_per_example(teacher.cfg, tgt_len=T, predicted=0).forward
    assert obj.teacher_flops(b) == B * body + n * 2 * teacher.cfg.d_model * V


def _markov_data(n, seed, V=24, T=16):
    """Texts from a fixed random Markov chain: a teacher can learn its transition
    distributions, which soft targets then hand to the student."""
    g = np.random.default_rng(123)
    P = g.dirichlet(np.full(V - 6, 0.3), size=V - 6)
    r = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = [int(r.integers(0, V - 6))]
        for _ in range(T - 1):
            x.append(int(r.choice(V - 6, p=P[x[-1]])))
        out.append(Example(ids=[i + 6 for i in x]))
    return out


def _train(model, obj, data, steps, lr=3e-3, seed=0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = rng.choice(len(data), 16, replace=False)
        b = obj.build([data[i] for i in idx], rng)
        loss = obj.loss(model, b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_a_student_distilled_from_a_trained_teacher_is_closer_to_it():
    """Teacher: 2 layers, trained on 400 Markov-chain texts. Students: 1 layer, 16 wide, the
    same init and 60 steps on 32 of those texts, with and without the teacher; held-out KL to
    the teacher (measured: 1.01 without, 0.09 with)."""
    torch.set_num_threads(1)  # tiny matrices: one thread is several times faster here
    sp = SpecialTokens(vocab_size=24, first_normal=6)
    train, held = _markov_data(400, 0), _markov_data(64, 1)
    cfg = dict(arch="decoder", vocab_size=24, max_seq_len=32)
    torch.manual_seed(0)
    teacher = build_model(tiny(d_model=32, n_layers=2, d_ff=64, **cfg))
    teacher = _train(teacher, make_objective("causal-lm", sp, "decoder", 32), train, 100, lr=1e-2)
    torch.manual_seed(1)
    init = build_model(tiny(d_model=16, n_heads=2, n_layers=1, d_ff=32, **cfg))
    plain = _train(copy.deepcopy(init), make_objective("causal-lm", sp, "decoder", 32), train[:32], 60, lr=1e-2)
    obj = Distillation(sp, "decoder", 32, teacher=teacher, base="causal-lm", alpha=0.9, temperature=2.0)
    distilled = _train(copy.deepcopy(init), obj, train[:32], 60, lr=1e-2)
    kl_plain, kl_kd = kl_to_teacher(plain, obj, held), kl_to_teacher(distilled, obj, held)
    assert kl_kd < 0.5 * kl_plain, (kl_kd, kl_plain)


@pytest.mark.parametrize("options,msg", [
    (dict(base="seq2seq"), "objective.options.teacher: distillation needs a teacher"),
    (dict(teacher="/nonexistent/run", base="seq2seq"), "objective.options.teacher: /nonexistent/run is not a directory"),
    (dict(teacher="{tmp}", base=None), "objective.options.base: None is not valid"),
    (dict(teacher="{tmp}", base="seq2seq", alpha=1.5), "objective.options.alpha: must be in [0, 1]"),
    (dict(teacher="{tmp}", base="seq2seq", temperature=0), "objective.options.temperature: must be > 0"),
])
def test_bad_options_are_config_errors_naming_the_key(tmp_path, options, msg):
    options = {k: (v.format(tmp=tmp_path) if isinstance(v, str) else v) for k, v in options.items()}
    with pytest.raises(ConfigError) as e:
        make_objective("distillation", SP, "decoder", 64, **options)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_teacher_of_another_family_or_width_is_refused():
    with pytest.raises(ConfigError, match="objective.options.teacher: a encoder teacher cannot supply seq2seq"):
        Distillation(SP, "decoder", 64, teacher=_model("encoder"), base="seq2seq")
    obj = Distillation(SP, "decoder", 64, teacher=_model("decoder"), base="seq2seq", cosine=1.0)
    with pytest.raises(ConfigError, match="objective.options.cosine: the hidden-state cosine loss needs equal widths"):
        obj.check_student(build_model(tiny("decoder", vocab_size=V, d_model=16, n_heads=2)))


# ---------------------------------------------------------------------------------------------
# archlab train end to end: a teacher run, a distilled student, a teacher with another tokenizer
# ---------------------------------------------------------------------------------------------
from tests.train.test_train_cli import CONFIGS, TINY, needs_data  # noqa: E402


@needs_data
def test_train_cli_distils_and_refuses_another_tokenizer(tmp_path, capsys):
    from archlab.cli import main

    cfg = str(CONFIGS / "translation-encoder-decoder.yaml")
    teacher = tmp_path / "teacher"
    assert main(["train", cfg, *TINY, "--out", str(teacher), "--no-progress"]) == 0
    capsys.readouterr()
    student = tmp_path / "student"
    rc = main(["train", cfg, "model.arch=decoder", *TINY, "objective.name=distillation",
               f"objective.options={{teacher: {teacher}, base: seq2seq, alpha: 0.5, temperature: 2.0}}",
               f"tokenizer.path={teacher}/tokenizer", "--out", str(student), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    rows = [json.loads(x) for x in (student / "metrics.jsonl").read_text().splitlines()]
    assert [r["teacher_flops"] for r in rows if "teacher_flops" in r][-1] > 0
    capsys.readouterr()
    # the student trains its own tokenizer (400 tokens again, but another one): refused
    rc = main(["train", cfg, "model.arch=decoder", *TINY, "tokenizer.vocab_size=300",
               "objective.name=distillation", f"objective.options={{teacher: {teacher}, base: seq2seq}}",
               "--out", str(tmp_path / "bad"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "objective.options.teacher:" in err and "another tokenizer" in err
    assert "\n" not in err.splitlines()[-1] and "Traceback" not in err
    rc = main(["train", cfg, *TINY, "objective.name=distillation", "objective.options.base=seq2seq",
               "--out", str(tmp_path / "none"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "objective.options.teacher: distillation needs a teacher" in err
