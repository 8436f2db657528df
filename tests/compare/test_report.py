"""The compare report on synthetic results (no data packages, no training): aggregation, CSV,
markdown and HTML carry the numbers of results.json and render one view model with the same
sections, table rows, verdict lines and notes (HTML escaped); significance and the verdict follow
planted differences (a planted tie is not called a win); sweeps get a winner per budget,
crossings and power-law fits; diagnostics (source ablation, loss spikes, tuning) reach the
verdict and the plots. Also the verdict's inference-cost line: a clear latency winner is
named with its margin, close latencies are no clear difference, classification is not
described as decoding."""

from __future__ import annotations

import csv
import html
import json
import random
import statistics
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import archlab.compare.report as report
from archlab.compare import stats as S
from archlab.compare.config import CompareConfig
from archlab.compare.report import LATENCY_TIE, ReportView, verdict, write_report
from archlab.compare.report.render import plain
from archlab.compare.sizing import Shape
from archlab.evaluate.metrics import translation_metrics
from tests.helpers import tiny

WORDS = [a + b for a in "bcdfghjklm" for b in "aeiou"]
ARCH = {"encoder-decoder": "encoder-decoder", "decoder": "decoder", "prefix-lm": "prefix-lm", "encoder": "encoder"}
SHAPE = Shape(20.0, 22.0)


# ---------------------------------------------------------------------------------------------
# synthetic results following the compare results schema
# ---------------------------------------------------------------------------------------------
def _refs(n: int = 100) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(n)]


def _noisy(refs: list[str], p: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(w if rng.random() > p else rng.choice(WORDS) for w in r.split()) for r in refs]


def _row(out: Path, entry: str, seed: int, hyps: list[str], refs: list[str], *, scale: float = 1.0,
         val_loss: float = 3.0, train_flops: float = 1e13, ablation: dict | None = None,
         train_curve: list | None = None, tuned: dict | None = None, **extra: Any) -> dict[str, Any]:
    """One run row as compare/worker.py writes it (plus the sweep/significance fields), its
    outputs JSONL written under ``out``; scores computed from the outputs."""
    rel = f"runs/{entry}/scale-{scale}/seed-{seed}/outputs.jsonl"
    p = out / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps({"source": f"src {i}", "reference": r, "hypothesis": h}) + "\n"
                         for i, (r, h) in enumerate(zip(refs, hyps))))
    tm = translation_metrics(hyps, refs)
    row: dict[str, Any] = {
        "entry": entry, "arch": ARCH[entry], "objective": "seq2seq", "pretrain_objective": None, "seed": seed,
        "params": 1.5e6, "flops_per_example": 2.0e6, "train_flops_per_example": 6.0e6, "sizing_rule": "depth",
        "budget_deviation": 0.01, "layers": "2+2" if entry == "encoder-decoder" else "4", "d_model": 64,
        "d_ff": 128, "train_steps": int(100 * (scale or 1)), "train_tokens": 50_000, "train_time_s": 10.0 + seed,
        "pretrain_time_s": 0.0, "stopped": "steps", "val_loss": val_loss, "peak_memory_bytes": 1 << 28,
        "kv_cache_bytes_per_example": 4096.0 * (2 if entry == "encoder-decoder" else 3), "num_beams": 2,
        "curve": [{"step": 50, "tokens": 25_000, "loss": val_loss + 0.5}, {"step": 100, "tokens": 50_000, "loss": val_loss}],
        "job_wall_time_s": 12.0, "bleu": tm["bleu"], "chrf": tm["chrf"], "bleu_signature": tm["bleu_signature"],
        "chrf_signature": tm["chrf_signature"], "rouge1": 40.0, "rouge2": 20.0, "rougeL": 35.0,
        "len_ratio": 1.0 + 0.01 * seed, "repetition_rate": 0.01, "decode_tokens_per_s": 500.0,
        "decode_time_s": 1.0, "samples": [{"source": "src 0", "reference": refs[0], "output": hyps[0]}],
        "test_examples": len(refs), "latency_ms_per_example": 20.0 + seed,
        "train_flops": train_flops, "tune_flops": 2e12, "tuned": tuned or {},
        "train_curve": train_curve or [{"step": s, "tokens": 500 * s, "loss": 3.0 + 5.0 / (1 + s / 10)}
                                       for s in range(5, 105, 5)],
        "outputs_path": rel, "ablation": ablation if ablation is not None else {}, "examples_truncated": 0,
        "truncated_fraction": 0.0,
    }
    row["scale"] = scale
    row.update(extra)
    return row


def _cfg(seeds: list[int]) -> CompareConfig:
    return CompareConfig(name="synthetic", seeds=seeds)


def _sizing(entries: list[str]) -> list[dict[str, Any]]:
    return [{"entry": e, "rule": "depth to match", "params": 1.5e6, "flops_per_example": 2.0e6, "deviation": 0.01,
             "model": tiny(ARCH[e])} for e in entries]


VIEWS: dict[Path, ReportView] = {}  # the view model each _write rendered, by output directory


def _write(out: Path, rows: list[dict[str, Any]], seeds: list[int], kind: str = "pair", cfg: CompareConfig | None = None,
           **kw: Any) -> dict[str, Any]:
    entries = list(dict.fromkeys(r["entry"] for r in rows))
    build = report.build_view

    def keep(*a: Any, **k: Any) -> ReportView:
        VIEWS[out] = view = build(*a, **k)
        return view

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "build_view", keep)
        write_report(out, cfg or _cfg(seeds), rows, sizing=_sizing(entries), shape=SHAPE, task_kind=kind,
                     wall_time_s=60.0, **kw)
    return json.loads((out / "results.json").read_text())


def _md_table(md: str, section: str) -> tuple[list[str], list[list[str]]]:
    lines = md.split(f"## {section}")[1].split("\n## ")[0].splitlines()
    tab = [ln for ln in lines if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in tab]
    return cells[0], cells[2:]


def _col(head: list[str], rows: list[list[str]], name: str, entry: str, scale: str | None = None) -> str:
    i = head.index(name)
    for r in rows:
        if r[0] == entry and (scale is None or r[head.index("Scale")] == scale):
            return r[i]
    raise KeyError(entry)


def _expected_p(out: Path, doc: dict, entry: str, best: str, scale: float = 1.0) -> float:
    """The paired-bootstrap p-value computed here from the outputs files: largest over seeds."""
    ps = []
    for seed in doc["seeds"]:
        rows = {r["entry"]: r for r in doc["results"] if r["seed"] == seed and r.get("scale", 1.0) == scale}
        load = [[json.loads(x) for x in (out / rows[e]["outputs_path"]).read_text().splitlines()] for e in (entry, best)]
        refs = [o["reference"] for o in load[1]]
        res = S.paired_bootstrap_mt({"sys": [o["hypothesis"] for o in load[0]],
                                     "base": [o["hypothesis"] for o in load[1]]}, refs, "base", metrics=("bleu",))
        ps.append(res["sys"]["bleu"].p_value)
    return max(ps)


# ---------------------------------------------------------------------------------------------
# one budget: a clear winner, and a planted tie
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clear(tmp_path_factory):
    out = tmp_path_factory.mktemp("clear")
    refs = _refs()
    rows = []
    for seed in (0, 1):
        rows.append(_row(out, "encoder-decoder", seed, _noisy(refs, 0.15, 10 + seed), refs, val_loss=2.5 + 0.01 * seed,
                         ablation={"bleu": 1.1, "chrf": 15.0}))
        rows.append(_row(out, "decoder", seed, _noisy(refs, 0.40, 20 + seed), refs, val_loss=2.9 + 0.02 * seed,
                         ablation={"bleu": 0.9, "chrf": 14.0}))
        rows.append(_row(out, "prefix-lm", seed, _noisy(refs, 0.45, 30 + seed), refs, val_loss=3.0))
    return out, _write(out, rows, [0, 1])


def test_aggregation_csv_markdown_and_html_carry_results_json(clear):
    out, doc = clear
    rows = doc["results"]
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert len(doc["entries"]) == 3
    for agg in doc["entries"]:
        mine = [r for r in rows if r["entry"] == agg["entry"]]
        for key in ("bleu", "chrf", "val_loss", "train_time_s", "len_ratio"):
            vals = [r[key] for r in mine]
            assert agg[key] == pytest.approx(statistics.fmean(vals))
            assert agg[key + "_std"] == pytest.approx(statistics.stdev(vals))
        assert agg["seeds"] == [0, 1] and agg["scale"] == 1.0
    head, table = _md_table(md, "Results (mean ± sd over seeds)")
    for agg in doc["entries"]:
        assert _col(head, table, "BLEU", agg["entry"]) == f"{agg['bleu']:.2f} ± {agg['bleu_std']:.2f}"
        assert _col(head, table, "val loss", agg["entry"]) == f"{agg['val_loss']:.3f} ± {agg['val_loss_std']:.3f}"
    # the HTML shows the same table, cell for cell
    for r in table:
        assert "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" in page, r
    assert "<th>" + "</th><th>".join(html.escape(h) for h in head) + "</th>" in page
    with open(out / "results.csv") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(rows)
    for c, r in zip(got, rows):
        assert (c["entry"], int(c["seed"])) == (r["entry"], r["seed"])
        for key in ("bleu", "chrf", "val_loss", "train_flops", "tune_flops", "scale"):
            assert float(c[key]) == pytest.approx(r[key], rel=1e-12)
        assert float(c["ablation_bleu"] or "nan") == pytest.approx(r["ablation"].get("bleu", float("nan")), nan_ok=True)
        assert c["outputs_path"] == r["outputs_path"]


class _Page(HTMLParser):
    """What a reader of report.html sees: headings, list items, paragraphs and tables as text."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[tuple[str, str]] = []
        self.items: list[str] = []
        self.paragraphs: list[str] = []
        self.tables: list[list[list[str]]] = []  # rows of cells, header row first
        self.images: list[str] = []
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h1", "h2", "h3", "li", "p", "td", "th"):
            self._text = []
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag == "img":
            self.images.append(dict(attrs)["alt"] or "")

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._text is None or tag not in ("h1", "h2", "h3", "li", "p", "td", "th"):
            return
        text, self._text = "".join(self._text), None
        if tag in ("td", "th"):
            self.tables[-1][-1].append(text)
        elif tag == "li":
            self.items.append(text)
        elif tag == "p":
            self.paragraphs.append(text)
        else:
            self.headings.append((tag, text))


def _same_view(out: Path) -> None:
    """report.md and report.html show every heading, table row, verdict line, note, plot and
    sample of the view model that write_report rendered, each section and table once."""
    view = VIEWS[out]
    md = (out / "report.md").read_text()
    page = _Page()
    page.feed((out / "report.html").read_text())
    lines = md.splitlines()
    heads = view.headings()
    assert heads[:2] == ["Verdict", "Results (mean ± sd over seeds)"] and "Sizing rule" in heads
    assert len(set(heads)) == len(heads)
    assert [ln[3:] for ln in lines if ln.startswith("## ")] == heads
    assert [t for tag, t in page.headings if tag == "h2"] == heads
    assert lines[0] == f"# {view.title}" and ("h1", view.title) in page.headings
    for title, table in view.tables():
        assert table.rows
        assert _md_table(md, title) == (table.head, table.rows), title
        assert lines.count("| " + " | ".join(table.head) + " |") == 1, title  # the table once
        shown = [t for t in page.tables if t and t[0] == table.head]
        assert shown == [[table.head, *table.rows]], title
    for line in [*view.verdict, *view.method_notes]:
        assert f"- {line}" in lines and plain(line) in page.items, line
    for section in view.body():
        for text in [*section.paragraphs, *section.notes]:
            assert text in lines and plain(text) in page.paragraphs, text
    assert view.intro in lines and plain(view.intro) in page.paragraphs
    assert [p.name for p in view.plots] == page.images == [ln[2:].split("]")[0] for ln in lines if ln.startswith("![")]
    assert all((out / p.file).read_bytes() == p.png for p in view.plots)
    cells = {c for t in page.tables for r in t for c in r}
    for group in view.samples:
        assert f"**{group.entry}**" in lines and ("h3", group.entry) in page.headings
        for smp in group.samples:
            assert {smp["source"], smp["reference"], smp["output"]} <= cells
            assert f"  - output: {smp['output']}" in lines


def test_markdown_and_html_render_the_same_view(clear):
    out, doc = clear
    _same_view(out)
    view = VIEWS[out]
    assert view.verdict == doc["verdict"] and view.samples
    assert [s.title for s in view.body()] == ["Verdict", "Results (mean ± sd over seeds)", "Method", "Sizing rule"]
    # the results legend names only the columns shown, each once
    legend = view.results.notes[0]
    assert "src swapped: " in legend and legend.count("Params: ") == 1 and "trunc:" not in legend


def test_html_escapes_what_the_runs_and_the_config_wrote(tmp_path):
    refs = _refs(10)
    hyps = [f"<script>alert({i})</script> & <b>x</b>" for i in range(10)]
    row = _row(tmp_path, "decoder", 0, hyps, refs)
    row["samples"] = [{"source": "<img src=x onerror=alert(1)>", "reference": refs[0], "output": hyps[0]}]
    cfg = _cfg([0])
    cfg.note = "see <script>alert('note')</script> & `budget.match`"
    doc = _write(tmp_path, [row], [0], cfg=cfg)
    page = (tmp_path / "report.html").read_text()
    assert "<script" not in page and "<img src=x" not in page and "<b>x</b>" not in page
    assert "&lt;script&gt;alert(0)&lt;/script&gt; &amp; &lt;b&gt;x&lt;/b&gt;" in page
    assert "<li>Note: see &lt;script&gt;alert(&#39;note&#39;)&lt;/script&gt; &amp; <code>budget.match</code></li>" in page
    assert f"- {doc['verdict'][-1]}" in (tmp_path / "report.md").read_text()  # Markdown keeps the text as is
    _same_view(tmp_path)


def test_significance_columns_equal_a_paired_bootstrap_of_the_outputs(clear):
    out, doc = clear
    head, table = _md_table((out / "report.md").read_text(), "Results (mean ± sd over seeds)")
    by = {a["entry"]: a for a in doc["entries"]}
    assert all(a["best"] == "encoder-decoder" for a in by.values())
    assert _col(head, table, "p vs best", "encoder-decoder") == "-"
    assert _col(head, table, "ΔBLEU vs best", "encoder-decoder") == "best"
    for e in ("decoder", "prefix-lm"):
        want = _expected_p(out, doc, e, "encoder-decoder")
        assert by[e]["p_value"] == pytest.approx(want)
        assert want < 0.01
        shown = _col(head, table, "p vs best", e)
        assert shown == ("< 0.001" if want < 0.001 else f"{want:.3f}")
        assert _col(head, table, "ΔBLEU vs best", e) == f"{by[e]['bleu'] - by['encoder-decoder']['bleu']:.2f}"
        assert set(by[e]["p_values"]) == {"0", "1"}
    assert _col(head, table, "BLEU 95% CI", "decoder").startswith("± ")


def test_verdict_calls_the_significant_winner_with_its_p_value(clear):
    out, doc = clear
    q = doc["verdict"][0]
    assert q.startswith("Quality: **encoder-decoder** wins on BLEU")
    assert "ahead of decoder" in q and "paired bootstrap p < 0.001" in q
    assert doc["winners"] == [{**doc["winners"][0], "winner": "encoder-decoder", "runner_up": "decoder"}]
    md = (out / "report.md").read_text()
    assert all(f"- {v}" in md for v in doc["verdict"])


def test_source_ablation_sits_next_to_bleu_and_reaches_the_verdict(clear):
    out, doc = clear
    head, table = _md_table((out / "report.md").read_text(), "Results (mean ± sd over seeds)")
    assert head[head.index("BLEU") + 2] == "BLEU src swapped"
    assert _col(head, table, "BLEU src swapped", "encoder-decoder") == "1.10 ± 0.00"
    assert _col(head, table, "BLEU src swapped", "prefix-lm") == "-"  # no ablation recorded
    line = next(v for v in doc["verdict"] if v.startswith("Source ablation"))
    assert "ignores" not in line and "encoder-decoder" in line and "read the input" in line


def _shuffle_errors(hyps: list[str], refs: list[str]) -> list[str]:
    """A few outputs worse (a wrong word), a few others better (a wrong word corrected)."""
    out = []
    for i, (h, r) in enumerate(zip(hyps, refs)):
        hw, rw = h.split(), r.split()
        if i % 10 == 0:
            j = next((k for k, (x, y) in enumerate(zip(hw, rw)) if x == y), 0)
            hw[j] = "zz"
        elif i % 15 == 5:
            j = next((k for k, (x, y) in enumerate(zip(hw, rw)) if x != y), 0)
            hw[j] = rw[j]
        out.append(" ".join(hw))
    return out


@pytest.fixture(scope="module")
def tie(tmp_path_factory):
    out = tmp_path_factory.mktemp("tie")
    refs = _refs()
    rows = []
    # identical outputs in both seeds, and prefix-lm's worse in a few sentences and better in a
    # few others, the same in both seeds: one entry ahead in every seed with no seed spread, so
    # only the paired bootstrap can call the tie
    a = _noisy(refs, 0.2, 40)
    for seed in (0, 1):
        rows.append(_row(out, "encoder-decoder", seed, a, refs))
        rows.append(_row(out, "prefix-lm", seed, _shuffle_errors(a, refs), refs))
        rows.append(_row(out, "decoder", seed, _noisy(refs, 0.5, 60 + seed), refs,
                         ablation={"bleu": 0.0, "chrf": 0.0}))
    return out, _write(out, rows, [0, 1])


def test_a_planted_tie_is_not_called_a_win(tie):
    out, doc = tie
    by = {a["entry"]: a for a in doc["entries"]}
    leader = doc["winners"][0]["leader"]
    close = "prefix-lm" if leader == "encoder-decoder" else "encoder-decoder"
    assert by[close]["p_value"] > 0.05 and by["decoder"]["p_value"] < 0.01
    # seed paired with seed, the largest p: as computed here from the outputs files
    assert by[close]["p_value"] == pytest.approx(_expected_p(out, doc, close, leader))
    assert doc["winners"][0]["winner"] is None
    q = doc["verdict"][0]
    assert q.startswith(f"Quality: no clear winner on BLEU: **{leader}** leads") and "not significant" in q
    assert "wins" not in q
    head, table = _md_table((out / "report.md").read_text(), "Results (mean ± sd over seeds)")
    assert float(_col(head, table, "p vs best", close)) == pytest.approx(by[close]["p_value"], abs=5e-4)


def test_seeds_are_paired_and_the_largest_p_is_reported(tmp_path):
    # each seed's outputs differ; entry b is a near copy of a's outputs of the SAME seed (few
    # sentences changed, more in seed 1), so pairing seed with seed gives large p-values that
    # differ between seeds, and any other pairing gives tiny ones
    refs = _refs()
    rows = []
    for seed in (0, 1):
        a = _noisy(refs, 0.2, 70 + seed)
        other = _noisy(refs, 0.2, 80 + seed)
        b = [o if i % (12 if seed == 0 else 6) == 0 else x for i, (x, o) in enumerate(zip(a, other))]
        rows += [_row(tmp_path, "encoder-decoder", seed, a, refs), _row(tmp_path, "decoder", seed, b, refs)]
    doc = _write(tmp_path, rows, [0, 1])
    by = {a["entry"]: a for a in doc["entries"]}
    best = doc["winners"][0]["leader"]
    other = next(e for e in by if e != best)
    ps = by[other]["p_values"]
    assert abs(ps["0"] - ps["1"]) > 0.02 and min(ps.values()) > 0.01
    assert by[other]["p_value"] == pytest.approx(max(ps.values()))
    assert by[other]["p_value"] == pytest.approx(_expected_p(tmp_path, doc, other, best))


def test_a_model_whose_bleu_barely_drops_is_said_to_ignore_its_input(tmp_path):
    refs = _refs(40)
    rows = [_row(tmp_path, "decoder", 0, _noisy(refs, 0.3, 1), refs, ablation={"bleu": 0.0, "chrf": 0.0}),
            _row(tmp_path, "encoder-decoder", 0, _noisy(refs, 0.3, 2), refs)]
    rows[1]["ablation"] = {"bleu": 0.8 * rows[1]["bleu"], "chrf": 50.0}
    doc = _write(tmp_path, rows, [0])
    line = next(v for v in doc["verdict"] if v.startswith("Source ablation"))
    assert "**encoder-decoder** keeps 80% of its BLEU" in line and "ignores its input" in line
    assert "decoder " in line and "**decoder**" not in line  # the other one reads its input


# ---------------------------------------------------------------------------------------------
# a budget sweep with a planted crossing, fits, spikes and tuning
# ---------------------------------------------------------------------------------------------
SCALES = [0.25, 0.5, 1.0, 2.0]
NOISE = {"decoder": [0.25, 0.27, 0.32, 0.34], "encoder-decoder": [0.45, 0.40, 0.15, 0.10]}
LOSS = {"decoder": (2.0, 3e3, 0.3), "encoder-decoder": (1.6, 8e3, 0.33)}  # (E, A, alpha)
BASE_FLOPS = 4e13


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    refs = _refs(80)
    rows = []
    for si, scale in enumerate(SCALES):
        for entry, noise in NOISE.items():
            e, a, al = LOSS[entry]
            for seed in (0, 1):
                x = BASE_FLOPS * scale
                curve = [{"step": s, "tokens": 500 * s, "loss": 3.0 + 5.0 / (1 + s / 10)} for s in range(5, 205, 5)]
                if entry == "decoder" and scale == 2.0 and seed == 1:
                    curve[25]["loss"] = 9.0  # a planted spike at step 130
                rows.append(_row(out, entry, seed, _noisy(refs, noise[si], 1000 * si + 10 * seed + len(entry)), refs,
                                 scale=scale, train_flops=x * (1 + 0.002 * seed),  # tokens differ by seed
                                 val_loss=e + a * x ** -al + 0.001 * seed,
                                 train_curve=curve, tuned={"lr": 1e-3 if entry == "decoder" else 2e-3}))
    tuning = [{"entry": entry, "seed": 0, "lr": lr, "warmup_steps": 10, "dropout": 0.0, "steps": 50,
               "val_loss": 3.0 + (lr - chosen) ** 2 * 1e5, "metric": None, "flops": 1e12,
               "chosen": lr == chosen}
              for entry, chosen in (("decoder", 1e-3), ("encoder-decoder", 2e-3)) for lr in (5e-4, 1e-3, 2e-3, 4e-3)]
    return out, _write(out, rows, [0, 1], tuning=tuning, scales=SCALES)


def test_sweep_has_one_row_per_entry_and_scale(sweep):
    out, doc = sweep
    assert doc["scales"] == SCALES
    assert [(a["entry"], a["scale"]) for a in doc["entries"]] == [(e, s) for e in NOISE for s in SCALES]
    head, table = _md_table((out / "report.md").read_text(), "Results (mean ± sd over seeds)")
    for a in doc["entries"]:
        assert _col(head, table, "BLEU", a["entry"], f"×{a['scale']:g}") == f"{a['bleu']:.2f} ± {a['bleu_std']:.2f}"
        assert _col(head, table, "train FLOPs", a["entry"], f"×{a['scale']:g}").endswith("T")


def test_sweep_states_the_winner_per_budget_and_the_crossing(sweep):
    out, doc = sweep
    w = {x["scale"]: x for x in doc["winners"]}
    assert w[0.25]["winner"] == "decoder" and w[2.0]["winner"] == "encoder-decoder"
    assert len(doc["crossings"]) == 1
    c = doc["crossings"][0]
    assert (c["before"], c["after"]) == ("decoder", "encoder-decoder") and c["lo"] < c["hi"] <= 1.0
    lines = doc["verdict"]
    assert sum(v.startswith("Budget ×") for v in lines) == 4
    assert lines[0].startswith("Budget ×0.25 (10.01T training FLOPs): **decoder** wins on BLEU")
    cross = next(v for v in lines if v.startswith("Ordering"))
    assert f"**decoder** at ×{c['lo']:g}, **encoder-decoder** at ×{c['hi']:g}" in cross
    assert "paired bootstrap p < 0.001" in lines[0]


def test_sweep_fits_the_planted_power_law_of_validation_loss(sweep):
    out, doc = sweep
    for entry, (e, a, al) in LOSS.items():
        f = doc["fits"][entry]["val_loss"]
        assert f["E"] == pytest.approx(e, abs=0.02) and f["alpha"] == pytest.approx(al, abs=0.02)
        assert f["A"] == pytest.approx(a, rel=0.5)  # A trades off against alpha over 3 decades
        assert f["n_budgets"] == 4 and f["r2"] > 0.999
    # encoder-decoder's BLEU jumps between x0.5 and x1 (noise 0.40 -> 0.15): no power law there
    assert "bleu" not in doc["fits"]["encoder-decoder"]
    head, table = _md_table((out / "report.md").read_text(), "Scaling fits (quality and validation loss vs training FLOPs)")
    row = next(r for r in table if r[0] == "decoder" and r[1] == "val loss")
    assert row[head.index("α")] == f"{doc['fits']['decoder']['val_loss']['alpha']:.3f}"
    assert (out / "quality_vs_flops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_three_budgets_get_no_fit_even_when_seeds_differ_in_flops(tmp_path):
    refs = _refs(20)
    rows = [_row(tmp_path, "decoder", seed, _noisy(refs, 0.3, seed), refs, scale=scale,
                 train_flops=1e13 * scale * (1 + 0.01 * seed), val_loss=2.0 + 30 * (1e13 * scale) ** -0.1)
            for scale in (0.5, 1.0, 2.0) for seed in (0, 1)]  # six distinct FLOPs, three budgets
    doc = _write(tmp_path, rows, [0, 1])
    assert doc["fits"] == {}
    assert "Scaling fits: a saturating power law per entry needs at least 4 budgets; this run has 3" in \
        " ".join(doc["verdict"])


def test_sweep_flags_the_planted_loss_spike_only(sweep):
    out, doc = sweep
    assert [(s["entry"], s["seed"], s["scale"], s["step"]) for s in doc["spikes"]] == [("decoder", 1, 2.0, 130.0)]
    line = next(v for v in doc["verdict"] if v.startswith("Training stability"))
    assert "**decoder** seed 1 ×2 at step 130" in line
    assert "## Loss spikes" in (out / "report.md").read_text()
    assert (out / "loss_curves.png").stat().st_size > 5000


def test_sweep_reports_tuning(sweep):
    out, doc = sweep
    assert len(doc["tuning"]) == 8
    line = next(v for v in doc["verdict"] if v.startswith("Tuning"))
    assert "decoder chose lr 0.001 of 4 candidate(s)" in line and "encoder-decoder chose lr 0.002" in line
    head, table = _md_table((out / "report.md").read_text(), "Tuning runs")
    assert [r[head.index("lr")] for r in table if r[head.index("chosen")] == "✓"] == ["0.001", "0.002"]
    assert (out / "lr_sensitivity.png").stat().st_size > 5000
    page = (out / "report.html").read_text()
    assert page.count("<img") == len(list(out.glob("*.png"))) >= 6
    _same_view(out)  # fits, tuning runs and spikes: each table once in both formats
    assert VIEWS[out].headings().count("Sizing rule") == 1


# ---------------------------------------------------------------------------------------------
# a label task, and results from before the sweep fields existed
# ---------------------------------------------------------------------------------------------
def test_label_task_bootstraps_accuracy_and_drops_decoding_columns(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    rows = []
    for entry, acc in (("encoder", 0.9), ("decoder", 0.7)):
        for seed in (0, 1):
            pred = np.where(rng.random(200) < acc, labels, 1 - labels)
            rel = f"runs/{entry}/seed-{seed}/outputs.jsonl"
            (tmp_path / rel).parent.mkdir(parents=True)
            (tmp_path / rel).write_text("".join(json.dumps({"label": int(y), "prediction": int(p)}) + "\n"
                                                for y, p in zip(labels, pred)))
            r = _row(tmp_path, entry, seed, ["x"] * 3, ["x"] * 3, outputs_path=rel)
            for k in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "len_ratio", "repetition_rate", "samples"):
                r.pop(k)
            r.update(accuracy=float(np.mean(pred == labels)), macro_f1=0.5, objective="classification")
            rows.append(r)
    doc = _write(tmp_path, rows, [0, 1], kind="label")
    by = {a["entry"]: a for a in doc["entries"]}
    assert by["decoder"]["p_value"] < 0.01 and "per example" in by["decoder"]["test"]
    assert doc["verdict"][0].startswith("Quality: **encoder** wins on accuracy")
    head, _ = _md_table((tmp_path / "report.md").read_text(), "Results (mean ± sd over seeds)")
    assert "accuracy" in head and not {"state/ex", "len ratio", "repeat", "dec tok/s"} & set(head)


def test_results_without_the_new_fields_still_report(tmp_path):
    refs = _refs(30)
    rows = []
    for entry in ("encoder-decoder", "decoder"):
        r = _row(tmp_path, entry, 0, _noisy(refs, 0.3 if entry == "decoder" else 0.1, 1), refs)
        for k in ("scale", "train_flops", "tune_flops", "tuned", "train_curve", "outputs_path", "ablation",
                  "examples_truncated", "truncated_fraction"):
            r.pop(k)
        rows.append(r)
    doc = _write(tmp_path, rows, [0])
    md = (tmp_path / "report.md").read_text()
    head, table = _md_table(md, "Results (mean ± sd over seeds)")
    assert "p vs best" not in head and "Scale" not in head and "tune FLOPs" not in head
    # one seed and no outputs: the best mean is not called a winner
    assert doc["verdict"][0].startswith("Quality: no clear winner on BLEU: **encoder-decoder** leads")
    assert "not established" in doc["verdict"][0] and "no per-example outputs" in doc["verdict"][0]
    assert not any(v.startswith("Training stability") for v in doc["verdict"])  # no curves recorded
    assert doc["scales"] == [1.0] and doc["tuning"] == [] and doc["spikes"] == []
    for name in ("loss_vs_flops.png", "quality_vs_params.png", "decoding.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_text_task_without_outputs_decides_on_the_seeds_alone(tmp_path):
    def rows(seeds, ppl):
        out = []
        for entry, base in ppl.items():
            for s in seeds:
                r = _row(tmp_path, entry, s, ["x"] * 3, ["x"] * 3, objective="causal-lm")
                for k in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "outputs_path", "samples"):
                    r.pop(k)
                r.update(ppl=base + 0.1 * s, bpb=1.0)
                out.append(r)
        return out
    doc = _write(tmp_path, rows([0, 1, 2], {"decoder": 20.0, "prefix-lm": 24.0}), [0, 1, 2], kind="text")
    q = doc["verdict"][0]
    assert q.startswith("Quality: **decoder** wins on perplexity (20.10 ± 0.10), 4.00 ahead of prefix-lm")
    assert "ahead in every seed" in q and "no per-example outputs" in q
    one = _write(tmp_path, rows([0], {"decoder": 20.0, "prefix-lm": 24.0}), [0], kind="text")
    assert one["verdict"][0].startswith("Quality: no clear winner on perplexity: **decoder** leads")
    assert "with one seed and no per-example outputs" in one["verdict"][0]


def test_a_seed_missing_from_one_entry_pairs_the_common_seed_ids(tmp_path):
    """prefix-lm has no seed 0. Paired by seed id (1 with 1, 2 with 2) the decoder is behind in
    seed 1, so the order changes between seeds: no winner. Paired by position (decoder seeds
    0, 1 against prefix-lm's 1, 2) the decoder would be ahead in both and win, its gap (1.07)
    being above both seed spreads (0.58, 0.85)."""
    ppl = {("decoder", 0): 20.0, ("decoder", 1): 21.0, ("decoder", 2): 20.0,
           ("prefix-lm", 1): 20.8, ("prefix-lm", 2): 22.0}
    rows = []
    for (entry, seed), v in ppl.items():
        r = _row(tmp_path, entry, seed, ["x"] * 3, ["x"] * 3, objective="causal-lm")
        for k in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "outputs_path", "samples"):
            r.pop(k)
        r.update(ppl=v, bpb=1.0)
        rows.append(r)
    doc = _write(tmp_path, rows, [0, 1, 2], kind="text")
    w = doc["winners"][0]
    assert (w["leader"], w["runner_up"], w["winner"]) == ("decoder", "prefix-lm", None)
    assert w["reason"] == "the order changes between seeds"
    assert doc["verdict"][0].startswith("Quality: no clear winner on perplexity: **decoder** leads")
    assert [a["seeds"] for a in doc["entries"]] == [[0, 1, 2], [1, 2]]


# ---------------------------------------------------------------------------------------------
# inference-cost line
# ---------------------------------------------------------------------------------------------
def _agg(entry: str, ms: float) -> dict:
    return {"entry": entry, "seeds": [0], "latency_ms_per_example": ms, "num_beams": 4,
            "kv_cache_bytes_per_example": 1000.0, "train_flops_per_example": 1.0, "train_time_s": 1.0}


def _latency_line(agg: list[dict], kind: str = "pair") -> str:
    return next(line for line in verdict(agg, kind, []) if line.startswith("Inference cost"))


def test_clear_latency_winner_is_named_with_its_margin():
    line = _latency_line([_agg("decoder", 30.0), _agg("encoder-decoder", 36.0)])
    assert "**decoder** has the lowest decoding latency (30.0 ms" in line
    assert "encoder-decoder, the next, takes 1.20x as long" in line


def test_close_latencies_are_no_clear_difference():
    close = 30.0 * (1 + LATENCY_TIE / 2)
    line = _latency_line([_agg("prefix-lm", close), _agg("decoder", 30.0)])
    assert "**decoder**" in line
    assert f"prefix-lm is within {LATENCY_TIE / 2:.0%} of it: not a clear difference" in line


def test_classification_is_not_called_decoding():
    line = _latency_line([_agg("encoder", 0.5), _agg("decoder", 0.9)], kind="label")
    assert "**encoder** classifies fastest (0.50 ms per example, batched)" in line
    assert "beam" not in line and "KV cache" not in line


def test_tuning_line_names_the_metric_it_chose_on():
    tuning = [{"entry": "decoder", "seed": 0, "lr": lr, "val_loss": 3.0, "metric": m, "flops": 1e9,
               "chosen": lr == 1e-3} for lr, m in ((1e-3, 12.0), (3e-3, 10.0))]
    line = next(v for v in verdict([_agg("decoder", 1.0)], "pair", [], tuning=tuning, tune_metric="task")
                if v.startswith("Tuning"))
    assert line.startswith("Tuning (per entry, on the task metric on validation; short runs at tuning seed 0, the "
                           "choice used at every budget): decoder chose lr 0.001 of 2")
    line = next(v for v in verdict([_agg("decoder", 1.0)], "pair", [], tuning=tuning) if v.startswith("Tuning"))
    assert "on validation loss" in line and "(2.00G FLOPs of tuning)" in line


# ---------------------------------------------------------------------------------------------
# mixture of experts and state-space entries: active parameters, expert load, decoding state
# ---------------------------------------------------------------------------------------------
def test_moe_entry_reports_active_parameters_and_expert_load(tmp_path):
    refs = _refs()
    rows = [_row(tmp_path, "decoder", 0, _noisy(refs, 0.3, 1), refs, active_params=1.5e6),
            _row(tmp_path, "prefix-lm", 0, _noisy(refs, 0.3, 2), refs, params=4.0e6, active_params=1.0e6)]
    # the MoE run's metrics.jsonl, next to its outputs: two evaluations, the last one counts
    metrics = (tmp_path / rows[1]["outputs_path"]).parent / "metrics.jsonl"
    layer = {"tokens_per_expert": [10, 10, 10, 10], "max_violation": 0.0, "dead_experts": 0}
    last = {"tokens_per_expert": [30, 10, 0, 0], "max_violation": 1.5, "dead_experts": 2}
    metrics.write_text("\n".join(json.dumps(r) for r in (
        {"step": 50, "loss": 3.0}, {"step": 50, "eval": {"loss": 3.0}, "moe": {"layers": {"blocks.0.ffn": layer}}},
        {"step": 100, "eval": {"loss": 2.9}, "moe": {"layers": {"blocks.0.ffn": last, "blocks.1.ffn": layer}}})))
    doc = _write(tmp_path, rows, [0])
    line = next(v for v in doc["verdict"] if v.startswith("Mixture of experts"))
    assert line.startswith("Mixture of experts: prefix-lm has 4.00M parameters, 1.00M active per token (25%)")
    assert "busiest expert of a layer took 150% more tokens than the mean, 2 expert(s) received none" in line
    assert "(dense: decoder, every parameter active)" in line
    head, table = _md_table((tmp_path / "report.md").read_text(), "Results")
    assert _col(head, table, "active params", "prefix-lm") == "1.00M"
    assert _col(head, table, "active params", "decoder") == "1.50M"
    assert (tmp_path / "expert_load.png").exists() and (tmp_path / "decode_memory.png").exists()
    # dense entries only: no MoE line, column or load plot
    dense = tmp_path / "dense"
    doc = _write(dense, [_row(dense, "decoder", 0, _noisy(refs, 0.3, 1), refs)], [0])
    assert not any(v.startswith("Mixture of experts") for v in doc["verdict"])
    assert "active params" not in (dense / "report.md").read_text() and not (dense / "expert_load.png").exists()


def test_smallest_decoding_state_counts_the_ssm_state():
    """A Mamba decoder keeps no K/V but a fixed state: the verdict ranks entries by K/V plus
    SSM state, not by K/V alone (which would call the Mamba decoder's 0 B the smallest)."""
    mamba = {**_agg("mamba decoder", 40.0), "kv_cache_bytes_per_example": 0.0,
             "ssm_state_bytes_per_example": 5000.0, "decode_state_bytes_per_example": 5000.0}
    line = _latency_line([_agg("decoder", 30.0), mamba])
    assert "smallest decoding state (KV cache + SSM state) per example is decoder's (1.00kB)" in line


def test_the_method_says_how_the_reported_runs_were_chosen(tmp_path):
    refs = _refs(20)
    how = "trained afresh per seed at its tuned values, chosen among 4 candidates by validation loss"
    rows = [_row(tmp_path, e, s, _noisy(refs, 0.3, s), refs) for e in ("decoder", "prefix-lm") for s in (0, 1)]
    for r in rows:
        r["selection"] = how
    _write(tmp_path, rows, [0, 1])
    want = f"Reported runs: every seed of every entry {how}."
    assert want in (tmp_path / "report.md").read_text() and want in (tmp_path / "report.html").read_text()
    rows[0]["selection"] = rows[1]["selection"] = "trained once per seed at the configured settings (not tuned)"
    _write(tmp_path, rows, [0, 1])
    md = (tmp_path / "report.md").read_text()
    assert "Reported runs of decoder: trained once per seed" in md and f"Reported runs of prefix-lm: {how}." in md
