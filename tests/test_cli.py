"""The archlab command: info and sanity, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from archlab.cli import main


def test_info_all_families(capsys):
    assert main(["info", "encoder-tiny", "decoder-tiny", "prefix-lm-tiny", "encoder-decoder-tiny"]) == 0
    out = capsys.readouterr().out
    for arch in ("encoder", "decoder", "prefix-lm", "encoder-decoder"):
        assert f"{arch}-tiny" in out
    assert "FLOPs/src token" in out


def test_info_json_matches_count(capsys):
    from archlab import count_params, get_preset

    assert main(["info", "encoder-decoder-tiny", "d_model=64", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["params"]["total"] == count_params(get_preset("encoder-decoder-tiny", d_model=64)).total


@pytest.mark.parametrize("argv,msg", [
    (["info", "nope-tiny"], "unknown preset 'nope-tiny'"),
    (["info", "decoder-tiny", "model.norm=batch"], "model.norm: 'batch' is not valid"),
    (["info", "decoder-tiny", "d_modl=3"], "unknown key model.d_modl"),
    (["info", "missing.yaml"], "missing.yaml: config file not found"),
    (["info"], "give at least one preset"),
    (["info", "decoder-tiny", "attn_window=0"], "model.attn_window: must be >= 1"),
    (["info", "encoder-tiny", "attn_window=-3"], "model.attn_window: must be >= 1"),
])
def test_bad_input_one_line_exit_2(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "archlab.cli", "info", "decoder-tiny", "n_heads=3"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_sanity_command(capsys):
    assert main(["sanity", "decoder-tiny", "vocab_size=256", "--steps", "5", "--batch", "2"]) == 0
    assert "falls" in capsys.readouterr().out


def test_info_shows_layer_types_and_decoding_state(capsys):
    assert main(["info", "decoder-tiny", "layers=MA*", "--seq-len", "64"]) == 0
    out = capsys.readouterr().out
    assert "layers MA: mamba" in out and "attention" in out
    assert "SSM" in out and "KV" in out


@pytest.mark.parametrize("argv,msg", [
    (["info", "decoder-tiny", "layers=MXM"], "model.layers: unknown layer letter 'X'"),
    (["info", "decoder-tiny", "layers=MMM"], "model.layers: pattern 'MMM' has 3 layers"),
    (["info", "decoder-tiny", "ssm.d_state=8"], "model.ssm: SSM options on an attention-only model"),
])
def test_bad_layer_patterns_exit_2(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err


def test_info_shows_moe_total_and_active(capsys):
    assert main(["info", "decoder-tiny", "ffn=E*", "moe.n_experts=8", "moe.top_k=2", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["params"]["active"] < row["params"]["total"] and row["moe"]["layers"] == 2
    assert main(["info", "decoder-tiny", "ffn=E*", "moe.n_experts=8"]) == 0
    out = capsys.readouterr().out
    assert "MoE 2 layers x 8 experts top-2" in out and "active" in out


@pytest.mark.parametrize("argv,msg", [
    (["info", "decoder-tiny", "ffn=E*", "moe.top_k=9"], "model.moe.top_k: must be in [1, n_experts=8]"),
    (["info", "decoder-tiny", "ffn=E*", "moe.n_experts=0"], "model.moe.n_experts: must be >= 1"),
    (["info", "decoder-tiny", "ffn=E*", "moe.capacity_factor=0"], "model.moe.capacity_factor: must be > 0"),
    (["info", "decoder-tiny", "moe.top_k=1"], "model.moe: MoE options on a model without MoE layers"),
])
def test_bad_moe_options_exit_2(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err
