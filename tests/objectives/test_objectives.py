"""Objectives: masking statistics match their definitions; every objective builds batches the
model accepts for every family it fits; misfits are errors."""

from __future__ import annotations

import numpy as np
import pytest

from archlab import build_model
from archlab.errors import ConfigError
from archlab.objectives import IGNORE, OBJECTIVES, Example, SpecialTokens, make_objective
from tests.helpers import tiny

V = 300
SP = SpecialTokens(sentinels=tuple(range(8, 40)), vocab_size=V, first_normal=40)
TEXT = list(range(100, 300))


def test_masked_lm_statistics():
    obj = make_objective("masked-lm", SP, "encoder", 512)
    rng = np.random.default_rng(0)
    chosen = masked = random = kept = 0
    total = 0
    for _ in range(200):
        b = obj.build([Example(ids=TEXT)], rng)
        lab, inp = b["labels"][0, 1:-1], b["input_ids"][0, 1:-1]
        sel = lab != IGNORE
        total += len(TEXT)
        chosen += int(sel.sum())
        masked += int((inp[sel] == SP.mask).sum())
        kept += int((inp[sel] == lab[sel]).sum())
        random += int(((inp[sel] != SP.mask) & (inp[sel] != lab[sel])).sum())
    assert abs(chosen / total - 0.15) < 0.005
    assert abs(masked / chosen - 0.8) < 0.02
    assert abs(kept / chosen - 0.1) < 0.02 and abs(random / chosen - 0.1) < 0.02


def test_span_corruption_statistics_and_reconstruction():
    obj = make_objective("span-corruption", SP, "encoder-decoder", 512)
    rng = np.random.default_rng(1)
    fracs, spans = [], []
    for _ in range(200):
        inp, tgt, mask = obj.corrupt(TEXT, rng)
        fracs.append(mask.mean())
        edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(int), 0]))
        spans += list(edges[1::2] - edges[0::2])
        # input + target together give back the text: fill each sentinel with its span
        fill, cur = {}, None
        for t in tgt:
            if t in SP.sentinels:
                cur = t
                fill[cur] = []
            else:
                fill[cur].append(t)
        rebuilt = [x for t in inp for x in (fill[t] if t in SP.sentinels else [t])]
        assert rebuilt == TEXT
    assert abs(np.mean(fracs) - 0.15) < 0.01
    assert abs(np.mean(spans) - 3.0) < 0.2


def test_denoising_statistics():
    obj = make_objective("denoising", SP, "encoder-decoder", 512)
    rng = np.random.default_rng(2)
    fracs, lengths, n_masks, n_spans = [], [], 0, 0
    for _ in range(300):
        out, removed = obj.corrupt(TEXT, rng)
        fracs.append(removed.mean())
        lengths += obj.last_span_lengths
        n_masks += sum(1 for t in out if t == SP.mask)
        n_spans += len(obj.last_span_lengths)
        assert [t for t in out if t != SP.mask] == [t for t, r in zip(TEXT, removed) if not r]
    assert abs(np.mean(fracs) - 0.3) < 0.01
    assert abs(np.mean(lengths) - 3.0) < 0.15  # Poisson(3)
    assert n_masks == n_spans  # one <mask> per span, zero-length spans included


def test_denoising_sentence_permutation():
    obj = make_objective("denoising", SP, "encoder-decoder", 512, mask_ratio=0.01, permute_sentences=True,
                         sentence_end_ids=[150, 200])
    rng = np.random.default_rng(0)
    text = list(range(100, 250))
    perm = obj._permute(text, rng)
    assert sorted(perm) == text and perm != text


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("arch", ["encoder", "decoder", "prefix-lm", "encoder-decoder"])
def test_every_objective_on_every_family(name, arch):
    cls = OBJECTIVES[name]
    if arch not in cls.archs:
        with pytest.raises(ConfigError, match=f"objective {name} does not fit arch {arch}; it runs on"):
            make_objective(name, SP, arch, 64)
        return
    options = {}
    if name == "distillation":  # needs a teacher and the student's own objective
        options = dict(teacher=build_model(tiny(arch, vocab_size=V, max_seq_len=256, n_classes=2)),
                       base="masked-lm" if arch == "encoder" else "seq2seq")
    obj = make_objective(name, SP, arch, 64, **options)
    rng = np.random.default_rng(0)
    exs = [Example(ids=TEXT[: 10 + 5 * i], src=TEXT[:7 + i], tgt=TEXT[50:60 + i], label=i % 2) for i in range(3)]
    batch = obj.build(exs, rng)
    model = build_model(tiny(arch, vocab_size=V, max_seq_len=256, n_classes=2))
    out = obj.loss(model, batch)
    assert out.loss.isfinite() and out.n_tokens > 0
    out.loss.backward()


def test_unknown_objective_and_option():
    with pytest.raises(ConfigError, match="unknown objective 'mlm'; choose one of: causal-lm"):
        make_objective("mlm", SP, "encoder")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) rte"):
        make_objective("masked-lm", SP, "encoder", rte=0.2)
