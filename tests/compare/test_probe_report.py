"""The compare report of a probe task on synthetic results (no training): token accuracy is the
primary metric (table, paired test, verdict); the probe table shows token_acc / exact_match
overall and per test length as results.json has them; the extrapolation plot is drawn from the
per-length means and the width plot from entries that vary d_model; the verdict names the
entries that solve the task at the lengths they solve it, and not the others."""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path
from typing import Any

import pytest

import archlab.compare.report as report
import archlab.compare.report.probe as probe_mod
from archlab.compare import stats as S
from archlab.compare.config import CompareConfig
from archlab.compare.report import write_report
from archlab.compare.report.probe import SOLVED, solved_line
from archlab.compare.sizing import Shape
from archlab.config import ModelConfig, from_dict, to_dict
from tests.compare.test_report import VIEWS, _md_table, _Page, _same_view
from tests.helpers import tiny

LENGTHS = (16, 32, 64)
DATA = {"task": "induction", "options": {"train_len": 16, "eval_lens": list(LENGTHS), "vocab": 16}}
# planted token accuracy per test length: the d128 models solve the short lengths, the Mamba-2
# one every length; the d64 attention decoder none
PLANT = {
    "attention d64": ("decoder A", 64, None, {16: 0.90, 32: 0.40, 64: 0.10}),
    "mamba-2 d64": ("decoder S", 64, 64, {16: 1.0, 32: 0.80, 64: 0.60}),
    "attention d128": ("decoder A", 128, None, {16: 1.0, 32: 1.0, 64: 0.30}),
    "mamba-2 d128": ("decoder S", 128, 64, {16: 1.0, 32: 1.0, 64: 1.0}),
}
N_PER_LENGTH = 120


def _row(out: Path, entry: str, seed: int) -> dict[str, Any]:
    """A probe run row as compare/worker.py writes it, its outputs JSONL under ``out``: per test
    length N examples of N // 16 scored answer tokens each (copy-like, so token_acc weighs
    examples by their scored tokens), right with the planted probability."""
    family, d_model, d_state, acc = PLANT[entry]
    rng = random.Random(zlib.crc32(f"{entry}/{seed}".encode()))
    outs = []
    for n in LENGTHS:
        k = n // 16
        for i in range(N_PER_LENGTH):
            right = sum(rng.random() < acc[n] for _ in range(k))
            outs.append({"source": f"s{n}-{i}", "reference": f"r{n}-{i}", "hypothesis": "h", "group": str(n),
                         "scored": k, "right": right})
    rel = f"runs/{entry.replace(' ', '_')}/seed-{seed}/outputs.jsonl"
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / rel).write_text("".join(json.dumps(o) + "\n" for o in outs))
    row: dict[str, Any] = {
        "entry": entry, "arch": "decoder", "objective": "seq2seq", "pretrain_objective": None, "seed": seed,
        "scale": 1.0, "group": f"d{d_model}", "family": family, "d_model": d_model, "d_state": d_state,
        "params": 1e5 * d_model / 64, "flops_per_example": 2e6, "train_flops_per_example": 6e6, "layers": "2",
        "d_ff": 192, "train_steps": 100, "train_tokens": 50_000, "train_time_s": 10.0, "val_loss": 1.0,
        "num_beams": 1, "latency_ms_per_example": 5.0, "decode_tokens_per_s": 900.0, "train_flops": 1e12,
        "kv_cache_bytes_per_example": 1000.0, "ssm_state_bytes_per_example": 0.0,
        "decode_state_bytes_per_example": 1000.0, "outputs_path": rel, "test_examples": len(outs),
        "samples": [{"source": "s", "reference": "r", "output": "h"}],
    }
    row["token_acc"] = sum(o["right"] for o in outs) / sum(o["scored"] for o in outs)
    row["exact_match"] = sum(o["right"] == o["scored"] for o in outs) / len(outs)
    for n in LENGTHS:
        mine = [o for o in outs if o["group"] == str(n)]
        row[f"token_acc@{n}"] = sum(o["right"] for o in mine) / sum(o["scored"] for o in mine)
        row[f"exact_match@{n}"] = sum(o["right"] == o["scored"] for o in mine) / len(mine)
        row[f"n@{n}"] = len(mine)
    return row


def _sizing() -> list[dict[str, Any]]:
    out = []
    for e, (family, d_model, d_state, _) in PLANT.items():
        m = to_dict(tiny("decoder", d_model=d_model, n_heads=2))
        if d_state:
            m.update(layers="S*", ssm={"d_state": d_state, "head_dim": 32})
        out.append({"entry": e, "rule": "depth", "params": 1e5, "flops_per_example": 2e6, "deviation": 0.0,
                    "group": f"d{d_model}", "reference": f"attention d{d_model}", "family": family,
                    "model": from_dict(ModelConfig, m)})
    return out


def _write(out: Path, rows: list[dict[str, Any]], sizing: list[dict[str, Any]], data: dict[str, Any]) -> dict:
    build = report.build_view

    def keep(*a: Any, **k: Any) -> Any:
        VIEWS[out] = view = build(*a, **k)
        return view

    cfg = CompareConfig(name="probe", data=data, seeds=[0, 1])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "build_view", keep)
        write_report(out, cfg, rows, sizing=sizing, shape=Shape(40.0, 2.0), task_kind="probe", wall_time_s=30.0)
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def probe_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe")
    rows = [_row(out, e, s) for s in (0, 1) for e in PLANT]
    seen: dict[str, Any] = {}
    real = probe_mod.length_plot

    def spy(acc: Any, memory: Any, span: Any, title: str, xlabel: str = "test length") -> bytes:
        seen.update(acc=acc, memory=memory, span=span)
        return real(acc, memory, span, title, xlabel)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probe_mod, "length_plot", spy)
        doc = _write(out, rows, _sizing(), DATA)
    return out, doc, rows, seen


def test_probe_table_shows_results_json_per_length(probe_report):
    out, doc, _, _ = probe_report
    md = (out / "report.md").read_text()
    title = next(t for t in VIEWS[out].headings() if t.startswith("Probe accuracy"))
    head, table = _md_table(md, title)
    want_cols = [k for n in LENGTHS for k in (f"token_acc@{n}", f"exact_match@{n}")]
    assert head == ["Entry", "Group", "d_model", "d_state", "token_acc", "exact_match", *want_cols]
    by = {a["entry"]: a for a in doc["entries"]}
    assert [r[0] for r in table] == list(PLANT)
    for r in table:
        a = by[r[0]]
        for col in ["token_acc", "exact_match", *want_cols]:
            assert r[head.index(col)] == f"{a[col]:.3f} ± {a[col + '_std']:.3f}", (r[0], col)
    # the aggregated means are those of the runs
    for e in PLANT:
        mine = [x for x in doc["results"] if x["entry"] == e]
        assert by[e]["token_acc@64"] == pytest.approx(sum(x["token_acc@64"] for x in mine) / 2)
    page = _Page()
    page.feed((out / "report.html").read_text())
    assert [head, *table] in page.tables  # the same table in report.html
    _same_view(out)


def test_token_accuracy_is_the_primary_metric_and_paired_by_example(probe_report):
    out, doc, rows, _ = probe_report
    assert doc["primary_metric"] == "token_acc"
    by = {a["entry"]: a for a in doc["entries"]}
    assert all(a["best"] == "mamba-2 d128" for a in by.values())
    head, table = _md_table((out / "report.md").read_text(), "Results (mean ± sd over seeds)")
    assert {"token acc", "exact match", "state/ex", "p vs best"} <= set(head) and "len ratio" not in head
    # the p-value: paired bootstrap of each example's right tokens x N / all scored tokens (their
    # mean is token_acc), largest over the two seed pairings
    for e in ("attention d64", "attention d128"):
        ps = []
        for seed in (0, 1):
            load = {x["entry"]: [json.loads(line) for line in (out / x["outputs_path"]).read_text().splitlines()]
                    for x in rows if x["seed"] == seed}
            w = len(load["mamba-2 d128"]) / sum(o["scored"] for o in load["mamba-2 d128"])
            mine = [o["right"] * w for o in load[e]]
            assert sum(mine) / len(mine) == pytest.approx(next(x["token_acc"] for x in rows
                                                               if x["entry"] == e and x["seed"] == seed))
            ps.append(S.paired_bootstrap_mean(mine, [o["right"] * w for o in load["mamba-2 d128"]]).p_value)
        assert by[e]["p_value"] == pytest.approx(max(ps)) and max(ps) < 0.01
    assert doc["verdict"][0].startswith("Quality: **mamba-2 d128** wins on token accuracy")


def test_verdict_names_who_solves_the_task_at_which_lengths(probe_report):
    _, doc, _, _ = probe_report
    line = doc["verdict"][1]
    assert line.startswith(f"Solved (token accuracy >= {SOLVED:g}, mean over seeds), test lengths 16, 32, 64: ")
    assert "**mamba-2 d128** at 16, 32, 64" in line and "**attention d128** at 16, 32;" in line
    assert "**mamba-2 d64** at 16;" in line
    # the d64 attention decoder solves no length: named with its best score, not as a solver
    assert "**attention d64**" not in line and "not at any test length: attention d64 (best 0." in line
    solved = {r["entry"]: r["solved_at"] for r in doc["probe"]["solved"]}
    assert solved == {"attention d64": [], "mamba-2 d64": [16], "attention d128": [16, 32],
                      "mamba-2 d128": [16, 32, 64]}
    assert doc["probe"]["train_lengths"] == [16, 16] and doc["probe"]["eval_lengths"] == list(LENGTHS)


def test_solved_line_of_a_task_without_test_lengths():
    rows = [{"entry": "a", "token_acc": {64: 0.995}, "solved_at": [64]},
            {"entry": "b", "token_acc": {64: 0.5}, "solved_at": []}]
    assert solved_line(rows, False) == ("Solved (token accuracy >= 0.99, mean over seeds) at length 64: **a** "
                                        "(0.995); not solved: b (best 0.500).")
    assert solved_line(rows[1:], False).endswith(": no entry; best per entry: b 0.500.")
    none = [{"entry": "c", "token_acc": {16: 0.4, 32: 0.7}, "solved_at": []}]
    assert solved_line(none, True).endswith(", test lengths 16, 32: no entry at any test length; best per "
                                            "entry: c 0.700 at 32.")


def test_extrapolation_plot_is_drawn_from_the_per_length_means(probe_report):
    out, doc, _, seen = probe_report
    assert (out / "accuracy_vs_length.png").read_bytes().startswith(b"\x89PNG")
    by = {a["entry"]: a for a in doc["entries"]}
    assert set(seen["acc"]) == set(PLANT)
    for e, pts in seen["acc"].items():
        assert sorted(pts) == list(LENGTHS)
        for n, (mean, sd) in pts.items():
            assert (mean, sd) == (by[e][f"token_acc@{n}"], by[e][f"token_acc@{n}_std"])
    assert seen["span"] == (16, 16)  # induction's training length, marked on the plot
    # beside it the decoding state over the tested lengths: attention's grows, Mamba-2's does not
    att = dict(seen["memory"]["attention d64"])
    ssm = dict(seen["memory"]["mamba-2 d64"])
    assert set(LENGTHS) <= set(att) and att[64] > att[16] * 2 and ssm[64] == ssm[16]
    # the generic output-length memory plot gives way to this one
    assert not (out / "decode_memory.png").exists()


def test_width_plot_only_when_entries_vary_the_width(probe_report, tmp_path):
    out, _, _, _ = probe_report
    assert (out / "accuracy_vs_width.png").exists()
    one = [e for e in PLANT if e.endswith("d64")]  # one width: nothing to plot against it
    rows = [_row(tmp_path, e, s) for s in (0, 1) for e in one]
    _write(tmp_path, rows, [s for s in _sizing() if s["entry"] in one], DATA)
    assert not (tmp_path / "accuracy_vs_width.png").exists()
    assert (tmp_path / "accuracy_vs_length.png").exists()


def test_suite_of_one_probe_at_two_lengths_plots_accuracy_against_the_length(tmp_path):
    """Two single-length members of one probe (MQAR at seq_len 16 and 32): the combined report
    draws each entry's token accuracy against the member's length from the members'
    results.json, beside the decoding state there, and shows each member's table."""
    from archlab.compare.report import suite as suite_mod

    members = []
    for n in (16, 32):
        out = tmp_path / f"mqar-{n}"
        out.mkdir()
        rows = []
        for e in ("attention d64", "mamba-2 d64"):
            for seed in (0, 1):
                r = _row(out, e, seed)
                for k in [k for k in r if "@" in k]:
                    r.pop(k)
                rows.append(r)
        data = {"task": "mqar", "options": {"n_pairs": 4, "seq_len": n, "vocab_size": 128}}
        _write(out, rows, [s for s in _sizing() if s["entry"].endswith("d64")], data)
        members.append((f"mqar-{n}", out))
    seen: dict[str, Any] = {}
    real = suite_mod.length_plot

    def spy(acc: Any, memory: Any, span: Any, title: str, xlabel: str = "test length") -> bytes:
        seen.update(acc=acc, memory=memory, span=span)
        return real(acc, memory, span, title, xlabel)

    cfg = CompareConfig(name="recall", seeds=[0, 1])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(suite_mod, "length_plot", spy)
        suite_mod.write_suite_report(tmp_path, cfg, members, wall_time_s=60.0)
    docs = {name: json.loads((d / "results.json").read_text()) for name, d in members}
    assert (tmp_path / "accuracy_vs_length_mqar.png").exists()
    for e in ("attention d64", "mamba-2 d64"):
        want = {n: next((a["token_acc"], a["token_acc_std"]) for a in docs[f"mqar-{n}"]["entries"] if a["entry"] == e)
                for n in (16, 32)}
        assert seen["acc"][e] == want
    att, ssm = dict(seen["memory"]["attention d64"]), dict(seen["memory"]["mamba-2 d64"])
    assert att[32] > att[16] and ssm[32] == ssm[16]
    top = json.loads((tmp_path / "results.json").read_text())
    assert [m["name"] for m in top["suite"]] == ["mqar-16", "mqar-32"]
    md = (tmp_path / "report.md").read_text()
    page = _Page()
    page.feed((tmp_path / "report.html").read_text())
    for name, doc in docs.items():
        head, table = _md_table(md, f"{name}: mqar, accuracy per answer token and per example")
        assert head == ["Entry", "Group", "d_model", "d_state", "token_acc", "exact_match"]
        by = {a["entry"]: a for a in doc["entries"]}
        assert [r[4] for r in table] == [f"{by[r[0]]['token_acc']:.3f} ± {by[r[0]]['token_acc_std']:.3f}"
                                         for r in table]
        assert [head, *table] in page.tables
        solved = f"Solved (token accuracy >= 0.99, mean over seeds) at length {name.split('-')[1]}: "
        assert any(v.startswith(f"{name} (mqar): {solved}") for v in top["verdict"])
    assert "accuracy_vs_length_mqar" in page.images
