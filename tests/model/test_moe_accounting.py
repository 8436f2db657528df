"""MoE accounting: total parameters equal the built model; active parameters by hand; forward
FLOPs per token equal the matrix products torch's FLOP counter sees in a routed forward;
sizing matches MoE entries on active FLOPs and tunes their expert width."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from archlab import build_model, count_params
from archlab.compare.sizing import Shape, measure, size_to_budget
from archlab.config import MoEConfig
from archlab.model.flops import flops_per_example, moe_params, moe_token_flops
from tests.helpers import tiny


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ["decoder", "encoder", "prefix-lm", "encoder-decoder"])
@pytest.mark.parametrize("kw", [dict(activation="swiglu"), dict(activation="gelu", bias=True),
                                dict(activation="geglu", layers="MA", ssm={"d_state": 4})],
                         ids=["swiglu", "gelu-bias", "hybrid"])
@pytest.mark.parametrize("moe", [dict(n_experts=4, top_k=2),
                                 dict(n_experts=3, top_k=1, router="sigmoid-bias", n_shared_experts=2,
                                      d_ff_expert=20)], ids=["topk", "shared"])
def test_total_params_match_built_model(arch, kw, moe):
    cfg = tiny(arch, ffn="DE", moe=MoEConfig(**moe), **kw)
    assert count_params(cfg).total == n_params(build_model(cfg))


def test_active_params_by_hand():
    cfg = tiny("decoder", ffn="EE", activation="swiglu", moe=MoEConfig(n_experts=8, top_k=2, n_shared_experts=1))
    d, ff = 32, 48
    expert = d * 2 * ff + ff * d
    p = count_params(cfg)
    assert p.total - p.active == 2 * (8 - 2) * expert
    mp = moe_params(cfg)
    assert mp["per_expert"] == expert and mp["layers"] == 2
    assert mp["active"] == 2 * (d * 8 + 2 * expert + expert)  # router + 2 routed + 1 shared
    dense = tiny("decoder")
    assert count_params(dense).active == count_params(dense).total


@pytest.mark.parametrize("moe,activation", [(dict(n_experts=4, top_k=2), "swiglu"),
                                            (dict(n_experts=5, top_k=1, router="switch", n_shared_experts=1), "gelu"),
                                            (dict(n_experts=4, top_k=3, router="sigmoid-bias", d_ff_expert=16), "reglu")])
@pytest.mark.parametrize("path", ["loop", "grouped_mm"])
def test_moe_flops_equal_counted_matmuls(moe, activation, path):
    """Both expert paths (the loop; torch._grouped_mm, CPU training's default), counted.
    FlopCounterMode has no formula for _grouped_mm: 2 M K N for a (M, K) x (G, K, N) product."""
    from archlab.model.moe import cpu_train_experts

    def grouped(a_shape, b_shape, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        return 2 * a_shape[0] * a_shape[1] * b_shape[-1]

    cfg = tiny("decoder", ffn="E*", activation=activation, moe=MoEConfig(**moe))
    layer = build_model(cfg).decoder.blocks[0].mlp
    x = torch.randn(3, 11, cfg.d_model)
    with cpu_train_experts(path), FlopCounterMode(display=False,
                                                  custom_mapping={torch.ops.aten._grouped_mm: grouped}) as fc:
        layer(x)
    counts = fc.get_flop_counts()["Global"]
    assert (torch.ops.aten._grouped_mm in counts) == (path == "grouped_mm")
    assert fc.get_total_flops() == 33 * moe_token_flops(cfg)


def test_flops_count_active_experts_and_sizing_matches_active_flops():
    base = tiny("decoder", ffn="E*", moe=MoEConfig(n_experts=8, top_k=2))
    dense = tiny("decoder")
    f_moe = flops_per_example(base, tgt_len=16).forward
    f_dense = flops_per_example(dense, tgt_len=16).forward
    # 2 of 8 experts of width d_ff: twice a dense MLP's products, plus the router
    per_tok = (f_moe - f_dense) / 16 / 2  # per layer
    mlp = 2 * (32 * 2 * 48 + 48 * 32)
    assert per_tok == mlp + 2 * 32 * 8
    shape = Shape(10, 10)
    target = measure(dense.replace(n_layers=4), "flops", shape)
    s = size_to_budget(base, target, "flops", shape, tolerance=0.02, d_ff_multiple=8)
    assert abs(s.deviation) <= 0.02
    assert count_params(s.cfg).total > 2 * count_params(s.cfg).active  # matched on active, not total
