"""Scoring of probe tasks: per-token accuracy and exact match, overall and per length; an
oracle scores 100 %, noise scores chance; decoding forces the given positions and reads the
long test inputs whole; absolute positions refuse lengths they cannot hold; tiny end-to-end
train + evaluate runs on every probe config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import archlab.generate
from archlab.cli import main
from archlab.data import DataConfig, Tokenizer, corpus_texts, load_dataset
from archlab.data.probes import PROBES
from archlab.errors import ArchlabError
from archlab.evaluate.metrics import probe_metrics
from archlab.evaluate.runner import DecodeOptions, probe_answers, score_probes, score_task
from archlab.generate import generate
from archlab.generate.api import GenerationOutput
from archlab.model import build_model
from tests.helpers import tiny

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = {
    "mqar": {"vocab_size": 64, "n_pairs": 6, "seq_len": 40},
    "selective-copy": {"seq_len": 40, "n_tokens": 6, "vocab": 5},
    "induction": {"train_len": 16, "vocab": 4},  # tested at 16, 32, 64, 128
    "copy": {"vocab": 5, "min_len": 2, "max_len": 8, "eval_lens": [8, 16, 32]},
}


def task_data(task: str, n_test: int = 100):
    ds = load_dataset(DataConfig(task=task, options={**OPTIONS[task], "n_train": 200, "n_valid": 10,
                                                     "n_test": n_test}))
    tok = Tokenizer.train(corpus_texts(ds), 400, kind="word", n_sentinels=0)
    return ds, tok


# ---- the metric ---------------------------------------------------------------------------------
def test_probe_metrics_counts_scored_positions_and_groups():
    m = probe_metrics([[1, 2], [3], [5, 5]], [[1, 2], [3, 4], [5, 6]], [[0, 1], [0, 1], [1]], ["8", "4", "4"])
    assert m["token_acc"] == pytest.approx(3 / 5)  # the short prediction misses position 1
    assert m["exact_match"] == pytest.approx(1 / 3)
    assert m["token_acc@4"] == pytest.approx(1 / 3) and m["exact_match@4"] == 0.0 and m["n@4"] == 2
    assert m["token_acc@8"] == 1.0 and m["n@8"] == 1
    assert list(m)[:2] == ["token_acc", "exact_match"] and "n@4" in m
    # a wrong token at an unscored (given) position does not count
    assert probe_metrics([[9, 2]], [[1, 2]], [[1]])["token_acc"] == 1.0


# ---- oracle and noise through score_probes ------------------------------------------------------
class FakeGenerate:
    """Stands in for archlab.generate.generate: the reference answer (oracle) or uniform
    noise over the answer symbols at the non-forced positions (forced ones kept, as the real
    decoder keeps them); records what it was asked to decode."""

    def __init__(self, answers: dict[tuple[int, ...], list[int]], noise: list[int] | None = None) -> None:
        self.answers, self.noise = answers, noise
        self.rng = np.random.default_rng(0)
        self.inputs: list[list[int]] = []
        self.forced: list[dict[int, int]] = []
        self.max_new: list[int] = []

    def __call__(self, model, inputs, config=None, *, special=None, forced=None, **kw):
        assert config.max_source_len is None and config.strategy == "greedy"  # sources are not cut
        self.inputs += [list(x) for x in inputs]
        self.forced += list(forced)
        self.max_new.append(config.max_new_tokens)
        seqs = []
        for x, f in zip(inputs, forced):
            ref = self.answers[tuple(x)]
            if self.noise is None:
                seqs.append(list(ref))
            else:
                seqs.append([f.get(j, int(self.rng.choice(self.noise))) for j in range(len(ref))])
        return GenerationOutput(seqs, [0.0] * len(seqs), [True] * len(seqs), sum(len(s) + 1 for s in seqs))


def fake_for(ds, tok, noise: bool) -> FakeGenerate:
    srcs, refs, _, scored = probe_answers(tok, ds.test)
    answers = {tuple(s): r for s, r in zip(srcs, refs)}
    alphabet = sorted({r[j] for r, sc in zip(refs, scored) for j in sc})
    return FakeGenerate(answers, alphabet if noise else None)


@pytest.mark.parametrize("task", list(PROBES))
def test_oracle_scores_100_and_noise_scores_chance(task, monkeypatch):
    ds, tok = task_data(task, n_test=300 if task == "induction" else 100)
    model = build_model(tiny(vocab_size=tok.vocab_size, max_seq_len=32))  # RoPE: any length
    oracle = fake_for(ds, tok, noise=False)
    monkeypatch.setattr(archlab.generate, "generate", oracle)
    res = score_task(model, tok, ds.test, "probe", DecodeOptions(), objective="seq2seq")
    assert res["token_acc"] == 1.0 and res["exact_match"] == 1.0
    groups = sorted({ex.group for ex in ds.test if ex.group})
    for g in groups:
        assert res[f"token_acc@{g}"] == 1.0 and res[f"n@{g}"] == sum(ex.group == g for ex in ds.test)
    noise = fake_for(ds, tok, noise=True)
    monkeypatch.setattr(archlab.generate, "generate", noise)
    res = score_task(model, tok, ds.test, "probe", DecodeOptions(), objective="seq2seq")
    chance = ds.notes["chance"]
    assert len(noise.noise) == round(1 / chance)  # the answer alphabet is what chance is of
    assert abs(res["token_acc"] - chance) < 0.06, (res["token_acc"], chance)
    for g in groups:
        assert abs(res[f"token_acc@{g}"] - chance) < 0.12


def test_decoding_forces_the_given_positions_and_reads_long_inputs_whole(monkeypatch):
    ds, tok = task_data("mqar")
    model = build_model(tiny(vocab_size=tok.vocab_size))
    fake = fake_for(ds, tok, noise=True)
    monkeypatch.setattr(archlab.generate, "generate", fake)
    score_probes(model, tok, ds.test, DecodeOptions(max_source_len=4))  # a training budget is not applied
    by_src = {tuple(tok.encode(ex.source)): ex for ex in ds.test}
    for x, f in zip(fake.inputs, fake.forced):
        ex = by_src[tuple(x)]
        t = tok.encode(ex.target)
        assert f == {j: t[j] for j in ex.tgt_given} and len(f) == len(t) - 6  # all but the 6 values
    assert max(fake.max_new) == 40 - 12 + 1  # the answer and its <eos>, not decode.max_new_tokens
    # induction: the decoder is given every test length in full (8 x the training length)
    ds, tok = task_data("induction")
    fake = fake_for(ds, tok, noise=True)
    monkeypatch.setattr(archlab.generate, "generate", fake)
    score_probes(model, tok, ds.test, DecodeOptions(max_source_len=16))
    assert sorted({len(x) for x in fake.inputs}) == [16, 32, 64, 128]


def test_forced_tokens_in_real_generation():
    torch.manual_seed(0)
    model = build_model(tiny(vocab_size=30))
    x = [[5, 6, 7, 8], [9, 10]]
    free = generate(model, x, max_new_tokens=6, strategy="greedy", prompt_layout="raw", eos_token_id=29)
    forced = [{0: 11, 2: 12}, {1: 13}]
    got = generate(model, x, max_new_tokens=6, strategy="greedy", prompt_layout="raw", eos_token_id=29,
                   forced=forced)
    for seq, f in zip(got.sequences, forced):
        assert all(seq[t] == tok for t, tok in f.items())
    assert got.sequences != free.sequences
    # no forced tokens: plain greedy decoding
    same = generate(model, x, max_new_tokens=6, strategy="greedy", prompt_layout="raw", eos_token_id=29,
                    forced=[{}, {}])
    assert same.sequences == free.sequences
    # the token after a forced one is the model's greedy choice given the forced prefix
    ref = generate(model, [[5, 6, 7, 8, 11]], max_new_tokens=1, strategy="greedy", prompt_layout="raw",
                   eos_token_id=29)
    assert got.sequences[0][1] == ref.sequences[0][0]
    with pytest.raises(ArchlabError, match="forced tokens need greedy or sample"):
        generate(model, x, max_new_tokens=4, strategy="beam", num_beams=2, prompt_layout="raw", forced=forced)


def test_real_model_scores_every_length():
    ds, tok = task_data("induction", n_test=8)
    model = build_model(tiny(vocab_size=tok.vocab_size, max_seq_len=32))  # RoPE: extrapolates
    res = score_probes(model, tok, ds.test, DecodeOptions(batch_size=8))
    assert [res[f"n@{n}"] for n in (16, 32, 64, 128)] == [8, 8, 8, 8]
    assert 0.0 <= res["token_acc"] <= 1.0 and res["_shape"]["tgt_len"] == 1.0


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
@pytest.mark.parametrize("arch", ["decoder", "encoder-decoder"])
def test_absolute_positions_refuse_lengths_past_max_seq_len(position, arch):
    ds, tok = task_data("induction", n_test=4)
    model = build_model(tiny(arch, vocab_size=tok.vocab_size, max_seq_len=100, position=position))
    with pytest.raises(ArchlabError) as e:
        score_probes(model, tok, ds.test, DecodeOptions())
    msg = str(e.value)
    assert "test length 128" in msg and "model.max_seq_len=100" in msg and "\n" not in msg
    fits = [ex for ex in ds.test if ex.group in ("16", "32", "64")]
    assert score_probes(model, tok, fits, DecodeOptions())["n@64"] == 4


# ---- end to end ---------------------------------------------------------------------------------
TINY = ["model.d_model=32", "model.n_heads=2", "model.n_layers=1", "model.d_ff=64", "train.steps=3",
        "train.warmup_steps=1", "train.tokens_per_batch=512", "eval.every=3", "eval.max_examples=8",
        "eval.decode_examples=4", "data.options.n_train=64", "data.options.n_valid=8", "data.options.n_test=4"]
SHORT = {"probe-mqar": ["data.options.vocab_size=32"],
         "probe-selective-copy": ["data.options.seq_len=32", "train.max_len=48"],
         "probe-induction": ["data.options.eval_lens=[16,64]"], "probe-copy": []}


@pytest.mark.parametrize("config", list(SHORT))
def test_probe_config_trains_and_evaluates(config, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", str(ROOT / "configs" / f"{config}.yaml"), *TINY, *SHORT[config], "--out", str(out),
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 3 and "token_acc" in summary["eval"] and "exact_match" in summary["eval"]
    rc = main(["evaluate", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "eval.json").read_text())
    assert report["scoring"] == "probe" and 0.0 <= report["token_acc"] <= 1.0
    if config == "probe-induction":
        assert report["n@16"] == 4 and report["n@64"] == 4
    if config == "probe-copy":
        assert [report[f"n@{n}"] for n in (16, 32, 64)] == [4, 4, 4]


@pytest.mark.parametrize("extra", [["model.arch=encoder-decoder"], ["model.arch=prefix-lm"], ["model.layers=M"],
                                   ["model.layers=S"]], ids=["encoder-decoder", "prefix-lm", "mamba", "mamba2"])
def test_mqar_trains_and_evaluates_on_other_families(extra, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", str(ROOT / "configs" / "probe-mqar.yaml"), *TINY, *SHORT["probe-mqar"], *extra,
               "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert main(["evaluate", str(out), "--no-progress"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["examples"] == 4 and 0.0 <= report["token_acc"] <= 1.0
