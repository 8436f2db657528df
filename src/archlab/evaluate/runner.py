"""Score a model on held-out examples: task quality, and the cost of getting it (decoding
tokens/s in batches, latency per example at batch 1). Used by ``archlab evaluate``, by the
trainer's periodic evaluation (a decoded validation subset) and by ``archlab compare``."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import archlab.evaluate.metrics as M  # the module itself: the package imports this one
from archlab.errors import ArchlabError, ConfigError
from archlab.generate.config import default_from_generation

# objectives whose models read a source and write a target (decoded with the seq2seq layout)
SEQ2SEQ_OBJECTIVES = ("seq2seq", "prefix-lm", "span-corruption", "denoising")


@dataclass
class DecodeOptions:
    # defaults: GenerationConfig's (archlab.generate.config, the one place they are set)
    num_beams: int = field(default_factory=default_from_generation("num_beams"))  # 1: greedy
    max_new_tokens: int = field(default_factory=default_from_generation("max_new_tokens"))
    length_penalty: float = field(default_factory=default_from_generation("length_penalty"))
    batch_size: int = 32
    latency_examples: int = 0  # examples timed one at a time (batch 1) for latency
    test_examples: int | None = None  # score only the first N examples (None: all)
    max_source_len: int | None = None  # the run's source budget (train.max_source_len), as trained
    max_target_len: int | None = None  # retrieval: the candidates' budget (train.max_target_len)
    max_len: int | None = None  # retrieval: the run's context (train.max_len; None: the model's)

    def test_subset(self, examples: list[Any]) -> list[Any]:
        """The examples that are scored: the first ``test_examples`` (all when unset)."""
        return examples[: self.test_examples] if self.test_examples else examples


def _gen_config(opts: DecodeOptions, layout: str) -> Any:
    from archlab.generate import GenerationConfig

    return GenerationConfig(strategy="beam" if opts.num_beams > 1 else "greedy",
                            num_beams=max(opts.num_beams, 1), max_new_tokens=opts.max_new_tokens,
                            length_penalty=opts.length_penalty, prompt_layout=layout,
                            max_source_len=opts.max_source_len)


def decode(model: Any, tok: Any, sources: list[list[int]], opts: DecodeOptions, layout: str = "seq2seq",
           progress: Callable[[int], None] | None = None) -> tuple[list[list[int]], float, int]:
    """Batched decoding of every source, similar lengths batched together; returns (outputs in
    input order, seconds, tokens generated)."""
    from archlab.generate import generate

    gcfg = _gen_config(opts, layout)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    by_index: dict[int, list[int]] = {}
    n_tok = 0
    t0 = time.perf_counter()
    for i in range(0, len(order), opts.batch_size):
        idx = order[i : i + opts.batch_size]
        res = generate(model, [sources[j] for j in idx], gcfg, special=tok.special)
        for j, seq in zip(idx, res.sequences):
            by_index[j] = seq
        n_tok += res.n_new_tokens
        if progress is not None:
            progress(len(idx))
    return [by_index[i] for i in range(len(sources))], time.perf_counter() - t0, n_tok


def latency_ms(model: Any, tok: Any, sources: list[list[int]], opts: DecodeOptions, layout: str = "seq2seq") -> float:
    """Milliseconds to decode one example alone (batch 1): see :func:`latency_ms_interleaved`."""
    return latency_ms_interleaved({"model": model}, tok, sources, opts, layout)["model"]


def latency_ms_interleaved(models: dict[str, Any], tok: Any, sources: list[list[int]],
                           opts: DecodeOptions, layout: str = "seq2seq", repeats: int = 3) -> dict[str, float]:
    """Batch-1 decoding latency of each model: the mean over ``sources`` of the fastest of
    ``repeats`` timings of each example, after one warm-up per model.

    The models take turns example by example, so a slow spell of the machine (other jobs, a
    memory-bandwidth dip) falls on all of them instead of on whichever model it was timing,
    and the fastest of a few repeats drops one-off interruptions (the practice of ``timeit``).
    On this project's 2-core machine, with each model timed once per example in its own job,
    the ratio of the demo's prefix-LM and decoder latencies was 0.87 in one run and 1.22 in
    another with identical outputs (at two commits whose decoding changes apply to every
    architecture alike); timed this way, three repeats gave 0.937, 0.936 and 0.951, and a
    fourth, in another process on another occasion, 1.029."""
    from archlab.generate import generate

    if not sources or not models:
        return {name: math.nan for name in models}
    gcfg = _gen_config(opts, layout)
    best: dict[str, list[float]] = {name: [math.inf] * len(sources) for name in models}
    for model in models.values():
        generate(model, sources[:1], gcfg, special=tok.special)
    for _ in range(max(repeats, 1)):
        for i, s in enumerate(sources):
            for name, model in models.items():
                t0 = time.perf_counter()
                generate(model, [s], gcfg, special=tok.special)
                best[name][i] = min(best[name][i], time.perf_counter() - t0)
    return {name: 1000.0 * statistics.fmean(ts) for name, ts in best.items()}


def score_pairs(model: Any, tok: Any, examples: list[Any], opts: DecodeOptions, *,
                layout: str = "seq2seq", progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Decode sources (prompts in ``layout``) and score against targets: BLEU, chrF, ROUGE,
    length ratio, repetition."""
    srcs = [tok.encode(ex.source) for ex in examples]
    refs = [ex.target for ex in examples]
    hyp_ids, dt, n_tok = decode(model, tok, srcs, opts, layout, progress=progress)
    hyps = [tok.decode(h) for h in hyp_ids]
    out: dict[str, Any] = {**M.translation_metrics(hyps, refs), **M.summarization_metrics(hyps, refs)}
    out["len_ratio"] = M.length_ratio(hyps, refs)
    out["repetition_rate"] = M.repetition_rate(hyps)
    out["decode_tokens_per_s"] = n_tok / max(dt, 1e-9)
    out["decode_time_s"] = dt
    if opts.latency_examples:
        out["latency_ms_per_example"] = latency_ms(model, tok, srcs[: opts.latency_examples], opts, layout)
    out["samples"] = [{"source": ex.source, "reference": ex.target, "output": h}
                      for ex, h in zip(examples[:3], hyps[:3])]
    out["_shape"] = {"src_len": float(np.mean([len(s) for s in srcs])),
                     "tgt_len": float(np.mean([len(h) for h in hyp_ids]) if hyp_ids else 0.0)}
    out["_outputs"] = hyps
    out["_outputs_rows"] = [{"source": ex.source, "reference": ex.target, "hypothesis": h}
                            for ex, h in zip(examples, hyps)]
    return out


def probe_answers(tok: Any, examples: list[Any]) -> tuple[list[list[int]], list[list[int]], list[dict[int, int]], list[list[int]]]:
    """(sources, reference answers, forced tokens, scored indices) of probe examples as token
    ids: the given target positions (``TextExample.tgt_given``) are forced when decoding and
    not scored, the rest are scored. Every symbol must be one token (tokenizer kind word)."""
    srcs = tok.encode_batch([ex.source or "" for ex in examples])
    refs = tok.encode_batch([ex.target or "" for ex in examples])
    forced, scored = [], []
    for ex, r in zip(examples, refs):
        if len(r) != len((ex.target or "").split()):
            raise ArchlabError(f"probe task target {ex.target[:40]!r} is {len(r)} tokens for "
                               f"{len((ex.target or '').split())} symbols; probe tasks need tokenizer.kind: word")
        given = set(ex.tgt_given or ())
        forced.append({j: r[j] for j in sorted(given) if j < len(r)})
        scored.append([j for j in range(len(r)) if j not in given])
    return srcs, refs, forced, scored


def check_probe_fits(model: Any, src_len: int, tgt_len: int, group: str | None) -> None:
    """Absolute-position models (learned, sinusoidal) cannot read past ``model.max_seq_len``:
    a probe input that does not fit is an error, not a silent cut of the source (length
    extrapolation is what the longer test lengths measure)."""
    cfg = model.cfg
    if cfg.position not in ("learned", "sinusoidal"):
        return
    if cfg.arch == "encoder-decoder":
        need = max(src_len + 1, tgt_len + 1)  # source <eos>; <start> answer
    else:
        need = src_len + tgt_len + 2  # <bos> source <sep> answer (the final <eos> is not fed)
    if need > cfg.max_seq_len:
        at = f" (test length {group})" if group else ""
        raise ArchlabError(f"a probe example{at} needs {need} positions but model.max_seq_len={cfg.max_seq_len} "
                           f"({cfg.position} positions cannot extrapolate); evaluate shorter lengths "
                           "(data.options.eval_lens) or train with a larger model.max_seq_len")


def score_probes(model: Any, tok: Any, examples: list[Any], opts: DecodeOptions, *, layout: str = "seq2seq",
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Probe tasks (archlab.data.probes): greedy decoding of each answer, teacher-free, with the
    given target positions forced (MQAR's query keys), scored by
    :func:`archlab.evaluate.metrics.probe_metrics` (per scored token and per example, overall
    and per group). The whole source is read, never cut to the training budget
    (``max_source_len``): the longer test lengths are the point. Beams and ``max_new_tokens``
    do not apply: decoding is greedy and runs to the answer's length plus its ``<eos>``."""
    from archlab.generate import GenerationConfig, generate

    srcs, refs, forced, scored = probe_answers(tok, examples)
    for ex, s, r in zip(examples, srcs, refs):
        check_probe_fits(model, len(s), len(r), ex.group)
    order = sorted(range(len(srcs)), key=lambda i: (len(srcs[i]), len(refs[i])))
    preds: dict[int, list[int]] = {}
    n_tok = 0
    t0 = time.perf_counter()
    for i in range(0, len(order), opts.batch_size):
        idx = order[i : i + opts.batch_size]
        gcfg = GenerationConfig(strategy="greedy", max_new_tokens=max(len(refs[j]) for j in idx) + 1,
                                prompt_layout=layout)
        res = generate(model, [srcs[j] for j in idx], gcfg, special=tok.special, forced=[forced[j] for j in idx])
        for j, seq in zip(idx, res.sequences):
            preds[j] = seq
        n_tok += res.n_new_tokens
        if progress is not None:
            progress(len(idx))
    dt = time.perf_counter() - t0
    hyp_ids = [preds[i] for i in range(len(srcs))]
    out: dict[str, Any] = M.probe_metrics(hyp_ids, refs, scored, [ex.group for ex in examples])
    out["decoding"] = "greedy, given target tokens forced"
    out["decode_tokens_per_s"] = n_tok / max(dt, 1e-9)
    out["decode_time_s"] = dt
    if opts.latency_examples:
        gcfg_opts = replace(opts, num_beams=1, max_new_tokens=max(len(r) for r in refs) + 1)
        out["latency_ms_per_example"] = latency_ms(model, tok, srcs[: opts.latency_examples], gcfg_opts, layout)
    return _probe_outputs(out, tok, examples, srcs, refs, hyp_ids, scored)


def _probe_outputs(out: dict[str, Any], tok: Any, examples: list[Any], srcs: list[list[int]],
                   refs: list[list[int]], hyp_ids: list[list[int]], scored: list[list[int]]) -> dict[str, Any]:
    """Samples, typical shape and per-example output rows of a probe scoring (generated or
    classified answers alike), added to ``out``."""
    hyps = [tok.decode(h) for h in hyp_ids]
    out["samples"] = [{"source": ex.source, "reference": ex.target, "output": h}
                      for ex, h in zip(examples[:3], hyps[:3])]
    out["_shape"] = {"src_len": float(np.mean([len(s) for s in srcs])),
                     "tgt_len": float(np.mean([len(r) for r in refs]))}
    out["_outputs"] = hyps
    # per example the scored answer tokens and those right: the compare's paired test of
    # token_acc resamples examples with these (archlab.compare.report.analysis)
    out["_outputs_rows"] = [{"source": ex.source, "reference": ex.target, "hypothesis": h, "group": ex.group,
                             "scored": len(sc), "right": M.probe_hits(p, r, sc)}
                            for ex, h, p, r, sc in zip(examples, hyps, hyp_ids, refs, scored)]
    return out


def check_row_fits(model: Any, n: int, where: str) -> None:
    """A token-classification row of ``n`` positions must fit an absolute-position model."""
    cfg = model.cfg
    if cfg.position in ("learned", "sinusoidal") and n > cfg.max_seq_len:
        raise ArchlabError(f"{where} needs {n} positions but model.max_seq_len={cfg.max_seq_len} ({cfg.position} "
                           "positions cannot extrapolate)")


def _token_objective(model: Any, tok: Any, options: dict[str, Any] | None, need: int) -> Any:
    """The token-classification objective that scores rows of up to ``need`` positions: no
    training cut (words past a cut would go untagged, answers unread); rows that do not fit an
    absolute-position model are refused by :func:`check_row_fits` instead."""
    from archlab.objectives import make_objective

    return make_objective("token-classification", tok.special, model.cfg.arch, max(model.cfg.max_seq_len, need),
                          **dict(options or {}))


@torch.inference_mode()
def score_tags(model: Any, tok: Any, examples: list[Any], names: list[str], *, batch_size: int = 32,
               objective_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Tag every word with the model's token-classification head (a word's tag is its first
    sub-token's) and score the sentences: entity-level precision / recall / F1 and token
    accuracy (:func:`archlab.evaluate.metrics.ner_metrics`), time per sentence (batched). A
    word without a token (dropped by the tokenizer's normalizer) is tagged ``O``."""
    from archlab.data import tokenize_examples

    if model.cfg.n_tags != len(names):
        raise ArchlabError(f"the model has {model.cfg.n_tags} tags (model.n_tags) but the task has {len(names)}; "
                           "evaluate a model trained with objective token-classification on this task")
    was = model.training
    model.eval()
    exs = tokenize_examples(examples, tok, names)
    for ex in exs:
        check_row_fits(model, len(ex.ids) + 2, "a sentence")
    obj = _token_objective(model, tok, objective_options, max(len(ex.ids) for ex in exs) + 2)
    gold, pred = [], []
    t0 = time.perf_counter()
    for i in range(0, len(exs), batch_size):
        chunk = exs[i : i + batch_size]
        rows = obj.predict(model, obj.build(chunk, np.random.default_rng(0))).tolist()  # (B, T)
        for ex, row in zip(chunk, rows):
            tags = ["O"] * len(ex.tags or [])
            prev = -1
            for k, w in enumerate(ex.word_ids or []):
                if w != prev:
                    tags[w] = names[row[k + 1]]  # (+1: <cls>)
                prev = w
            pred.append(tags)
            gold.append([names[t] for t in ex.tags or []])
    dt = time.perf_counter() - t0
    model.train(was)
    res: dict[str, Any] = M.ner_metrics(gold, pred)
    res["latency_ms_per_example"] = 1000.0 * dt / max(len(examples), 1)
    out_rows = []
    for ex, g, p in zip(examples, gold, pred):
        c, n_p, n_g = M.entity_counts(g, p)
        out_rows.append({"words": ex.words, "gold": g, "pred": p, "correct": c, "predicted": n_p,
                         "gold_entities": n_g})
    res["_outputs_rows"] = out_rows
    res["samples"] = [{"source": " ".join(ex.words or []), "reference": " ".join(g), "output": " ".join(p)}
                      for ex, g, p in zip(examples[:3], gold[:3], pred[:3])]
    res["_shape"] = {"src_len": float(np.mean([len(ex.ids) for ex in exs])), "tgt_len": 0.0}
    return res


@torch.inference_mode()
def score_probe_tokens(model: Any, tok: Any, examples: list[Any], *, batch_size: int = 32,
                       objective_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A probe task (mqar) answered by token classification: every predicted target position
    is ``<mask>`` in the row and classified over the vocabulary, the given ones stay
    (``objectives/tokcls.py``); scored as the generative probes are
    (:func:`archlab.evaluate.metrics.probe_metrics`: ``token_acc``, ``exact_match``, per
    group), so an encoder's MQAR stands beside the decoders'."""
    from archlab.objectives import Example

    was = model.training
    model.eval()
    srcs, refs, _forced, scored = probe_answers(tok, examples)
    exs = [Example(src=s, tgt=r, tgt_given=[j for j in range(len(r)) if j not in set(sc)])
           for s, r, sc in zip(srcs, refs, scored)]
    for ex, e in zip(exs, examples):
        at = f" (test length {e.group})" if e.group else ""
        check_row_fits(model, len(ex.src or []) + len(ex.tgt or []) + 2, f"a probe example{at}")
    obj = _token_objective(model, tok, objective_options, max(len(s) + len(r) + 2 for s, r in zip(srcs, refs)))
    hyps: list[list[int]] = []
    t0 = time.perf_counter()
    for i in range(0, len(exs), batch_size):
        chunk = exs[i : i + batch_size]
        rows = obj.predict(model, obj.build(chunk, np.random.default_rng(0))).tolist()  # (B, T)
        for ex, row in zip(chunk, rows):
            off = len(ex.src or []) + 2  # <cls> source <sep>
            given = set(ex.tgt_given or ())
            hyps.append([t if j in given else row[off + j] for j, t in enumerate(ex.tgt or [])])
    dt = time.perf_counter() - t0
    model.train(was)
    out: dict[str, Any] = M.probe_metrics(hyps, refs, scored, [ex.group for ex in examples])
    out["decoding"] = "token classification: each answer slot masked and classified, given tokens kept"
    # (time per example, batched: not the batch-1 decoding latency the generative entries report)
    out["classify_ms_per_example"] = 1000.0 * dt / max(len(examples), 1)
    return _probe_outputs(out, tok, examples, srcs, refs, hyps, scored)


@torch.inference_mode()
def score_labels(model: Any, tok: Any, examples: list[Any], batch_size: int = 32) -> dict[str, Any]:
    """Classify with the model's pooled head: accuracy, macro-F1, time per example."""
    from archlab.objectives import Example, make_objective

    was = model.training
    model.eval()
    obj = make_objective("classification", tok.special, model.cfg.arch, model.cfg.max_seq_len)
    preds: list[int] = []
    t0 = time.perf_counter()
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        b = obj.build([Example(ids=tok.encode(ex.text), label=0) for ex in chunk], np.random.default_rng(0))
        preds += model.classify(b["input_ids"], b["attention_mask"]).argmax(-1).tolist()
    dt = time.perf_counter() - t0
    model.train(was)
    out: dict[str, Any] = M.classification_metrics(preds, [ex.label for ex in examples], model.cfg.n_classes)
    out["latency_ms_per_example"] = 1000.0 * dt / max(len(examples), 1)
    out["_outputs_rows"] = [{"label": ex.label, "prediction": p} for ex, p in zip(examples, preds)]
    out["_shape"] = {"src_len": float(np.mean([len(tok.encode(ex.text)) for ex in examples[:200]])),
                     "tgt_len": 0.0}
    return out


@torch.inference_mode()
def score_texts(model: Any, tok: Any, examples: list[Any], objective: str) -> dict[str, Any]:
    """Language models: loss, perplexity and bits per byte of the texts (a causal LM scores
    every token; a prefix-LM model trained with prefix-LM scores a causal read too, the
    comparable number). Encoders report their masked-LM loss and token accuracy on a fixed
    masking (seed 0), since they define no text likelihood."""
    from archlab.objectives import Example, make_objective

    arch = model.cfg.arch
    was = model.training
    model.eval()
    rng = np.random.default_rng(0)
    total, n_tok, n_bytes, correct = 0.0, 0, 0, 0
    name = "masked-lm" if arch == "encoder" else "causal-lm"
    obj = make_objective(name, tok.special, arch, model.cfg.max_seq_len)
    for i in range(0, len(examples), 16):
        # texts longer than the model's context are cut; bytes count only what was scored
        ids = [tok.encode(ex.text)[: obj.max_len - 2] for ex in examples[i : i + 16]]
        b = obj.build([Example(ids=x) for x in ids], rng)
        lo = obj.loss(model, b)
        total += float(lo.loss) * lo.n_tokens
        n_tok += lo.n_tokens
        correct += lo.n_correct or 0
        n_bytes += sum(len(tok.decode(x).encode("utf-8")) for x in ids)
    model.train(was)
    if arch == "encoder":
        return {"mlm_loss": total / max(n_tok, 1), "mlm_accuracy": correct / max(n_tok, 1),
                "_shape": {"src_len": n_tok / max(len(examples), 1), "tgt_len": 0.0}}
    out: dict[str, Any] = M.lm_metrics(total, n_tok, n_bytes)
    out["_shape"] = {"src_len": n_tok / max(len(examples), 1), "tgt_len": 0.0}
    return out


def score_task(model: Any, tok: Any, examples: list[Any], kind: str, opts: DecodeOptions, *,
               objective: str, progress: Callable[[int], None] | None = None,
               objective_options: dict[str, Any] | None = None,
               label_names: list[str] | None = None) -> dict[str, Any]:
    """Metrics for ``examples`` (archlab.data.TextExample) of a task of ``kind`` (pair | pairs |
    label | tags | text | probe: :func:`archlab.data.datasets.score_kind`). Keys starting with
    ``_`` are internal (``_shape``: mean source/target lengths). A ``pairs`` task, or a model
    trained with the ``contrastive`` objective, is scored by retrieval over the examples as the
    pool (``objective_options``: its pooling). A ``tags`` task (``label_names``: its tags) is
    tagged word by word (entity F1); a probe task with a model trained by token-classification
    is answered slot by slot (the same keys as decoding)."""
    if not examples:
        raise ArchlabError("no examples to evaluate")
    model.eval()
    if kind == "pairs" or objective == "contrastive":
        from archlab.evaluate.retrieval import embedding_objective, score_retrieval

        obj = embedding_objective(model, tok, options=objective_options, max_len=opts.max_len,
                                  max_source_len=opts.max_source_len, max_target_len=opts.max_target_len)
        out = score_retrieval(model, tok, examples, objective=obj, batch_size=opts.batch_size)
    elif kind == "tags":
        if objective != "token-classification" or not label_names:
            raise ArchlabError(f"a tags task is scored by a model trained with objective token-classification "
                               f"(this one: {objective})")
        out = score_tags(model, tok, examples, label_names, batch_size=opts.batch_size,
                         objective_options=objective_options)
    elif kind == "probe" and objective == "token-classification":
        out = score_probe_tokens(model, tok, examples, batch_size=opts.batch_size,
                                 objective_options=objective_options)
    elif kind == "probe":
        if model.cfg.arch == "encoder":
            raise ArchlabError("an encoder-only model cannot generate the answers of a probe task")
        from archlab.objectives.layout import layout_for_objective

        out = score_probes(model, tok, examples, opts, layout=layout_for_objective(objective), progress=progress)
    elif kind == "pair":
        if model.cfg.arch == "encoder":
            raise ArchlabError("an encoder-only model cannot generate targets for a pair task")
        from archlab.objectives.layout import layout_for_objective

        # the layout the objective trained (one definition with archlab generate's default)
        out = score_pairs(model, tok, examples, opts, layout=layout_for_objective(objective), progress=progress)
    elif kind == "label":
        out = score_labels(model, tok, examples, opts.batch_size)
    else:
        out = score_texts(model, tok, examples, objective)
    out["examples"] = len(examples)
    return out


def decode_metric_fn(tok: Any, examples: list[Any], kind: str, objective: str, *, n: int,
                     max_new_tokens: int, num_beams: int, max_source_len: int | None = None,
                     max_target_len: int | None = None, objective_options: dict[str, Any] | None = None,
                     max_len: int | None = None,
                     label_names: list[str] | None = None) -> Callable[[Any, int], dict[str, float]] | None:
    """The trainer's periodic task metric: decode the first ``n`` validation examples (pair
    tasks: BLEU/chrF/ROUGE-L; probe tasks: token_acc, exact_match), retrieve among them
    (pairs tasks and contrastive models: MRR, recall@1, and recall@10 when there are at least
    10), or tag them (tags tasks, ``label_names`` their tags: f1, precision, recall,
    token_acc); None for other tasks."""
    subset = examples[:n]
    retrieval = kind == "pairs" or objective == "contrastive"
    if n <= 0 or not subset or (kind not in ("pair", "probe", "tags") and not retrieval):  # label: the loss pass counts accuracy
        return None
    if retrieval:
        from archlab.evaluate.retrieval import KS, embedding_objective, score_retrieval

        ks = tuple(k for k in KS if k <= len(subset))

        def retrieve(model: Any, step: int) -> dict[str, float]:
            obj = embedding_objective(model, tok, options=objective_options, max_len=max_len,
                                      max_source_len=max_source_len, max_target_len=max_target_len)
            res = score_retrieval(model, tok, subset, objective=obj, ks=ks)
            return {k: float(res[k]) for k in ("mrr", *(f"recall_at_{k}" for k in ks))}

        return retrieve
    opts = DecodeOptions(num_beams=num_beams, max_new_tokens=max_new_tokens, max_source_len=max_source_len)

    def fn(model: Any, step: int) -> dict[str, float]:
        was = model.training
        try:
            res = score_task(model, tok, subset, kind, opts, objective=objective, label_names=label_names,
                             objective_options=objective_options)
        finally:
            model.train(was)
        keep = (("token_acc", "exact_match") if kind == "probe" else
                ("f1", "precision", "recall", "token_acc") if kind == "tags" else ("bleu", "chrf", "rougeL"))
        return {k: float(res[k]) for k in keep}

    return fn


def _public(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def _override_data(data_cfg: Any, overrides: list[str]) -> Any:
    """The run's data config with ``data.KEY=VALUE`` overrides applied (checked like the
    training config: unknown keys and bad values are one-line errors)."""
    from archlab.config import apply_overrides, from_dict, parse_override, to_dict

    for text in overrides:
        path, _ = parse_override(text)
        if path[0] != "data" or len(path) < 2:
            raise ConfigError(f"override {text!r}: evaluate takes data.KEY=VALUE (the run's data section); "
                              "decoding is set with the --num-beams, --max-new-tokens, ... flags")
    raw = apply_overrides({"data": to_dict(data_cfg)}, overrides)["data"]
    return from_dict(type(data_cfg), raw, prefix="data")


def evaluate_run(path: str | Path, *, split: str = "test", which: str = "auto",
                 opts: DecodeOptions | None = None, out: str | Path | None = None,
                 outputs: str | Path | None = None, progress: bool | None = None,
                 data_overrides: list[str] | None = None) -> dict[str, Any]:
    """Evaluate a run directory on its task's ``split`` and write ``eval.json`` (atomically)
    in the run directory (or ``out``); ``outputs`` also writes the decoded texts, one a line.
    ``data_overrides``: dotted ``data.KEY=VALUE`` changes to the run's data section."""
    from archlab.data import load_dataset
    from archlab.run import load_run

    if split not in ("test", "valid", "train"):
        raise ArchlabError(f"--split {split!r}: choose test, valid or train")
    opts = opts or DecodeOptions()
    loaded = load_run(path, which)
    if loaded.config is None or loaded.config.data is None:
        raise ArchlabError(f"{path}: a model directory has no task; evaluate a run directory "
                           "(made by archlab train)")
    from dataclasses import replace

    tr = loaded.config.train
    opts = replace(opts, max_source_len=opts.max_source_len if opts.max_source_len is not None else tr.max_source_len,
                   max_target_len=opts.max_target_len if opts.max_target_len is not None else tr.max_target_len,
                   max_len=opts.max_len or tr.max_len)
    if loaded.tokenizer is None:
        raise ArchlabError(f"{loaded.model_path}: no tokenizer saved with the model")
    data_cfg = loaded.config.data
    if data_overrides:
        data_cfg = _override_data(data_cfg, data_overrides)
    ds = load_dataset(data_cfg)
    examples = getattr(ds, split)
    if opts.test_examples:
        examples = examples[: opts.test_examples]
    if not examples:
        raise ArchlabError(f"data.task={ds.name}: the {split} split is empty")
    from archlab.data.datasets import score_kind

    kind = score_kind(ds)
    objective = loaded.config.objective.base_name
    decodes = kind in ("pair", "probe") and objective not in ("contrastive", "token-classification")
    bar = _bar(len(examples), f"evaluate {split}", progress) if decodes else None
    try:
        res = score_task(loaded.model, loaded.tokenizer, examples, kind, opts, objective=objective,
                         progress=(lambda k: bar.update(k)) if bar else None,
                         objective_options=dict(loaded.config.objective.options), label_names=ds.label_names)
    finally:
        if bar is not None:
            bar.close()
    hyps = res.pop("_outputs", None)
    report = {"run": str(Path(path)), "model": str(loaded.model_path), "task": ds.name,
              "split": split, "kind": ds.kind, **({"scoring": kind} if kind != ds.kind else {}), "objective": loaded.config.objective.base_name,
              "arch": loaded.model.cfg.arch, "decode": asdict(opts),
              **({"data_overrides": list(data_overrides)} if data_overrides else {}), **_public(res)}
    dest = Path(out) if out else Path(path) / "eval.json"
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, dest)
    if outputs and hyps is not None:
        Path(outputs).write_text("".join(h.replace("\n", " ") + "\n" for h in hyps), encoding="utf-8")
    return report


def _bar(total: int, desc: str, progress: bool | None) -> Any:
    import sys

    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    return tqdm(total=total, desc=desc, unit="ex", disable=not show)
