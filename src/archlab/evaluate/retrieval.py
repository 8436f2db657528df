"""Sentence embeddings and retrieval scores: embed texts with a model (the pooling of its
``contrastive`` objective), rank every candidate of the test pool for every query by cosine
similarity, and score recall@k and the mean reciprocal rank (Voorhees 1999).

Ranks are exact over the whole pool (a dense (queries x pool) similarity matrix in float64),
and ties are broken against the query: the correct candidate is ranked after every candidate
with an equal score, so a model whose embeddings are all equal ranks it last for every query
(never a lucky recall@1), and the same embeddings always give the same ranks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from archlab.errors import ArchlabError

KS = (1, 10)  # recall@k reported


def retrieval_ranks(sim: np.ndarray) -> np.ndarray:
    """1-based rank of each query's correct candidate: ``sim`` is (Q, D) with D >= Q and the
    correct candidate of query i in column i; ties count against the query."""
    sim = np.asarray(sim, dtype=np.float64)
    Q, D = sim.shape
    if D < Q:
        raise ValueError(f"{Q} queries but only {D} candidates: query i's candidate is column i")
    correct = sim[np.arange(Q), np.arange(Q)][:, None]  # (Q, 1)
    # every candidate scoring at least the correct one's score comes first (itself included)
    return (sim >= correct).sum(axis=1).astype(np.int64)


def retrieval_metrics(ranks: Sequence[int], ks: Sequence[int] = KS) -> dict[str, float]:
    """recall@k (share of queries whose candidate is in the top k) and MRR (mean of 1 / rank
    over the full ranking, not cut at any k), from 1-based ranks."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        raise ValueError("no queries ranked")
    out = {f"recall_at_{k}": float((r <= k).mean()) for k in ks}
    out["mrr"] = float((1.0 / r).mean())
    out["mean_rank"] = float(r.mean())
    return out


def embedding_objective(model: Any, tok: Any, *, options: dict[str, Any] | None = None,
                        max_len: int | None = None, max_source_len: int | None = None,
                        max_target_len: int | None = None) -> Any:
    """The :class:`~archlab.objectives.Contrastive` objective that embeds texts for ``model``:
    the run's pooling (``options``, the run's objective options: only ``pooling`` matters
    here; default per family) and token budgets."""
    from archlab.objectives import Contrastive

    opts = {k: v for k, v in (options or {}).items() if k == "pooling"}
    n = max_len or _model_context(model)
    return Contrastive(tok.special, model.cfg.arch, n, max_source_len=max_source_len,
                       max_target_len=max_target_len, **opts)


def _model_context(model: Any) -> int:
    cfg = model.cfg
    return cfg.max_seq_len if cfg.position in ("learned", "sinusoidal") else max(cfg.max_seq_len, 512)


@torch.inference_mode()
def embed_ids(model: Any, objective: Any, texts: Sequence[Sequence[int]], *, budget: int | None = None,
              batch_size: int = 64, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """L2-normalised embeddings (N, C) float32 of token-id texts, in input order (batched by
    length; a text's embedding does not depend on its batch-mates)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.cfg.d_model), dtype=np.float32)
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            b = objective.text_batch([texts[i] for i in idx], budget)
            b = {k: v.to(device) for k, v in b.items()}
            emb, _ = objective.embed(model, b)
            out[idx] = emb.cpu().numpy()
            if progress is not None:
                progress(len(idx))
    finally:
        model.train(was)
    return out


def score_retrieval(model: Any, tok: Any, examples: list[Any], *, objective: Any,
                    batch_size: int = 64, ks: Sequence[int] = KS) -> dict[str, Any]:
    """Retrieve each test query's partner among all test candidates (``TextExample`` source ->
    target): recall@k, MRR, mean rank, pool size, and the search cost as queries per second
    (queries embedded in batches and ranked against candidates embedded beforehand, as an
    index would hold them). ``_outputs_rows``: per query its rank and reciprocal rank."""
    n = len(examples)
    if n < max(ks):
        raise ArchlabError(f"retrieval: the pool has {n} candidates, fewer than k={max(ks)} (recall@{max(ks)}); "
                           "use a larger test split (data.test_fraction) or more test examples")
    q_ids = tok.encode_batch([ex.source or "" for ex in examples])
    d_ids = tok.encode_batch([ex.target or "" for ex in examples])
    docs = embed_ids(model, objective, d_ids, budget=objective.positive_budget, batch_size=batch_size)
    t0 = time.perf_counter()
    queries = embed_ids(model, objective, q_ids, budget=objective.query_budget, batch_size=batch_size)
    sim = queries.astype(np.float64) @ docs.astype(np.float64).T  # (Q, D) cosine (unit vectors)
    ranks = retrieval_ranks(sim)
    top = sim.argmax(axis=1)
    dt = time.perf_counter() - t0
    out: dict[str, Any] = retrieval_metrics(ranks, ks)
    out["pool_size"] = n
    out["queries_per_s"] = n / max(dt, 1e-9)
    out["latency_ms_per_example"] = 1000.0 * dt / n  # batched, per query
    out["samples"] = [{"source": ex.source, "reference": ex.target, "output": examples[int(j)].target}
                      for ex, j in zip(examples[:3], top[:3])]
    out["_outputs"] = [examples[int(j)].target or "" for j in top]  # each query's top candidate
    out["_outputs_rows"] = [{"query": ex.source, "positive": ex.target, "rank": int(r), "rr": 1.0 / int(r)}
                            for ex, r in zip(examples, ranks)]
    out["_shape"] = {"src_len": float(np.mean([min(len(x), objective.query_budget) for x in q_ids])),
                     "tgt_len": float(np.mean([min(len(x), objective.positive_budget) for x in d_ids]))}
    return out


def search_speed_interleaved(models: dict[str, tuple[Any, Any]], tok: Any, examples: list[Any], *,
                             n_queries: int | None = None, batch_size: int = 64,
                             repeats: int = 3) -> dict[str, dict[str, float]]:
    """Queries per second of each ``name: (model, embedding objective)``: the first
    ``n_queries`` test queries (all: None) embedded in batches and ranked against the whole
    pool's candidates (embedded beforehand, as an index holds them), the fastest of
    ``repeats`` timings after a warm-up. The models take turns, so a slow spell of the machine
    falls on all of them (as :func:`archlab.evaluate.runner.latency_ms_interleaved` times
    decoding)."""
    q_ids = tok.encode_batch([ex.source or "" for ex in examples[:n_queries]])
    d_ids = tok.encode_batch([ex.target or "" for ex in examples])
    docs = {name: embed_ids(m, o, d_ids, budget=o.positive_budget, batch_size=batch_size)
            for name, (m, o) in models.items()}

    def search(name: str) -> float:
        m, o = models[name]
        t0 = time.perf_counter()
        q = embed_ids(m, o, q_ids, budget=o.query_budget, batch_size=batch_size)
        retrieval_ranks(q.astype(np.float64) @ docs[name].astype(np.float64).T)
        return time.perf_counter() - t0

    for name in models:  # warm-up
        search(name)
    best = {name: float("inf") for name in models}
    for _ in range(max(repeats, 1)):
        for name in models:
            best[name] = min(best[name], search(name))
    n = max(len(q_ids), 1)
    return {name: {"queries_per_s": n / max(t, 1e-9), "latency_ms_per_example": 1000.0 * t / n}
            for name, t in best.items()}


__all__ = ["KS", "embed_ids", "embedding_objective", "retrieval_metrics", "retrieval_ranks", "score_retrieval",
           "search_speed_interleaved"]
