"""The ``moe`` compare preset: dense and MoE entries sized to the dense decoder's active
FLOPs, with total and active parameters recorded (sizing only; the preset itself runs ~20-30
min and is not run by the tests)."""

from __future__ import annotations

from types import SimpleNamespace

from archlab.compare.config import load_compare_config
from archlab.compare.runner import size_entries
from archlab.compare.sizing import Shape
from archlab.objectives import SpecialTokens


def test_moe_preset_sizes_dense_and_moe_entries_on_active_flops():
    cfg = load_compare_config(None, [], preset="moe")
    tok = SimpleNamespace(special=SpecialTokens(vocab_size=3000, first_normal=8), vocab_size=3000)
    sized = size_entries(cfg, cfg.entries, tok, Shape(24.0, 27.0), 0)
    by = {s["entry"]: s for s in sized}
    dense, moe_dec = by["dense decoder"], by["moe decoder 8x top-2"]
    moe_ed = by["moe encoder-decoder 8x top-2"]
    for s in sized:
        assert abs(s["deviation"]) <= 0.05, s["rule"]
    assert dense["active_params"] == dense["params"]
    for s in (moe_dec, moe_ed):
        assert s["model"].has_moe and s["model"].moe.n_experts == 8 and s["model"].moe.top_k == 2
        assert s["active_params"] < s["params"] / 2  # 2 of 8 experts active
    # matched on active compute, the MoE decoder holds more parameters than the dense one
    assert moe_dec["params"] > 1.5 * dense["params"]
