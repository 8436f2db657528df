"""``KEY=VALUE`` overrides before or after options, for every subcommand that takes them (train,
compare, evaluate, generate, info, convert from-hf) and through torch's elastic launcher: argparse
alone gives a positional list only the words before the first option, so
``archlab train CONFIG --out DIR train.steps=10`` used to stop with "unrecognized arguments"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from archlab.cli import _parse, build_parser, main
from tests.train.test_train_cli import CONFIGS, TINY, needs_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv,dest,want", [
    (["train", "c.yaml", "a=1", "--out", "x", "b=2", "--no-progress", "c=3"], "overrides", ["a=1", "b=2", "c=3"]),
    (["train", "--out", "x", "c.yaml", "a=1"], "overrides", ["a=1"]),
    (["compare", "--preset", "smoke", "train.steps=3", "--out", "o", "seeds=[0,1]"], "args",
     ["train.steps=3", "seeds=[0,1]"]),
    (["evaluate", "run", "--split", "valid", "data.max_examples=5"], "overrides", ["data.max_examples=5"]),
    (["generate", "run", "--prompt", "hi", "num_beams=2", "--max-new-tokens", "4", "top_k=3"], "overrides",
     ["num_beams=2", "top_k=3"]),
    (["info", "decoder-tiny", "--json", "d_model=64"], "specs", ["decoder-tiny", "d_model=64"]),
    (["convert", "from-hf", "h", "o", "--force", "dropout=0.0"], "overrides", ["dropout=0.0"]),
])
def test_overrides_after_options_join_the_list_in_order(argv, dest, want):
    assert getattr(_parse(build_parser(), argv), dest) == want


@pytest.mark.parametrize("argv,msg", [
    (["train", "c.yaml", "--out", "x", "--bogus"], "archlab train: error: unrecognized arguments: --bogus"),
    (["train", "c.yaml", "--out", "x", "stray"], "archlab train: error: unrecognized arguments: stray"),
    (["evaluate", "run", "--split", "test", "-x=1"], "archlab evaluate: error: unrecognized arguments: -x=1"),
])
def test_other_unknown_words_stay_errors(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        _parse(build_parser(), argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_compare_applies_an_override_given_after_an_option(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--preset", "smoke", "--out", str(out), "train.steps=-1"]) == 2
    err = capsys.readouterr().err
    assert "train.steps must be >= 1, got -1" in err and err.count("\n") == 1 and not out.exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    cfg = str(CONFIGS / "translation-decoder.yaml")
    # every override after the options
    assert main(["train", cfg, "--out", str(out), "--no-progress", *TINY]) == 0
    return out


@needs_data
def test_train_takes_overrides_after_options(tiny_run):
    saved = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert saved["train"]["steps"] == 2 and saved["model"]["d_model"] == 32


@needs_data
def test_evaluate_takes_data_overrides_after_options(tiny_run, tmp_path, capsys):
    rep = tmp_path / "eval.json"
    assert main(["evaluate", str(tiny_run), "--max-examples", "3", "--num-beams", "1", "--out", str(rep),
                 "--max-new-tokens", "4", "data.max_source_chars=40"]) == 0
    got = json.loads(rep.read_text())
    assert got["data_overrides"] == ["data.max_source_chars=40"] and got["decode"]["num_beams"] == 1
    capsys.readouterr()
    assert main(["evaluate", str(tiny_run), "--max-examples", "2", "num_beams=2"]) == 2
    assert "evaluate takes data.KEY=VALUE" in capsys.readouterr().err
    assert main(["evaluate", str(tiny_run), "--max-examples", "2", "data.no_such_key=1"]) == 2
    assert "data.no_such_key" in capsys.readouterr().err


@needs_data
def test_generate_takes_decoding_overrides_after_options(tiny_run, tmp_path, capsys):
    out = tmp_path / "g.jsonl"
    assert main(["generate", str(tiny_run), "--prompt", "In the beginning", "--format", "jsonl",
                 "--max-new-tokens", "6", "--output", str(out), "num_beams=3", "num_return_sequences=3",
                 "strategy=beam"]) == 0
    assert len(json.loads(out.read_text())["outputs"]) == 3  # the overrides, not the flags' 1
    for bad, msg in (("num_beam=2", "unknown decoding setting num_beam; choose one of:"),
                     ("num_beams=many", "num_beams must be int, got 'many'")):
        assert main(["generate", str(tiny_run), "--prompt", "x", bad]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1


@needs_data
@pytest.mark.slow
def test_torchrun_launch_takes_overrides_after_options(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
                        "-m", "archlab", "train", str(CONFIGS / "translation-decoder.yaml"), "--out", str(out),
                        "--no-progress", *TINY, "train.parallel=ddp"],
                       env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-2000:]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["steps"] == 2 and saved["train"]["parallel"] == "ddp"
