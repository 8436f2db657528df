"""Budget matching keeps every entry within its tolerance of the target, on both views, and
charges each entry the FLOPs of the objective it trains with."""

from __future__ import annotations

import pytest

from archlab.compare.config import load_compare_config
from archlab.compare.sizing import Shape, measure, size_to_budget
from archlab.config import ModelConfig
from archlab.errors import ConfigError

SHAPE = Shape(24.0, 30.0)


@pytest.mark.parametrize("match", ["params", "flops"])
@pytest.mark.parametrize("d,L", [(64, 2), (192, 3), (512, 6)])
def test_every_arch_within_tolerance(match, d, L):
    base = ModelConfig(arch="encoder-decoder", vocab_size=3000, d_model=d, n_heads=max(d // 64, 1),
                       n_layers=L, d_ff=4 * d)
    target = measure(base, match, SHAPE)
    for arch in ("encoder-decoder", "decoder", "prefix-lm"):
        s = size_to_budget(base.replace(arch=arch), target, match, SHAPE)
        assert abs(s.deviation) <= 0.05, (arch, s.rule, s.deviation)
        assert s.cfg.d_model == d  # width is shared; depth/d_ff adapt


def test_t5_accounting():
    # L+L encoder-decoder ~ L-layer decoder in FLOPs, ~ 2L-layer decoder in parameters
    base = ModelConfig(arch="encoder-decoder", vocab_size=3000, d_model=256, n_heads=4, n_layers=4, d_ff=1024)
    flops = size_to_budget(base.replace(arch="decoder"), measure(base, "flops", SHAPE), "flops", SHAPE)
    params = size_to_budget(base.replace(arch="decoder"), measure(base, "params", SHAPE), "params", SHAPE)
    assert flops.cfg.n_layers in (4, 5)  # cross-attention adds a little on top of L+L
    assert params.cfg.n_layers >= 8


def test_bad_target():
    with pytest.raises(ConfigError, match="budget target must be > 0"):
        size_to_budget(ModelConfig(), 0, "params", SHAPE)


def test_compare_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="--preset nope: unknown; choose one of: demo, smoke"):
        load_compare_config(None, [], "nope")
    with pytest.raises(ConfigError, match="unknown key budget.matchh"):
        load_compare_config(None, ["budget.matchh=params"])
    with pytest.raises(ConfigError, match=r"budget.match: 'time' is not valid; choose one of: params, flops"):
        load_compare_config(None, ["budget.match=time"])
    with pytest.raises(ConfigError, match="duplicate entry name 'decoder'"):
        load_compare_config(None, ["entries=[{arch: decoder}, {arch: decoder}]"])
    with pytest.raises(ConfigError, match="entries: give at least one entry"):
        load_compare_config(None, ["entries=[]"])
    p = tmp_path / "c.yaml"
    p.write_text("entries:\n  - arch: rnn\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: entries\[0\]\.arch: 'rnn' is not valid"):
        load_compare_config(str(p), [])


def test_ssm_preset_entries_size_within_tolerance():
    """The ssm preset's Mamba and hybrid entries (patterns without a depth) size within 10 %
    of the encoder-decoder's FLOPs, and their decoding memory stays flat in length."""
    from types import SimpleNamespace

    from archlab.compare.runner import base_model_config
    from archlab.compare.sizing import decode_memory_curve
    from archlab.objectives.base import SpecialTokens

    cfg = load_compare_config(None, [], preset="ssm")
    tok = SimpleNamespace(vocab_size=3000, special=SpecialTokens(vocab_size=3000, first_normal=12))
    ref = next(e for e in cfg.entries if e.arch == "encoder-decoder")
    target = measure(base_model_config(cfg, ref, tok, 0), "flops", SHAPE)
    kinds = {}
    for e in cfg.entries:
        s = size_to_budget(base_model_config(cfg, e, tok, 0), target, "flops", SHAPE)
        assert abs(s.deviation) <= cfg.budget.tolerance, (e.label, s.rule)
        kinds[e.label] = s.cfg
        curve = decode_memory_curve(s.cfg, [10, 100], SHAPE.src_len)
        if e.label == "mamba-2 decoder":
            assert curve[0]["total"] == curve[1]["total"] > 0  # constant in length
        else:
            assert curve[1]["kv"] > curve[0]["kv"] > 0
    assert {m for m, _ in kinds["mamba-2 decoder"].layer_kinds("decoder")} == {"mamba2"}
    assert {m for m, _ in kinds["hybrid decoder"].layer_kinds("decoder")} == {"mamba2", "attention"}


def test_example_flops_charge_the_objectives_head():
    """A classification entry pays for its pooled head, not the LM head; masked-LM pays the
    MLM transform and LM head at the masked positions only; causal-LM at every position."""
    from archlab.compare.sizing import example_flop_count

    enc = ModelConfig(arch="encoder", vocab_size=3000, d_model=64, n_heads=2, n_layers=2, d_ff=128, n_classes=4)
    shape = Shape(40.0, 0.0)
    cls = example_flop_count(enc, shape, "classification")
    assert cls.head == 2 * (64 * 64 + 64 * 4)  # dense d x d, then d x n_classes, once per example
    mlm = example_flop_count(enc, shape, "masked-lm")
    assert mlm.head == 6 * 2 * (64 * 64 + 64 * 3000)  # round(0.15 x 40) positions, transform + vocab
    assert cls.encoder == mlm.encoder  # both read <cls> text <sep>
    assert example_flop_count(enc, shape, "masked-lm", {"rate": 0.3}).head == 2 * mlm.head
    dec = enc.replace(arch="decoder")
    assert example_flop_count(dec, shape, "causal-lm").head == 41 * 2 * 64 * 3000  # <bos> text
    assert example_flop_count(dec, shape, "classification").head == cls.head
    with pytest.raises(ValueError, match="objective seq2seq does not run on arch encoder"):
        example_flop_count(enc, shape, "seq2seq")


def test_size_entries_measures_each_entry_with_its_objective():
    """compare's sizing: on a label task every entry is charged classification FLOPs (no LM
    head), an entry with its own objective that objective's."""
    from types import SimpleNamespace

    from archlab.compare.runner import size_entries
    from archlab.compare.sizing import example_flops
    from archlab.objectives.base import SpecialTokens

    cfg = load_compare_config(None, ["entries=[{arch: encoder}, {arch: decoder}, {arch: prefix-lm}, "
                                     "{arch: encoder-decoder}]", "budget.reference=encoder"], preset="smoke")
    tok = SimpleNamespace(vocab_size=3000, special=SpecialTokens(vocab_size=3000, first_normal=12))
    shape = Shape(30.0, 0.0)
    sized = size_entries(cfg, cfg.entries, tok, shape, 2, kind="label")
    for s in sized:
        assert s["flops_per_example"] == example_flops(s["model"], shape, "classification")
        assert s["flops_per_example"] < example_flops(s["model"], shape, "causal-lm" if s["arch"] != "encoder"
                                                      else "masked-lm")
    text = load_compare_config(None, ["entries=[{arch: decoder}, {arch: encoder, objective: masked-lm}]",
                                      "budget.reference=decoder"], preset="smoke")
    sized = size_entries(text, text.entries, tok, shape, 0, kind="text")
    assert [s["flops_per_example"] for s in sized] == [example_flops(sized[0]["model"], shape, "causal-lm"),
                                                      example_flops(sized[1]["model"], shape, "masked-lm")]


def test_decoding_state_in_results_counts_kv_only_for_attention_layers():
    """The compare results' decoding state: K/V for the decoder's attention layers only and
    the Mamba layers' fixed states (a pure Mamba decoder keeps no K/V; a hybrid keeps K/V in
    its one attention layer of three), equal to model.flops.decode_memory per beam."""
    from archlab.compare.worker import kv_cache_bytes, ssm_state_bytes
    from archlab.model.flops import decode_memory

    base = dict(arch="decoder", vocab_size=500, d_model=64, n_heads=4, n_layers=3, d_ff=128)
    att, mamba = ModelConfig(**base), ModelConfig(**base, layers="MMM")
    hybrid = ModelConfig(**base, layers="MMA")
    src, tgt, beams = 10.0, 7.0, 2
    length = int(src + 2 + tgt + 1)
    for cfg in (att, mamba, hybrid):
        want = decode_memory(cfg, length)
        assert kv_cache_bytes(cfg, src, tgt, beams) == want.kv * beams
        assert ssm_state_bytes(cfg, beams) == want.ssm_state * beams
    assert kv_cache_bytes(mamba, src, tgt, beams) == 0 < ssm_state_bytes(mamba, beams)
    assert kv_cache_bytes(hybrid, src, tgt, beams) * 3 == kv_cache_bytes(att, src, tgt, beams)
    assert ssm_state_bytes(att, beams) == 0
    ed = ModelConfig(**{**base, "arch": "encoder-decoder"}, layers="AAA/MMA")
    want = decode_memory(ed, int(tgt + 1), src_len=int(src + 1))
    assert kv_cache_bytes(ed, src, tgt, 1) == want.kv + want.cross_kv


def test_total_flops_matching_gives_each_entry_the_reference_total(tmp_path):
    """budget.match total_flops: models are not sized; each entry trains the steps that give it the
    reference entry's steps x FLOPs per example, and the jobs carry those steps."""
    from types import SimpleNamespace

    from archlab.compare.runner import NATURAL_OBJECTIVE, build_jobs, size_entries
    from archlab.compare.sizing import example_flops
    from archlab.objectives.base import SpecialTokens

    cfg = load_compare_config(None, [
        "entries=[{arch: decoder, name: big, model: {d_model: 128, n_layers: 4}}, {arch: encoder-decoder}, "
        "{arch: decoder, name: small}]", "budget.match=total_flops", "budget.reference=big", "train.steps=40"],
        preset="smoke")
    tok = SimpleNamespace(vocab_size=600, special=SpecialTokens(vocab_size=600, first_normal=12))
    shape = Shape(20.0, 24.0)
    sized = size_entries(cfg, cfg.entries, tok, shape, 0, kind="pair")
    big, ed, small = sized
    assert big["model"].d_model == 128 and small["model"].d_model == cfg.model["d_model"]  # not sized
    for s in sized:
        assert s["flops_per_example"] == example_flops(s["model"], shape, NATURAL_OBJECTIVE["pair"])
    jobs = build_jobs(cfg, cfg.entries, {1.0: sized}, "pair", tmp_path, 40.0, "tok")
    steps = {j.entry: j.run.train.steps for j in jobs if j.seed == cfg.seeds[0]}
    assert steps["big"] == 40
    assert steps["small"] > 40  # the smaller model reads further into the same example stream
    target = 40 * big["flops_per_example"]
    for s in sized:
        total = steps[s["entry"]] * s["flops_per_example"]
        assert abs(total / target - 1) <= 0.5 / steps[s["entry"]] + 1e-9, (s["entry"], total, target)


def test_total_flops_matching_refuses_an_unknown_reference():
    with pytest.raises(ConfigError, match="budget.reference=nobody is neither an entry's name"):
        load_compare_config(None, ["budget.match=total_flops", "budget.reference=nobody"], preset="smoke")
    with pytest.raises(ConfigError, match="budget.target: not used with budget.match=total_flops"):
        load_compare_config(None, ["budget.match=total_flops", "budget.target=1e6",
                                   "budget.reference=decoder"], preset="smoke")
