"""Budget matching: size every architecture to the same parameter or FLOP budget.

The sizing rule (recorded in the results): all entries share the block (width ``d_model``,
heads, norm, activation, positions); each architecture gets the depth that comes closest to
the target, and then its feed-forward width ``d_ff`` (in steps of ``d_ff_multiple``) is
adjusted so the matched quantity lands within ``tolerance`` of the target. Layer patterns
(``model.layers``) are repeated as a unit to the chosen depth ("MMMA" at depth 6 is
"MMMAMM"), never shorter than one whole unit of a pattern that mixes layer kinds (a sized
hybrid keeps its attention layer); when a Mamba stack is still off the target (no feed-forward to widen, as in pure
Mamba), the mixers' inner width ``ssm.d_inner`` is tuned (whole heads for Mamba-2).

Accounting follows the T5 paper (Raffel et al. 2020, Sec. 3.2.2 and Table 2): an
encoder-decoder with L+L layers has about twice the parameters of an L-layer decoder-only model,
yet similar FLOPs per example, because the decoder-only model processes the concatenated
``source + target`` sequence through all its layers while the encoder-decoder processes the
source in one stack and the target in the other. Matching on ``params`` therefore gives the
decoder-only model about twice the depth (and compute) of a ``flops``-matched one; both views
are reported.

FLOPs are those of one typical example as the entry's objective runs it (its layout, mask,
pooling and head: :func:`example_flop_count`), equal to the matrix products the executed
forward computes (tests/model/test_flop_counter.py).

Mixture-of-experts entries (ffn E): FLOPs count the k experts a token uses, so ``flops`` (the
default) matches them on *active* compute against dense entries, the comparison MoE papers
make; ``params`` matches total parameters (all experts). Both, and the active parameters, are
recorded for every entry. ``d_ff`` tuning widens the experts too (``moe.d_ff_expert`` unset).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from archlab.config import ModelConfig
from archlab.errors import ConfigError
from archlab.model import count_params, flops_per_example
from archlab.model.flops import FlopCount, decode_memory

Match = Literal["params", "flops"]


@dataclass
class Shape:
    """Typical example lengths of the task, in tokens (source/target for pairs)."""

    src_len: float
    tgt_len: float
    # target positions that carry a loss, where fewer than all (a probe's answers among given
    # tokens, ``Example.tgt_given``); None: every target position. Only token-classification's
    # count reads it (its LM head runs at the answer slots alone)
    predicted: float | None = None

    @property
    def total(self) -> float:
        return self.src_len + self.tgt_len


def example_flop_count(cfg: ModelConfig, shape: Shape, objective: str | None = None,
                       options: Mapping[str, Any] | None = None) -> FlopCount:
    """FLOPs of one typical example in the layout ``objective`` builds on ``cfg.arch``, with
    the head that objective's forward runs (default: masked-LM on an encoder, else seq2seq):

    - contrastive (a bi-encoder): two towers' forwards, the query ``<cls> source <sep>`` and
      the positive ``<cls> target <sep>``, each through the family's embedding path (encoder;
      decoder; prefix-LM with the whole text as its prefix; an encoder-decoder's encoder
      alone), no head. The B x B similarity matrix of a batch (2 B C FLOPs per example, under
      0.1 % at compare widths) depends on the batch, not the example, and is not counted;
    - token-classification: ``<cls> text <sep>`` through the family's tagging path (encoder;
      decoder, causal; prefix-LM with the whole row as its prefix; an encoder-decoder's encoder
      alone) and the token-classification head at every position; on pair data (the mqar
      probe) the row ``<cls> source <sep> target`` and the LM head at the
      ``shape.predicted`` answer slots (default: every target position);
    - classification: ``<cls> text <sep>`` through the family's pooling path (an
      encoder-decoder runs one decoder step when it pools from the decoder) and the
      classification head; no LM head;
    - masked-LM: ``<cls> text <sep>``, the MLM transform and LM head at the
      max(1, round(rate x n)) masked positions only;
    - causal-LM: ``<bos> text`` (an encoder-decoder encodes a lone ``<eos>``), LM head at
      every position;
    - seq2seq and the objectives that build a (source, target) pair (prefix-LM: split at a
      uniform point, so half and half on average; span corruption and denoising: the corrupted
      input and the target of a text of n tokens): ``source <eos>`` / ``<start> target``, or
      ``<bos> source <sep> target`` with ``<bos> source <sep>`` as a prefix-LM's prefix, LM head
      on the target's t + 1 positions.

    ``shape`` is the task's (source, target) lengths; for a text or label task the text is
    ``shape.src_len`` (+ ``tgt_len``, 0 there). Span corruption's lengths follow its
    deterministic span counts (``random_spans_noise_mask``); denoising's number of masks is
    its expectation (mask budget / Poisson mean), so that one is approximate.
    """
    o = dict(options or {})
    objective = objective or ("masked-lm" if cfg.arch == "encoder" else "seq2seq")
    s, t = round(shape.src_len), round(shape.tgt_len)
    arch = cfg.arch
    if objective == "contrastive":
        q, p = _tower_flops(cfg, s + 2), _tower_flops(cfg, t + 2)
        return FlopCount(q.encoder + p.encoder, q.decoder + p.decoder, 0, q.forward + p.forward,
                         q.train + p.train, q.elementwise + p.elementwise)
    if objective == "token-classification":
        n = s + t + 2
        head: Any = "tokens" if t == 0 else "lm"
        k = n if t == 0 else (round(shape.predicted) if shape.predicted is not None else t)
        if arch in ("encoder", "encoder-decoder"):  # (an encoder-decoder: its encoder alone)
            return flops_per_example(cfg, src_len=n, predicted=k, head=head)
        return flops_per_example(cfg, tgt_len=n, prefix_len=n if arch == "prefix-lm" else 0, predicted=k, head=head)
    if objective == "classification":
        n = s + t + 2
        if arch == "encoder":
            return flops_per_example(cfg, src_len=n, head="classification")
        if arch == "encoder-decoder":
            return flops_per_example(cfg, src_len=n, tgt_len=1 if cfg.pooling_mode == "decoder" else 0,
                                     head="classification")
        # a prefix-LM pools over its input read as one bidirectional prefix
        return flops_per_example(cfg, tgt_len=n, prefix_len=n if arch == "prefix-lm" else 0,
                                 head="classification")
    if arch == "encoder" and objective != "masked-lm":
        raise ValueError(f"objective {objective} does not run on arch encoder (masked-lm, classification, "
                         "token-classification, contrastive do)")
    n = s + t  # the text of a text task
    if objective == "masked-lm":
        k = max(1, round(float(o.get("rate", 0.15)) * n)) if n else 0
        return flops_per_example(cfg, src_len=n + 2, predicted=k)
    if objective == "causal-lm":
        if arch == "encoder-decoder":
            return flops_per_example(cfg, src_len=1, tgt_len=n + 1)
        return flops_per_example(cfg, tgt_len=n + 1)  # no prefix: a prefix-LM runs causally
    if objective == "prefix-lm":
        s, t = n // 2, n - n // 2
    elif objective == "span-corruption":
        s, t = _span_corruption_lengths(n, float(o.get("noise_density", 0.15)),
                                        float(o.get("mean_span_length", 3.0)))
    elif objective == "denoising":
        budget = round(n * float(o.get("mask_ratio", 0.3)))
        masks = max(1, round(budget / float(o.get("poisson_lambda", 3.0)))) if budget else 0
        s, t = n - budget + masks, n
    elif objective != "seq2seq":
        raise ValueError(f"objective {objective!r}: choose classification, token-classification, contrastive, "
                         "masked-lm, causal-lm, prefix-lm, seq2seq, span-corruption or denoising")
    if arch == "encoder-decoder":
        return flops_per_example(cfg, src_len=s + 1, tgt_len=t + 1)
    # decoder-only layout: <bos> src <sep> tgt <eos>, loss (and LM head) on the target only
    return flops_per_example(cfg, tgt_len=s + t + 2, prefix_len=s + 2 if arch == "prefix-lm" else 0,
                             predicted=t + 1)


def _tower_flops(cfg: ModelConfig, n: int) -> FlopCount:
    """One text of ``n`` tokens (framing included) through a bi-encoder's embedding path."""
    if cfg.arch in ("encoder", "encoder-decoder"):  # an encoder-decoder embeds with its encoder
        return flops_per_example(cfg, src_len=n, head="none")
    return flops_per_example(cfg, tgt_len=n, prefix_len=n if cfg.arch == "prefix-lm" else 0, head="none")


def _span_corruption_lengths(n: int, density: float, mean_span: float) -> tuple[int, int]:
    """(input, target) lengths of T5 span corruption of n tokens: each noise span becomes one
    sentinel in the input and a sentinel + the span in the target (objectives/denoise.py)."""
    if n < 2:
        return n, 0
    noise = min(max(round(n * density), 1), n - 1)
    spans = min(max(round(noise / mean_span), 1), noise, n - noise)
    return n - noise + spans, noise + spans


def example_flops(cfg: ModelConfig, shape: Shape, objective: str | None = None,
                  options: Mapping[str, Any] | None = None) -> int:
    """Forward FLOPs of one typical example of ``objective`` (see :func:`example_flop_count`)."""
    return example_flop_count(cfg, shape, objective, options).forward


def measure(cfg: ModelConfig, match: Match | Literal["active_params"], shape: Shape,
            objective: str | None = None, options: Mapping[str, Any] | None = None) -> float:
    """The matched quantity: total parameters, forward FLOPs of a typical example of the
    entry's objective (active FLOPs for MoE), or (reported only) the parameters one token
    uses."""
    if match == "active_params":
        return float(count_params(cfg).active)
    return float(count_params(cfg).total if match == "params" else example_flops(cfg, shape, objective, options))


def _cyclic(pattern: str | None) -> str | None:
    """A layer pattern as a unit repeated to any depth ("MMMA" -> "MMMA*"; each side of an
    "ENCODER/DECODER" pattern separately), so that sizing can change the depth."""
    if pattern is None:
        return None
    return "/".join(p if p.strip().endswith("*") else p.strip() + "*" for p in pattern.split("/"))


def hybrid_unit(pattern: str | None) -> int:
    """Layers in the repeated unit of a layer pattern that mixes sequence mixers ("SSA*" -> 3;
    the longer side of "ENCODER/DECODER"), else 1. Sizing never goes below it: cut to one or
    two layers, "SSA*" would be a pure Mamba-2 stack, not the hybrid the entry names."""
    n = 1
    for side in (pattern or "").split("/"):
        unit = side.strip().rstrip("*")
        if len(set(unit)) > 1:
            n = max(n, len(unit))
    return n


def _with_depth(cfg: ModelConfig, depth: int) -> ModelConfig:
    layers = {"layers": _cyclic(cfg.layers), "ffn": _cyclic(cfg.ffn)}
    if cfg.arch == "encoder-decoder":
        return replace(cfg, n_layers=depth, n_encoder_layers=None, n_decoder_layers=None, **layers)
    return replace(cfg, n_layers=depth, **layers)


def _with_d_inner(cfg: ModelConfig, d_inner: int) -> ModelConfig:
    return replace(cfg, ssm=replace(cfg.ssm_cfg, d_inner=d_inner))


def _d_inner_step(cfg: ModelConfig) -> int:
    s = cfg.ssm_cfg
    if any(m == "mamba2" for m, _ in cfg.all_layer_kinds()):
        return s.head_dim * s.n_groups  # whole heads, whole groups
    return 16


def _depth(cfg: ModelConfig) -> int:
    return cfg.n_layers


@dataclass
class SizedModel:
    cfg: ModelConfig
    value: float  # matched quantity of the sized model
    target: float
    rule: str  # human-readable sizing decision

    @property
    def deviation(self) -> float:
        return self.value / self.target - 1.0


def size_to_budget(
    base: ModelConfig,
    target: float,
    match: Match,
    shape: Shape,
    *,
    tolerance: float = 0.05,
    d_ff_multiple: int = 32,
    max_depth: int = 64,
    objective: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> SizedModel:
    """Depth (each side of an encoder-decoder, balanced L+L), then d_ff, to hit ``target``
    (FLOPs measured for ``objective``, see :func:`example_flop_count`)."""

    def value(c: ModelConfig) -> float:
        return measure(c, match, shape, objective, options)

    if target <= 0:
        raise ConfigError(f"budget target must be > 0, got {target}")
    best = None
    for depth in range(hybrid_unit(base.layers), max_depth + 1):
        cfg = _with_depth(base, depth)
        v = value(cfg)
        err = abs(v / target - 1)
        if best is None or err < best[0]:
            best = (err, cfg, v)
        if v > target * 1.5:
            break
    assert best is not None
    _, cfg, v = best
    rule = f"depth {_depth(cfg)}{'+' + str(_depth(cfg)) if cfg.arch == 'encoder-decoder' else ''}"
    has_ffn = any(f in ("dense", "moe") for _, f in cfg.all_layer_kinds())
    if abs(v / target - 1) > tolerance and has_ffn:
        # fine-tune the feed-forward width: the matched quantity is monotone in d_ff
        lo, hi = d_ff_multiple, max(cfg.d_ff * 4, d_ff_multiple * 2)
        while value(replace(cfg, d_ff=hi)) < target and hi < 1 << 16:
            hi *= 2
        best_ff = cfg.d_ff
        best_err = abs(v / target - 1)
        lo_k, hi_k = lo // d_ff_multiple, hi // d_ff_multiple
        while lo_k <= hi_k:
            mid = (lo_k + hi_k) // 2
            ff = mid * d_ff_multiple
            val = value(replace(cfg, d_ff=ff))
            err = abs(val / target - 1)
            if err < best_err:
                best_ff, best_err = ff, err
            if val < target:
                lo_k = mid + 1
            else:
                hi_k = mid - 1
        cfg = replace(cfg, d_ff=best_ff)
        v = value(cfg)
        rule += f", d_ff {base.d_ff} -> {best_ff}"
    if abs(v / target - 1) > tolerance and cfg.has_ssm:
        # Mamba layers without feed-forwards: tune the mixers' inner width instead
        step = _d_inner_step(cfg)
        d0 = cfg.ssm_cfg.inner(cfg.d_model)
        best_di, best_err = d0, abs(v / target - 1)
        lo_k, hi_k = 1, max(4 * d0 // step, 2)
        while lo_k <= hi_k:
            mid = (lo_k + hi_k) // 2
            val = value(_with_d_inner(cfg, mid * step))
            err = abs(val / target - 1)
            if err < best_err:
                best_di, best_err = mid * step, err
            if val < target:
                lo_k = mid + 1
            else:
                hi_k = mid - 1
        if best_di != d0:
            cfg = _with_d_inner(cfg, best_di)
            v = value(cfg)
            rule += f", ssm d_inner {d0} -> {best_di}"
    return SizedModel(cfg, v, target, rule)


def decode_memory_curve(cfg: ModelConfig, lengths: list[int], src_len: float = 0.0,
                        bytes_per_number: int = 4) -> list[dict[str, float]]:
    """Decoding state per example after each output length (the report's memory-vs-length
    plot): self-attention KV bytes grow with the length, Mamba state bytes stay flat,
    cross-attention KV (encoder-decoder) is fixed by the source length. A decoder-only model
    reads its source as the prompt, so its decoder length is src_len + 2 + the output length
    (<bos> source <sep> target, as in training)."""
    out = []
    for n in lengths:
        if cfg.arch == "encoder-decoder":
            m = decode_memory(cfg, n + 1, src_len=round(src_len) + 1, bytes_per_number=bytes_per_number)
        else:
            m = decode_memory(cfg, round(src_len) + 2 + n, bytes_per_number=bytes_per_number)
        out.append({"length": n, "kv": m.kv, "cross_kv": m.cross_kv, "ssm_state": m.ssm_state,
                    "total": m.total})
    return out
