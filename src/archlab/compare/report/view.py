"""The report's view model: everything report.md and report.html show, built once and rendered
by both templates (``archlab/compare/templates/report.{md,html}.j2``), so the two formats carry
the same sections, tables, verdict lines and notes.

Text fields (``intro``, verdict lines, paragraphs, notes, bullets) are inline Markdown limited
to ``**bold**`` and ```code```: the Markdown template writes them as they are, the HTML template
escapes them and turns those two marks into ``<b>`` / ``<code>``. Table cells and headings are
plain text.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from archlab.compare.report.fmt import _scale
from archlab.compare.report.tables import (
    _fit_table,
    _main_table,
    _samples,
    _sizing_table,
    _spike_table,
    _tuning_table,
)

SIGNIFICANCE_NOTE = (
    "Significance: at each budget every entry is compared with the best one on the same test "
    "examples by paired bootstrap resampling (Koehn 2004; {n} resamples; BLEU/chrF with sacrebleu's "
    "own test, accuracy and ROUGE-L per example, MRR by each query's reciprocal rank, entity F1 "
    "recomputed from each resample's summed entity counts, a probe's token accuracy by each "
    "example's right answer tokens), seed paired with "
    "seed (by seed id); `p vs best` is the "
    "largest p-value over the seed pairings, `95% CI` the bootstrap half-width of the entry's own score. "
    "A winner is called only at p < 0.05 and, with several seeds, a gap larger than the seed-to-seed "
    "standard deviation in the same direction in every seed both entries ran.")

# what a column of the results table means, for the legend under it (only the columns shown);
# a key ending in a space matches every column whose name ends with the rest (e.g. "BLEU src swapped")
COLUMN_NOTES: dict[str, str] = {
    "Params": "all parameters (embeddings included)",
    "active params": "parameters one token uses (a mixture of experts runs k of its E experts)",
    "FLOPs/ex": "forward FLOPs of a typical example (training is 3x)",
    "train FLOPs": "total FLOPs of the training run",
    "tune FLOPs": "spent on the entry's tuning runs",
    " src swapped": "the score when every test source is replaced by another test example's (source ablation)",
    "trunc": "share of the training examples cut to fit the context",
    "state/ex": "decoding state bytes per example (fp32, at the beam size): K/V of the attention layers, "
                "cross-attention included, plus the Mamba layers' conv and SSM states (constant in length)",
    "len ratio": "output words / reference words",
    "repeat": "share of word 3-grams that repeat an earlier one in the same output (looping)",
    "MRR": "mean reciprocal rank of each test query's partner among all test candidates (cosine similarity; "
           "ties ranked against the query)",
    "R@1": "share of queries whose partner is ranked first",
    "token acc": "probe tasks: answer tokens right over all scored answer tokens (greedy decoding, given "
                 "tokens forced); tagging: share of test words whose tag is right, O included",
    "exact match": "share of test examples with every scored answer token right",
    "R@10": "share of queries whose partner is among the top 10",
    "queries/s": "queries embedded in batches and ranked against the whole pool, its candidates embedded "
                 "beforehand (ms/ex: per query, batched)",
    "entity F1": "micro F1 over the test entities, conlleval's definition (type and both boundaries must "
                 "match; a word's tag is its first sub-token's)",
}


@dataclass
class Table:
    """A table of display strings: ``head`` names the columns, each row has one cell per column."""

    head: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    """One ``##`` part of the report, shown in this order: ``paragraphs``, ``bullets``,
    ``table``, ``notes``."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    table: Table | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Plot:
    """A plot written next to the report as ``<name>.png`` (Markdown links the file, HTML
    inlines it)."""

    name: str
    png: bytes

    @property
    def file(self) -> str:
        return f"{self.name}.png"

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


@dataclass
class SampleGroup:
    """Sample outputs of one entry: ``{source, reference, output}`` each."""

    entry: str
    samples: list[dict[str, str]]


@dataclass
class ReportView:
    """What the report shows. ``method_notes``: how the comparison was run and judged (the
    significance test; how each entry's reported runs were chosen): one bullet each under
    "Method", after the results table; append to it rather than to the verdict, which is
    results.json's and states findings. ``sections``: the parts after Method (scaling fits,
    tuning runs, loss spikes, sizing rule)."""

    title: str
    intro: str
    verdict: list[str]
    results: Section
    method_notes: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    samples: list[SampleGroup] = field(default_factory=list)
    samples_title: str = "Sample outputs (lowest seed of the largest budget)"

    def body(self) -> list[Section]:
        """The titled sections in the order both templates render them (plots and samples follow)."""
        out = [Section("Verdict", bullets=list(self.verdict)), self.results]
        if self.method_notes:
            out.append(Section("Method", bullets=list(self.method_notes)))
        return out + list(self.sections)

    def headings(self) -> list[str]:
        """Every ``##`` heading, in order."""
        return ([s.title for s in self.body()] + (["Plots"] if self.plots else [])
                + ([self.samples_title] if self.samples else []))

    def tables(self) -> list[tuple[str, Table]]:
        return [(s.title, s.table) for s in self.body() if s.table is not None]


def column_legend(head: Sequence[str]) -> str:
    """The results table's legend: what each shown column means, in column order."""
    parts = []
    for col in head:
        for k, text in COLUMN_NOTES.items():
            if col == k or (k.startswith(" ") and col.endswith(k)):
                parts.append(f"{k.strip() if k.startswith(' ') else k}: {text}.")
                break
    return " ".join(parts)


def _pool(rows: list[dict[str, Any]]) -> str:
    sizes = {r.get("pool_size") for r in rows if r.get("pool_size")}
    return " / ".join(str(x) for x in sorted(sizes)) or "?"


def _largest_seeds(cfg: Any, scales: Sequence[float]) -> str:
    extra = getattr(getattr(cfg, "budget", None), "seeds_at_largest", None)
    if not extra or len(scales) < 2 or list(extra) == list(cfg.seeds):
        return ""
    return f" ({len(extra)} at the largest budget)"


def selection_notes(rows: list[dict[str, Any]]) -> list[str]:
    """How the reported runs of each entry were chosen (the runs' ``selection``), one line when
    every entry's are chosen alike. Rows from before it was recorded give none."""
    by: dict[str, str] = {}
    for r in rows:
        if r.get("selection"):
            by.setdefault(str(r["entry"]), str(r["selection"]))
    if not by:
        return []
    if len(set(by.values())) == 1:
        return [f"Reported runs: every seed of every entry {next(iter(by.values()))}."]
    return [f"Reported runs of {e}: {v}." for e, v in by.items()]


def build_view(cfg: Any, *, rows: list[dict[str, Any]], agg: list[dict[str, Any]], task_kind: str, shape: Any,
               sizing: list[dict[str, Any]], verdict_lines: list[str], plots: dict[str, bytes],
               scales: Sequence[float], wall_time_s: float, n_bootstrap: int,
               fits: dict[str, dict[str, dict[str, Any]]] | None = None,
               tuning: list[dict[str, Any]] | None = None,
               spike_list: list[dict[str, Any]] | None = None,
               key: str = "", label: str = "") -> ReportView:
    """The report of one compare: ``rows`` the normalized run rows, ``agg`` the aggregated rows
    (significance added), ``verdict_lines`` as in results.json, ``plots`` PNG bytes by name,
    ``key`` / ``label`` the primary metric (for the fit table)."""
    task = cfg.data.get("task", "?")
    steps = sorted({r.get("train_steps") for r in rows if r.get("train_steps") is not None})
    steps_txt = (f"{cfg.train.steps} training steps" if len(scales) == 1 else
                 f"budget scales {', '.join(_scale(s) for s in scales)} "
                 f"({', '.join(str(s) for s in steps)} training steps)")
    if cfg.budget.match == "total_flops":  # steps differ by entry: name them
        per_entry = sorted({(r["entry"], r["train_steps"]) for r in rows if r.get("train_steps") is not None})
        steps_txt = "training steps per entry (" + ", ".join(f"{e} {n}" for e, n in per_entry) + ")"
    intro = (f"Task **{task}** ({task_kind}); budget matched on **{cfg.budget.match}** "
             f"(typical example {shape.src_len:.1f} + {shape.tgt_len:.1f} tokens); "
             f"{len(cfg.seeds)} seed(s) per entry{_largest_seeds(cfg, scales)}; {steps_txt} of "
             f"{cfg.train.tokens_per_batch} padded tokens; "
             + ("greedy decoding of the answers (given tokens forced); " if task_kind == "probe" else
                f"retrieval over the {_pool(rows)} test pairs; " if task_kind == "pairs" else
                "every test word tagged (entity-level F1, conlleval's definition); " if task_kind == "tags" else
                f"decoding with beam {cfg.decode.num_beams}; ")
             + f"total wall time {wall_time_s / 60:.1f} min.")
    head, table = _main_table(agg, task_kind, rows)
    legend = column_legend(head)
    results = Section("Results (mean ± sd over seeds)", table=Table(head, table), notes=[legend] if legend else [])
    sections = []
    if fits:
        sections.append(Section("Scaling fits (quality and validation loss vs training FLOPs)",
                                table=Table(*_fit_table(fits, label, key))))
    if tuning:
        sections.append(Section("Tuning runs", table=Table(*_tuning_table(tuning))))
    if spike_list:
        sections.append(Section("Loss spikes", table=Table(*_spike_table(spike_list))))
    sections.append(Section(
        "Sizing rule",
        paragraphs=[f"All entries share d_model and the block; depth is chosen per architecture to match "
                    f"the {cfg.budget.match} target, then d_ff adjusted."
                    + (" Entries are sized within their budget group: each group's target is its own reference "
                       "entry's (the Group and Reference columns)." if any(s.get("group") is not None
                                                                           for s in sizing) else "")
                    if cfg.budget.match != "total_flops"
                    else f"Models are not sized (each as configured or imported); each entry trains the steps "
                    f"that give it {cfg.budget.reference}'s total training FLOPs ({cfg.train.steps} steps), "
                    "on the same batches in the same order: an entry with fewer FLOPs per example reads "
                    "further into the same example stream."],
        table=Table(*_sizing_table(sizing))))
    return ReportView(
        title=f"archlab compare: {cfg.name}", intro=intro, verdict=list(verdict_lines), results=results,
        method_notes=[*selection_notes(rows), SIGNIFICANCE_NOTE.format(n=n_bootstrap)], sections=sections,
        plots=[Plot(n, b) for n, b in plots.items()],
        samples=[SampleGroup(e, ss) for e, ss in _samples(rows)])
