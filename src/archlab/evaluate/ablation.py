"""Source ablation: does a model read its input?

Decode the test set with every source replaced by another test example's source and score the
outputs against the ORIGINAL references. A model that conditions on its input loses most of
its score; one whose score barely drops writes a plausible target whatever it is given (a
language model of the target side), and its BLEU measures that prior, not translation. This
is the "shuffled source" control of the context-usage literature (e.g. Fernandes et al. 2021,
"Measuring and increasing context usage in context-aware machine translation"; Voita et al.
2021, "Analyzing the source and target contributions to predictions in NMT").
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from archlab.errors import ArchlabError
from archlab.evaluate.runner import DecodeOptions, score_task

ABLATION_METRICS = ("bleu", "chrf", "rougeL")


def derangement(n: int, seed: int = 0) -> list[int]:
    """A uniformly random permutation of ``range(n)`` with no fixed point (``perm[i] != i``),
    reproducible from ``seed``: random permutations drawn until one has no fixed point (about
    e = 2.72 draws on average, for any n >= 2)."""
    if n < 2:
        raise ArchlabError(f"source ablation needs at least 2 test examples to swap sources, got {n}")
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == idx):
            return [int(p) for p in perm]


def ablated_sources(sources: list[str], seed: int = 0) -> list[str]:
    """``sources`` deranged: each position gets another example's source, and, where the test
    set repeats a source text, not an identical copy of its own (a repeated text would leave
    that example un-ablated). Duplicates are repaired by swapping with another position where
    the swap leaves both positions different from their own text."""
    perm = derangement(len(sources), seed)
    n = len(sources)
    for i in range(n):
        if sources[perm[i]] != sources[i]:
            continue
        for j in range(n):
            # after the swap, i gets perm[j] and j gets perm[i]
            if j != i and sources[perm[j]] != sources[i] and sources[perm[i]] != sources[j]:
                perm[i], perm[j] = perm[j], perm[i]
                break
        # no such j: every source is the same text; nothing can be ablated there
    return [sources[p] for p in perm]


def source_ablation(model: Any, tok: Any, examples: list[Any], opts: DecodeOptions, *,
                    objective: str, seed: int = 0) -> dict[str, float]:
    """BLEU / chrF / ROUGE-L of ``model`` when each test source is replaced by another test
    source (a seeded derangement), scored against the original references.

    ``examples`` are the pair task's test examples (``archlab.data.TextExample``), scored as
    :func:`archlab.evaluate.runner.score_task` scores them (the first ``opts.test_examples``,
    the same decoding options and prompt layout for ``objective``), so the result sits next
    to the normal score like for like. Latency is not timed here."""
    examples = opts.test_subset(examples)
    if any(ex.source is None or ex.target is None for ex in examples):
        raise ArchlabError("source ablation needs a pair task (examples with a source and a target)")
    swapped = ablated_sources([ex.source for ex in examples], seed)
    ablated = [replace(ex, source=s) for ex, s in zip(examples, swapped)]
    res = score_task(model, tok, ablated, "pair", replace(opts, latency_examples=0, test_examples=None),
                     objective=objective)
    return {k: float(res[k]) for k in ABLATION_METRICS if res.get(k) is not None}
