"""The prompt layout is one definition: a training example's prompt part is the decoding
prompt (every layout, every family); explicit source/target budgets give every family the same
source and target tokens; evaluate and generate pick the layout from the same function."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from archlab.generate import GenerationConfig, layout_prompts
from archlab.objectives import IGNORE, Example, SpecialTokens, make_objective
from archlab.objectives.layout import layout_for_objective
from tests.helpers import tiny

SP = SpecialTokens(pad=0, bos=1, eos=2, mask=3, sep=4, cls=5, sentinels=(6, 7), vocab_size=61, first_normal=8)
GENERATIVE = ("decoder", "prefix-lm", "encoder-decoder")
SRC = list(range(10, 40))  # 30 tokens
TGT = list(range(40, 52))  # 12 tokens


def _model(arch: str, position: str = "rope") -> SimpleNamespace:
    # layout_prompts only reads the model's config
    return SimpleNamespace(cfg=tiny(arch, position=position))


@pytest.mark.parametrize("arch", GENERATIVE)
@pytest.mark.parametrize("max_source", [None, 7])
def test_seq2seq_training_prompt_is_the_decoding_prompt(arch, max_source):
    obj = make_objective("seq2seq", SP, arch, 64, max_source_len=max_source, max_target_len=None)
    b = obj.build([Example(src=SRC, tgt=TGT)], np.random.default_rng(0))
    (p,) = layout_prompts(_model(arch), [SRC], GenerationConfig(prompt_layout="seq2seq", max_source_len=max_source),
                          SP)
    if arch == "encoder-decoder":
        assert b["input_ids"][0].tolist() == p.encoder
        assert b["decoder_input_ids"][0, : len(p.decoder)].tolist() == p.decoder
    else:
        n = len(p.decoder)
        assert b["input_ids"][0, :n].tolist() == p.decoder
        assert int(b["prefix_lengths"][0]) == n  # the bidirectional prefix is the prompt
        lab = b["labels"][0].tolist()
        assert lab[: n - 1] == [IGNORE] * (n - 1) and lab[n - 1] != IGNORE  # loss starts after it
        assert p.prefix == (arch == "prefix-lm")
    if max_source:
        assert SRC[:max_source] == (p.encoder[:-1] if p.encoder else p.decoder[1:-1])


@pytest.mark.parametrize("arch", GENERATIVE)
def test_lm_training_prompt_is_the_decoding_prompt(arch):
    obj = make_objective("causal-lm", SP, arch, 64)
    b = obj.build([Example(ids=SRC)], np.random.default_rng(0))
    (p,) = layout_prompts(_model(arch), [SRC[:9]], GenerationConfig(prompt_layout="lm"), SP)
    assert b["input_ids"][0, : len(p.decoder)].tolist() == p.decoder
    if arch == "encoder-decoder":
        assert p.encoder == [SP.eos]  # CausalLM.forward's empty source


def _source_target(arch: str, b: dict) -> tuple[list[int], list[int]]:
    """The source and target tokens a built one-example batch holds (specials removed)."""
    if arch == "encoder-decoder":
        src = b["input_ids"][0].tolist()
        assert src[-1] == SP.eos
        lab = b["labels"][0].tolist()
        return src[:-1], [t for t in lab if t != IGNORE][:-1]
    seq = b["input_ids"][0].tolist()
    sep = seq.index(SP.sep)
    lab = [t for t in b["labels"][0].tolist() if t != IGNORE]
    assert lab[-1] == SP.eos
    return seq[1:sep], lab[:-1]


def test_long_source_every_family_gets_the_same_tokens():
    # a summarization-like pair: source far longer than max_len; budgets 40 / 10
    long_src = list(range(8, 61)) * 4  # 212 tokens
    seen = {}
    for arch in GENERATIVE:
        obj = make_objective("seq2seq", SP, arch, 32, max_source_len=40, max_target_len=10)
        b = obj.build([Example(src=long_src, tgt=TGT)], np.random.default_rng(0))
        seen[arch] = _source_target(arch, b)
        assert obj.truncated(Example(src=long_src, tgt=TGT))
        assert not obj.truncated(Example(src=long_src[:40], tgt=TGT[:10]))
    assert seen["decoder"] == seen["prefix-lm"] == seen["encoder-decoder"]
    assert seen["decoder"] == (long_src[:40], TGT[:10])


def test_layout_for_objective_is_what_generate_and_evaluate_use(monkeypatch):
    from archlab.evaluate import runner
    from archlab.generate.cli import default_layout

    assert layout_for_objective("causal-lm") == "lm"
    assert layout_for_objective("seq2seq") == layout_for_objective("prefix-lm") == "seq2seq"
    assert default_layout(None) == "raw"
    from archlab.train.config import ObjectiveConfig

    assert default_layout(SimpleNamespace(objective=ObjectiveConfig(name="causal-lm"))) == "lm"
    # a distilled student decodes with its base objective's layout
    distilled = ObjectiveConfig(name="distillation", options={"base": "causal-lm"})
    assert default_layout(SimpleNamespace(objective=distilled)) == "lm"
    seen = []

    def fake_decode(model, tok, sources, opts, layout="seq2seq", progress=None):
        seen.append(layout)
        return [[] for _ in sources], 1.0, 0

    monkeypatch.setattr(runner, "decode", fake_decode)
    tok = SimpleNamespace(encode=lambda s: [10, 11], decode=lambda ids: "x", special=SP)
    model = SimpleNamespace(cfg=tiny("decoder"), eval=lambda: None)
    ex = [SimpleNamespace(source="a b", target="c d")]
    for objective in ("causal-lm", "seq2seq"):
        runner.score_task(model, tok, ex, "pair", runner.DecodeOptions(num_beams=1), objective=objective)
    assert seen == ["lm", "seq2seq"]  # evaluate decodes a causal-LM run with its own layout
