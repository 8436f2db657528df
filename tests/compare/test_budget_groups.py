"""Budget groups (``entries[i].group``): a family compared at several widths, each width's
entries FLOP-matched to that width's own reference entry (not all to one target); a group
without a reference is a one-line error; total_flops matches steps within each group."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from archlab.compare.config import load_compare_config
from archlab.compare.runner import size_entries
from archlab.compare.sizing import Shape
from archlab.errors import ConfigError
from archlab.objectives import SpecialTokens

TOK = SimpleNamespace(special=SpecialTokens(vocab_size=300), vocab_size=300)
SHAPE = Shape(12.0, 14.0)
BASE = ["model.d_model=32", "model.n_heads=2", "model.n_layers=2", "model.d_ff=64"]


def _cfg(tmp_path: Path, entries: list[dict], *extra: str):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"entries": entries}))
    return load_compare_config(str(p), [*BASE, f"out_dir={tmp_path / 'out'}", *extra], preset="smoke")


def _width(d: int) -> list[dict]:
    """Attention (the group's reference, as configured), Mamba-1 and an SSA hybrid at width d."""
    g = f"d{d}"
    return [{"arch": "decoder", "name": f"attention {g}", "group": g,
             "model": {"d_model": d, "n_heads": 2, "n_layers": 2, "d_ff": 2 * d}},
            {"arch": "decoder", "name": f"mamba-1 {g}", "group": g, "model": {"d_model": d, "layers": "M"}},
            {"arch": "decoder", "name": f"hybrid {g}", "group": g,
             "model": {"d_model": d, "layers": "SSA", "ssm": {"head_dim": 16}}}]


def test_each_group_is_matched_to_its_own_reference(tmp_path):
    cfg = _cfg(tmp_path, [*_width(64), *_width(128)], "budget.reference=decoder")
    sized = size_entries(cfg, cfg.entries, TOK, SHAPE, 0)
    by = {s["entry"]: s for s in sized}
    for d in (64, 128):
        ref = by[f"attention d{d}"]
        assert ref["rule"].startswith("as configured") and ref["reference"] == f"attention d{d}"
        for name in (f"mamba-1 d{d}", f"hybrid d{d}"):
            s = by[name]
            assert s["group"] == f"d{d}" and s["reference"] == f"attention d{d}"
            assert s["model"].d_model == d
            # within the tolerance of its own group's reference (measured on the reference's model)
            assert abs(s["flops_per_example"] / ref["flops_per_example"] - 1) <= cfg.budget.tolerance, name
    # the widths' budgets differ: one target for all would put the d64 entries far off theirs
    assert by["attention d128"]["flops_per_example"] > 2 * by["attention d64"]["flops_per_example"]
    assert by["mamba-1 d128"]["flops_per_example"] > 2 * by["mamba-1 d64"]["flops_per_example"]
    assert {s["family"] for s in sized} == {"decoder A", "decoder M", "decoder SSA"}


def test_a_group_without_its_reference_is_a_one_line_error(tmp_path):
    entries = [{"arch": "encoder-decoder", "group": "a"}, {"arch": "decoder", "name": "dec a", "group": "a"},
               {"arch": "decoder", "name": "dec b", "group": "b"}]
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, entries, "budget.reference=encoder-decoder")
    msg = str(e.value)
    assert "\n" not in msg
    assert "budget.reference=encoder-decoder: group 'b' has no entry of that architecture or name" in msg
    assert "(it has: dec b)" in msg
    # an entry name works as the reference too, and each group needs its own
    with pytest.raises(ConfigError, match="group 'b' has no entry"):
        _cfg(tmp_path, entries, "budget.reference='dec a'")
    # ungrouped entries keep the one-line message of a reference no entry has
    with pytest.raises(ConfigError, match="budget.reference=prefix-lm is not among the entries"):
        _cfg(tmp_path, [{"arch": "decoder"}], "budget.reference=prefix-lm")


def test_total_flops_matches_steps_within_each_group(tmp_path):
    entries = [{"arch": "decoder", "name": "small ref", "group": "s"},
               {"arch": "decoder", "name": "small wide", "group": "s", "model": {"d_model": 64}},
               {"arch": "decoder", "name": "big ref", "group": "b", "model": {"d_model": 64}},
               {"arch": "decoder", "name": "big narrow", "group": "b"}]
    cfg = _cfg(tmp_path, entries, "budget.match=total_flops", "budget.reference=decoder", "train.steps=100")
    by = {s["entry"]: s for s in size_entries(cfg, cfg.entries, TOK, SHAPE, 0)}
    assert by["small ref"]["steps_factor"] == 1.0 and by["big ref"]["steps_factor"] == 1.0
    for name, ref in (("small wide", "small ref"), ("big narrow", "big ref")):
        s = by[name]
        assert s["reference"] == ref
        assert s["target"] == pytest.approx(by[ref]["flops_per_example"] * 100)
        steps = round(s["steps_factor"] * 100)
        assert steps == round(by[ref]["flops_per_example"] * 100 / s["flops_per_example"])
    assert by["small wide"]["steps_factor"] < 1 < by["big narrow"]["steps_factor"]
