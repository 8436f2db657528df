"""Accounting of Mamba and hybrid stacks: exact parameter counts of built models, FLOPs per
layer type equal to the matrix products torch's FLOP counter sees in each mixer (no attention
term without attention layers), decoding memory equal to the bytes the cache actually holds,
and sizing that keeps the layer pattern and the tolerance it is given."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from archlab import build_model, count_params
from archlab.config import ModelConfig, SSMConfig
from archlab.model.flops import (
    decode_memory,
    flops_by_layer_type,
    flops_per_example,
    params_by_layer_type,
    ssm_flops,
)

CASES = [
    ("decoder", "MMMM", {}),
    ("decoder", "SSAS", {"n_groups": 2}),
    ("decoder", "MAMA", {"dtbc_norm": True, "proj_bias": True, "conv_bias": False}),
    ("prefix-lm", "MSA", {"dt_rank": 3, "d_inner": 48}),
    ("encoder", "MS", {}),
    ("encoder-decoder", "MS/SA", {}),
]


def cfg_for(arch, layers, ssm, **over):
    n = len(layers.split("/")[0])
    return ModelConfig(arch=arch, vocab_size=40, d_model=32, n_heads=2, n_layers=n, d_ff=48,
                       layers=layers, ssm=SSMConfig(head_dim=16, d_state=4, **ssm), **over)


@pytest.mark.parametrize("arch,layers,ssm", CASES)
@pytest.mark.parametrize("ffn", [None, "D"])
def test_count_params_matches_built_model(arch, layers, ssm, ffn):
    over = {"ffn": None if ffn is None else "/".join(ffn * len(p) for p in layers.split("/")),
            "position": "t5-relative", "n_classes": 2}
    cfg = cfg_for(arch, layers, ssm, **over)
    model = build_model(cfg)
    p = count_params(cfg)
    assert p.total == sum(t.numel() for t in model.parameters())
    by = params_by_layer_type(cfg)
    blocks = [b for s in (model.encoder, model.decoder) if s is not None for b in s.blocks]
    assert sum(by.values()) == sum(t.numel() for b in blocks for t in b.parameters())


def test_flops_attention_term_only_for_attention_layers():
    mamba = cfg_for("decoder", "MMMM", {})
    hybrid = cfg_for("decoder", "MMMA", {})
    for c in (mamba, hybrid):
        f1 = flops_per_example(c, tgt_len=100).forward / 100
        f2 = flops_per_example(c, tgt_len=400).forward / 100 / 4
        if c is mamba:
            assert f1 == f2  # linear in length: no attention term
        else:
            assert f2 > f1  # the attention layer's keys grow with length
    assert set(flops_by_layer_type(mamba, tgt_len=10)["decoder"]) == {"mamba"}
    assert {"mamba", "attention"} <= set(flops_by_layer_type(hybrid, tgt_len=10)["decoder"])


@pytest.mark.parametrize("mixer,ssm", [("mamba", {}), ("mamba", {"dtbc_norm": True, "proj_bias": True, "dt_rank": 3}),
                                       ("mamba2", {}), ("mamba2", {"n_groups": 2}),
                                       ("mamba2", {"chunk_size": 8})])
@pytest.mark.parametrize("T", [5, 16, 37])
def test_mixer_flops_equal_counted_matmuls(mixer, ssm, T):
    """ssm_flops of one mixer over T tokens: its projections, conv and (Mamba-2) SSD products
    equal what FlopCounterMode counts in the mixer's forward (chunks shorter and longer than
    T, several B/C groups); Mamba-1's scan is elementwise (FlopCounterMode sees none of it)."""
    cfg = cfg_for("decoder", "M" if mixer == "mamba" else "S", ssm)
    block = build_model(cfg).decoder.blocks[0]
    assert block.ssm.kind == mixer  # the whole name, not its first letter
    x = torch.randn(2, T, cfg.d_model)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        block.ssm(x)
    f = ssm_flops(cfg, mixer, T)
    matmul = f["proj"] + f["conv"] + (f["scan"] if mixer == "mamba2" else 0)
    assert fc.get_total_flops() == 2 * matmul


def test_bidirectional_flops_count_both_scans():
    """An encoder runs a backward mixer over the whole input, a prefix-LM over its prefix."""
    enc = cfg_for("encoder", "MS", {})
    by = flops_by_layer_type(enc, src_len=10)["encoder"]
    assert by["mamba"] == 2 * sum(ssm_flops(enc, "mamba", 10).values())
    assert by["mamba2"] == 2 * sum(ssm_flops(enc, "mamba2", 10).values())
    pre = cfg_for("prefix-lm", "S", {})
    by = flops_by_layer_type(pre, tgt_len=30, prefix_len=12)["decoder"]
    assert by["mamba2"] == sum(ssm_flops(pre, "mamba2", 30).values()) + sum(ssm_flops(pre, "mamba2", 12).values())


@pytest.mark.parametrize("arch,layers", [("decoder", "MSAM"), ("encoder-decoder", "MS/SA")])
def test_decode_memory_equals_cache_bytes(arch, layers):
    cfg = cfg_for(arch, layers, {})
    model = build_model(cfg).eval()
    T, S = 7, 5
    cache = model.new_cache(1, T)
    with torch.no_grad():
        if arch == "encoder-decoder":
            enc = model.encode(torch.randint(3, 40, (1, S)))
            model.decode(torch.randint(3, 40, (1, T)), encoder_out=enc, cache=cache)
        else:
            model.decode(torch.randint(3, 40, (1, T)), cache=cache)
    m = decode_memory(cfg, T, src_len=S)
    assert m.ssm_state == cache.state_nbytes() > 0
    assert m.kv == cache.kv_nbytes()  # preallocated for exactly T slots
    assert m.cross_kv == cache.nbytes() - cache.kv_nbytes() - cache.state_nbytes()
    assert decode_memory(cfg, 10 * T, src_len=S).ssm_state == m.ssm_state  # constant in length


@pytest.mark.parametrize("layers", ["MMMM", "SSSS", "MMMA", "MS"])
@pytest.mark.parametrize("match", ["params", "flops"])
def test_sizing_hits_ssm_and_hybrid_budgets(layers, match):
    from archlab.compare.sizing import Shape, measure, size_to_budget

    shape = Shape(20, 22)
    ref = ModelConfig(arch="decoder", vocab_size=2000, d_model=128, n_heads=4, n_layers=4, d_ff=512)
    target = measure(ref, match, shape)
    base = ModelConfig(arch="decoder", vocab_size=2000, d_model=128, n_heads=4, n_layers=len(layers),
                       d_ff=512, layers=layers, ssm=SSMConfig(head_dim=32))
    sized = size_to_budget(base, target, match, shape, tolerance=0.05)
    assert abs(sized.deviation) <= 0.05, sized.rule  # the tolerance sizing was given
    kinds = sized.cfg.layer_kinds("decoder")
    assert len(kinds) == sized.cfg.n_layers
    names = {"M": "mamba", "S": "mamba2", "A": "attention"}
    # the pattern repeated to the chosen depth, each mixer by its full name
    assert [m for m, _ in kinds] == [names[layers[i % len(layers)]] for i in range(len(kinds))]
    model = build_model(sized.cfg)  # a valid model whose blocks run those mixers
    assert [b.mixer for b in model.decoder.blocks] == [m for m, _ in kinds]


def test_sizing_tunes_d_inner_when_depth_steps_are_coarse():
    """A budget between two and three Mamba layers (no feed-forward to widen): the mixers'
    inner width is tuned."""
    from archlab.compare.sizing import Shape, measure, size_to_budget

    shape = Shape(20, 22)
    ref = ModelConfig(arch="decoder", vocab_size=100, d_model=128, n_heads=4, n_layers=1, d_ff=512)
    target = measure(ref, "params", shape)
    base = ModelConfig(arch="decoder", vocab_size=100, d_model=128, n_heads=4, n_layers=4,
                       d_ff=512, layers="MMMM")
    sized = size_to_budget(base, target, "params", shape, tolerance=0.05)
    assert "ssm d_inner" in sized.rule and abs(sized.deviation) <= 0.05, sized.rule
    assert sum(t.numel() for t in build_model(sized.cfg).parameters()) == sized.value
