"""Exact parameter counts and analytic FLOPs, computed from the config alone.

Budget matching (``archlab compare``) sizes models without building them, so these formulas
must agree exactly with the built modules; a unit test checks that for every option.

FLOPs are those of what runs: the count for a forward pass equals the matrix products of the
model's executed forward, as ``torch.utils.flop_counter.FlopCounterMode`` counts them (tests
compare the two for every mixer, family, mask and head: tests/model/test_flop_counter.py). A
multiply-add counts as 2. A token's projections and feed-forward cost 2 x the matrix
parameters it passes through (Kaplan et al. 2020, Sec. 2.1; Hoffmann et al. 2022, App. F);
attention adds QK^T and AV, 2 x 2 x H x hd per (query, key) pair *the kernel computes*
(:func:`attention_pairs`): the lower triangle on SDPA's causal path, every pair when a mask
tensor is passed (prefix, padding on both sides, position biases), the blocks of the banded
kernel under a short sliding window. Training is 3x forward (the backward pass costs two
forward passes). Norms, activations, softmax, rotary tables and embedding lookups are
elementwise work and left out, as usual.

Mixture-of-experts layers (ffn E) hold E experts but a token passes through k of them (plus the
shared experts and the router): total parameters count all experts, *active* parameters and
FLOPs only k (torchtitan's accounting: active = dense + router + shared + experts * k / E).
Budget matching on FLOPs therefore matches MoE models on active compute.

State-space layers (Mamba-1, Gu & Dao 2023; Mamba-2, Dao & Gu 2024) count their projections
the same way and the depthwise convolution (2 x channels x kernel per token). Mamba-2's chunked
SSD is matrix products, counted as ``ssm.ssd_chunked`` runs them (chunks of min(chunk_size,
T), C.B per B/C group, states passed between chunks: :func:`_ssd_matmul_flops`). Mamba-1's
selective scan is elementwise (cumsums and products, about 9 x d_inner x d_state per token);
it is the one elementwise term kept in the count, since it is that layer's sequence mixing,
and it is reported apart (``FlopCount.elementwise``), so the matrix-product part can be
checked exactly. Bidirectional layers run two mixers: over the whole input in an encoder, and
over the prefix only in a prefix-LM (``Block._ssm`` runs the backward mixer over the longest
prefix of the batch). The attention term is counted only for attention layers.

Heads: the LM head over the positions with a label (objectives compute it at those only), the
MLM transform too for an encoder, or the classification head on one pooled vector;
``compare.sizing.example_flops`` picks them by objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from archlab.config import ModelConfig
from archlab.model.masks import MaskKind, band_blocks


def _norm_params(cfg: ModelConfig) -> int:
    return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.bias else 1)


def _linear(cfg: ModelConfig, n_in: int, n_out: int, bias: bool | None = None) -> int:
    b = cfg.bias if bias is None else bias
    return n_in * n_out + (n_out if b else 0)


def _attn_params(cfg: ModelConfig) -> int:
    q = cfg.n_heads * cfg.dim_head
    kv = cfg.kv_heads * cfg.dim_head
    return _linear(cfg, cfg.d_model, q + 2 * kv) + _linear(cfg, q, cfg.d_model)


def _mlp_params(cfg: ModelConfig) -> int:
    g = 2 if cfg.gated else 1
    return _linear(cfg, cfg.d_model, g * cfg.d_ff) + _linear(cfg, cfg.d_ff, cfg.d_model)


def _expert_params(cfg: ModelConfig) -> int:
    """One routed expert (its biases included)."""
    g = 2 if cfg.gated else 1
    F = cfg.moe_cfg.d_expert(cfg.d_ff)
    return _linear(cfg, cfg.d_model, g * F) + _linear(cfg, F, cfg.d_model)


def _moe_params(cfg: ModelConfig, active: bool = False) -> int:
    """One MoE feed-forward: router + experts (all E, or the k a token uses) + shared experts."""
    m = cfg.moe_cfg
    n = cfg.d_model * m.n_experts  # router
    n += _expert_params(cfg) * (m.top_k if active else m.n_experts)
    if m.n_shared_experts:
        g = 2 if cfg.gated else 1
        Fs = m.n_shared_experts * m.d_expert(cfg.d_ff)
        n += _linear(cfg, cfg.d_model, g * Fs) + _linear(cfg, Fs, cfg.d_model)
    return n


def mixer_params(cfg: ModelConfig, mixer: str) -> int:
    """Parameters of one sequence mixer (attention, mamba, mamba2), without its norm."""
    if mixer == "attention":
        return _attn_params(cfg)
    s, d = cfg.ssm_cfg, cfg.d_model
    di, N, K = s.inner(d), s.d_state, s.d_conv
    pb = s.proj_bias
    if mixer == "mamba":
        R = s.rank(d)
        n = d * 2 * di + (2 * di if pb else 0)  # in_proj
        n += di * K + (di if s.conv_bias else 0)  # depthwise conv
        n += di * (R + 2 * N) + R * di + di  # x_proj, dt_proj (+ bias)
        n += di * N + di  # A_log, D
        n += di * d + (d if pb else 0)  # out_proj
        if s.dtbc_norm:
            n += R + 2 * N
        return n
    H, G = s.heads(d), s.n_groups
    conv = di + 2 * G * N
    n = d * (di + conv + H) + ((di + conv + H) if pb else 0)  # in_proj: z, x, B, C, dt
    n += conv * K + (conv if s.conv_bias else 0)
    n += 3 * H + di  # dt_bias, A_log, D, gated norm
    n += di * d + (d if pb else 0)
    return n


def _block_params(cfg: ModelConfig, cross: bool, shared: bool = False, mixer: str = "attention",
                  ffn: str = "dense", bidirectional: bool = False) -> int:
    if shared:
        n = 0
    else:
        n = _norm_params(cfg) + mixer_params(cfg, mixer)
        if mixer != "attention" and bidirectional:
            n += mixer_params(cfg, mixer)  # the backward scan's own mixer
        if ffn == "dense":
            n += _norm_params(cfg) + _mlp_params(cfg)
        elif ffn == "moe":
            n += _norm_params(cfg) + _moe_params(cfg)
    if cross:
        n += _norm_params(cfg) + _attn_params(cfg)  # q + kv have the same sizes as qkv
    return n


def _stack_params(cfg: ModelConfig, side: str, cross: bool, shared: bool = False) -> int:
    kinds = cfg.layer_kinds(side)
    bidir = side == "encoder" or cfg.arch == "prefix-lm"
    n = sum(_block_params(cfg, cross, shared, m, f, bidir) for m, f in kinds)
    if cfg.use_final_norm:
        n += _norm_params(cfg)
    if cfg.position == "t5-relative" and any(m == "attention" for m, _ in kinds):
        n += cfg.rel_buckets * cfg.n_heads
    return n


def params_by_layer_type(cfg: ModelConfig) -> dict[str, int]:
    """Parameters of all layers by mixer type (norms and the layer's feed-forward included;
    cross-attention counted under "cross-attention")."""
    out: dict[str, int] = {}
    for side in ("encoder", "decoder"):
        if not (cfg.encoder_layers if side == "encoder" else cfg.decoder_layers):
            continue
        cross = side == "decoder" and cfg.arch == "encoder-decoder"
        shared = side == "decoder" and cfg.share_encoder_decoder
        bidir = side == "encoder" or cfg.arch == "prefix-lm"
        for m, f in cfg.layer_kinds(side):
            n = _block_params(cfg, False, shared, m, f, bidir)
            out[m] = out.get(m, 0) + n
            if cross:
                out["cross-attention"] = out.get("cross-attention", 0) + _norm_params(cfg) + _attn_params(cfg)
    return out


def _input_embedding_params(cfg: ModelConfig) -> int:
    n = 0
    if cfg.position == "learned":
        n += (cfg.max_seq_len + cfg.position_offset) * cfg.d_model
    n += cfg.type_vocab_size * cfg.d_model
    if cfg.embedding_norm:
        n += _norm_params(cfg)
    return n


@dataclass
class ParamCount:
    embedding: int  # token embeddings (+ absolute positions, types, embedding norms)
    encoder: int
    decoder: int
    head: int  # untied LM head, MLM transform, output bias, classification head
    total: int
    active: int = -1  # parameters one token passes through (MoE: k of E experts); -1: total

    def __post_init__(self) -> None:
        if self.active < 0:
            self.active = self.total

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def count_params(cfg: ModelConfig) -> ParamCount:
    """Exact number of trainable parameters of ``build_model(cfg)`` (shared tensors once)."""
    emb = cfg.vocab_size * cfg.d_model
    enc = dec = 0
    if cfg.encoder_layers:
        emb += _input_embedding_params(cfg)
        enc = _stack_params(cfg, "encoder", cross=False)
    if cfg.decoder_layers:
        emb += _input_embedding_params(cfg)
        dec = _stack_params(cfg, "decoder", cross=cfg.arch == "encoder-decoder",
                            shared=cfg.share_encoder_decoder)
    head = 0
    if not cfg.tie_embeddings:
        head += cfg.vocab_size * cfg.d_model
    if cfg.lm_head_bias:
        head += cfg.vocab_size
    if cfg.arch == "encoder" and cfg.mlm_transform:
        head += _linear(cfg, cfg.d_model, cfg.d_model) + _norm_params(cfg)
    if cfg.n_classes:
        head += _linear(cfg, cfg.d_model, cfg.d_model, True) + _linear(cfg, cfg.d_model, cfg.n_classes, True)
    if cfg.n_tags:
        head += _linear(cfg, cfg.d_model, cfg.n_tags, True)
    total = emb + enc + dec + head
    n_moe = sum(f == "moe" for _, f in cfg.all_layer_kinds()) if cfg.has_moe else 0
    inactive = n_moe * (_moe_params(cfg) - _moe_params(cfg, active=True))
    return ParamCount(emb, enc, dec, head, total, total - inactive)


def moe_params(cfg: ModelConfig) -> dict[str, int]:
    """MoE accounting: {"layers": MoE layers, "total": their parameters, "active": those a
    token uses, "per_expert": one routed expert}; zeros without MoE layers."""
    n = sum(f == "moe" for _, f in cfg.all_layer_kinds()) if cfg.has_moe else 0
    if not n:
        return {"layers": 0, "total": 0, "active": 0, "per_expert": 0}
    return {"layers": n, "total": n * _moe_params(cfg), "active": n * _moe_params(cfg, active=True),
            "per_expert": _expert_params(cfg)}


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------

HeadKind = Literal["lm", "classification", "tokens", "none"]


def _attn_matmul_flops(cfg: ModelConfig) -> int:
    q = cfg.n_heads * cfg.dim_head
    kv = cfg.kv_heads * cfg.dim_head
    return 2 * (cfg.d_model * (q + 2 * kv) + q * cfg.d_model)


def _mlp_flops(cfg: ModelConfig) -> int:
    g = 2 if cfg.gated else 1
    return 2 * (cfg.d_model * g * cfg.d_ff + cfg.d_ff * cfg.d_model)


def moe_token_flops(cfg: ModelConfig) -> int:
    """Forward FLOPs per token of one MoE feed-forward: router, k experts, shared experts."""
    m, C = cfg.moe_cfg, cfg.d_model
    g = 2 if cfg.gated else 1
    F = m.d_expert(cfg.d_ff)
    Fs = m.n_shared_experts * F
    return 2 * (C * m.n_experts + m.top_k * (C * g * F + F * C) + (C * g * Fs + Fs * C))


def _ssd_matmul_flops(cfg: ModelConfig, n_tok: int) -> int:
    """Products of ``ssm.ssd_chunked`` over one sequence of ``n_tok`` tokens, as it runs: chunks
    of Q = min(chunk_size, T), the length zero-padded to nc whole chunks, C.B per B/C group.
    Per chunk: C.B^T (2 Q^2 G N), its product with x (2 Q^2 H P), the chunk state (2 Q H P N)
    and the read-out of the chunk's start state (2 Q H P N); once per sequence the passing of
    states between chunks, a product over the nc + 1 chunk boundaries (2 (nc + 1)^2 H P N)."""
    if n_tok <= 0:
        return 0
    s, d = cfg.ssm_cfg, cfg.d_model
    H, G, P, N = s.heads(d), s.n_groups, s.head_dim, s.d_state
    Q = max(1, min(s.chunk_size, n_tok))
    nc = -(-n_tok // Q)
    per_chunk = 2 * Q * Q * (G * N + H * P) + 4 * Q * H * P * N
    return nc * per_chunk + 2 * (nc + 1) ** 2 * H * P * N


def ssm_flops(cfg: ModelConfig, mixer: str, n_tok: int) -> dict[str, int]:
    """Forward FLOPs of one Mamba mixer over a sequence of ``n_tok`` tokens: {"proj":
    projections, "conv": depthwise conv, "scan": selective scan / SSD}. Mamba-1's scan is
    elementwise work (about 9 d_inner N per token: discretise, update, read out; Albert Gu,
    state-spaces/mamba #110); Mamba-2's is the matrix products of the chunked SSD
    (:func:`_ssd_matmul_flops`), its elementwise rest (decays, masks) left out like softmax."""
    s, d = cfg.ssm_cfg, cfg.d_model
    di, N, K = s.inner(d), s.d_state, s.d_conv
    if mixer == "mamba":
        R = s.rank(d)
        proj = 2 * (d * 2 * di + di * (R + 2 * N) + R * di + di * d)
        return {"proj": n_tok * proj, "conv": n_tok * 2 * di * K, "scan": n_tok * 9 * di * N}
    H, G = s.heads(d), s.n_groups
    conv = di + 2 * G * N
    proj = 2 * (d * (di + conv + H) + di * d)
    return {"proj": n_tok * proj, "conv": n_tok * 2 * conv * K, "scan": _ssd_matmul_flops(cfg, n_tok)}


def _ssm_elementwise(cfg: ModelConfig, mixer: str, n_tok: int) -> int:
    """The part of :func:`ssm_flops` that is not a matrix product (Mamba-1's scan)."""
    return ssm_flops(cfg, mixer, n_tok)["scan"] if mixer == "mamba" else 0


def attention_pairs(cfg: ModelConfig, n: int, kind: MaskKind, prefix: int = 0) -> int:
    """(query, key) pairs the attention kernel computes in a self-attention over one example of
    ``n`` tokens, following the choices of ``masks.build_mask`` (kind: causal, bidirectional or
    prefix with ``prefix`` bidirectional slots):

    - causal, no mask tensor (no window, no position bias, no padding or right padding only):
      SDPA's causal path, the lower triangle n (n + 1) / 2 (fused kernels skip the blocks above
      the diagonal; the CPU flash kernel measured 0.65x the full product's time at T = 2048);
    - a window much shorter than n, no position bias: the banded kernel, ceil(n / w) w queries
      x (2 + after) w keys (``masks.band_blocks``);
    - every other case passes a mask tensor (prefix, a longer window, ALiBi / T5 biases,
      bidirectional): SDPA computes every pair, n^2, whatever the mask allows.

    One backend exception is not modelled: attention dropout > 0 on a CPU sends SDPA to its
    math kernel, which computes the full n^2 on the causal path too (GPU kernels apply dropout
    in the fused kernel; the compare presets meant for a CPU train with dropout 0).
    """
    if n <= 0:
        return 0
    biased = cfg.position in ("alibi", "t5-relative")
    w = cfg.attn_window if cfg.attn_window is not None and cfg.attn_window < n else None
    if w is not None:
        after = None if biased else band_blocks(kind, n, w)
        if after is not None:
            return -(-n // w) * w * (2 + after) * w
        return n * n
    if kind == "causal" and not biased:
        return n * (n + 1) // 2
    return n * n


def _stack_flops(cfg: ModelConfig, side: str, n_tok: int, kind: MaskKind, prefix: int = 0,
                 src_len: int = 0, elementwise: list[int] | None = None) -> dict[str, int]:
    """Forward FLOPs of one stack over ``n_tok`` tokens, by layer type; the elementwise part
    (Mamba-1 scans) is also added to ``elementwise[0]``."""
    out: dict[str, int] = {}
    if n_tok <= 0:
        return out
    attn_unit = 4 * cfg.n_heads * cfg.dim_head  # QK^T + AV per (query, key) pair
    # bidirectional Mamba layers: a backward mixer over the whole input (encoder), or over the
    # prefix (prefix-LM; Block._ssm runs it over the longest prefix of the batch, at least 1)
    back = n_tok if kind == "bidirectional" else (max(min(prefix, n_tok), 1) if kind == "prefix" else 0)

    def add(key: str, n: int) -> None:
        out[key] = out.get(key, 0) + n

    for m, f in cfg.layer_kinds(side):
        if m == "attention":
            add("attention", n_tok * _attn_matmul_flops(cfg) + attn_unit * attention_pairs(cfg, n_tok, kind, prefix))
        else:
            add(m, sum(ssm_flops(cfg, m, n_tok).values()) + (sum(ssm_flops(cfg, m, back).values()) if back else 0))
            if elementwise is not None:
                elementwise[0] += _ssm_elementwise(cfg, m, n_tok) + _ssm_elementwise(cfg, m, back)
        if f == "dense":
            add("ffn", n_tok * _mlp_flops(cfg))
        elif f == "moe":
            add("moe", n_tok * moe_token_flops(cfg))
        if side == "decoder" and cfg.arch == "encoder-decoder":
            q = cfg.n_heads * cfg.dim_head
            kv = cfg.kv_heads * cfg.dim_head
            add("cross-attention", n_tok * 2 * (cfg.d_model * q + q * cfg.d_model)
                + src_len * 2 * cfg.d_model * 2 * kv + attn_unit * n_tok * src_len)
    return out


@dataclass
class FlopCount:
    encoder: int  # forward FLOPs in the encoder stack (per example)
    decoder: int  # forward FLOPs in the decoder stack (incl. cross-attention)
    head: int  # LM / MLM head, or the classification head
    forward: int
    train: int  # 3 x forward
    elementwise: int = 0  # the part of forward that is not a matrix product (Mamba-1 scans)

    @property
    def matmul(self) -> int:
        """Forward FLOPs of matrix products and convolutions only: what
        ``torch.utils.flop_counter.FlopCounterMode`` counts."""
        return self.forward - self.elementwise


def head_flops(cfg: ModelConfig, predicted: int, head: HeadKind = "lm") -> int:
    """Forward FLOPs of the output head for one example: the LM head over ``predicted``
    positions (with the MLM transform of an encoder), the classification head on the one
    pooled vector (dense d x d, then d x n_classes), the token-classification head (d x
    n_tags) at ``predicted`` positions, or nothing."""
    if head == "none":
        return 0
    if head == "tokens":
        if cfg.n_tags <= 0:
            raise ValueError("a token-classification head needs model.n_tags > 0")
        return predicted * 2 * cfg.d_model * cfg.n_tags
    if head == "classification":
        if cfg.n_classes <= 0:
            raise ValueError("a classification head needs model.n_classes > 0")
        return 2 * (cfg.d_model * cfg.d_model + cfg.d_model * cfg.n_classes)
    f = predicted * 2 * cfg.d_model * cfg.vocab_size
    if cfg.arch == "encoder" and cfg.mlm_transform:
        f += predicted * 2 * cfg.d_model * cfg.d_model
    return f


def flops_per_example(
    cfg: ModelConfig,
    src_len: int = 0,
    tgt_len: int = 0,
    *,
    prefix_len: int = 0,
    predicted: int | None = None,
    head: HeadKind = "lm",
) -> FlopCount:
    """Forward and training FLOPs for one example.

    encoder: ``src_len`` tokens; decoder / prefix-LM: ``tgt_len`` tokens (``prefix_len`` of
    them bidirectional, prefix-LM only); encoder-decoder: ``src_len`` encoder tokens,
    ``tgt_len`` decoder tokens (0: the decoder does not run). ``predicted``: positions that go
    through the LM head (default: every output position: ``src_len`` for an encoder,
    ``tgt_len`` otherwise); ``head``: "lm", "classification" (one pooled vector), "tokens"
    (the token-classification head at ``predicted`` positions) or "none".
    """
    el = [0]
    by = _flops_by_layer_type(cfg, src_len, tgt_len, prefix_len, el)
    enc = sum(by["encoder"].values())
    dec = sum(by["decoder"].values())
    if predicted is None:
        predicted = src_len if cfg.arch == "encoder" else tgt_len
    h = head_flops(cfg, predicted, head)
    fwd = enc + dec + h
    return FlopCount(enc, dec, h, fwd, 3 * fwd, el[0])


def _flops_by_layer_type(cfg: ModelConfig, src_len: int, tgt_len: int, prefix_len: int,
                         elementwise: list[int] | None = None) -> dict[str, dict[str, int]]:
    enc: dict[str, int] = {}
    dec: dict[str, int] = {}
    if cfg.arch in ("encoder", "encoder-decoder"):
        enc = _stack_flops(cfg, "encoder", src_len, "bidirectional", elementwise=elementwise)
    if cfg.arch != "encoder":
        kind: MaskKind = "prefix" if cfg.arch == "prefix-lm" and prefix_len else "causal"
        dec = _stack_flops(cfg, "decoder", tgt_len, kind, prefix_len,
                           src_len if cfg.arch == "encoder-decoder" else 0, elementwise)
    return {"encoder": enc, "decoder": dec}


def flops_by_layer_type(cfg: ModelConfig, src_len: int = 0, tgt_len: int = 0, *,
                        prefix_len: int = 0) -> dict[str, dict[str, int]]:
    """Forward FLOPs of one example per stack and layer type: {"encoder": {"attention": ..,
    "mamba": .., "ffn": ..}, "decoder": {..., "cross-attention": ..}} (arguments as
    :func:`flops_per_example`)."""
    return _flops_by_layer_type(cfg, src_len, tgt_len, prefix_len)


@dataclass
class DecodeMemory:
    """Decoding state of one example after ``length`` decoder tokens, in bytes."""

    kv: float  # self-attention keys/values: grows with length
    cross_kv: float  # encoder-decoder cross-attention keys/values: grows with the source only
    ssm_state: int  # Mamba conv + SSM states: constant in length

    @property
    def total(self) -> int:
        return self.kv + self.cross_kv + self.ssm_state


def ssm_state_numbers(cfg: ModelConfig, mixer: str) -> int:
    """Numbers in one Mamba layer's decoding state per example (conv window + SSM state):
    Mamba-1 d_inner (N + K - 1); Mamba-2 (d_inner + 2GN)(K - 1) + H P N."""
    s, d = cfg.ssm_cfg, cfg.d_model
    di, N, K = s.inner(d), s.d_state, s.d_conv
    if mixer == "mamba":
        return di * (N + K - 1)
    return (di + 2 * s.n_groups * N) * (K - 1) + s.heads(d) * s.head_dim * N


def decode_memory(cfg: ModelConfig, length: float, *, src_len: float = 0,
                  bytes_per_number: int = 4) -> DecodeMemory:
    """Bytes a decoder holds per example to decode token ``length + 1`` (lengths may be mean
    lengths, then the bytes are means too): KV of its attention layers (2 x n_kv_heads x head_dim per layer and token), cross-attention KV over
    ``src_len`` source tokens, and the constant recurrent states of its Mamba layers."""
    if not cfg.decoder_layers:
        raise ValueError(f"arch {cfg.arch} has no decoder")
    kinds = cfg.layer_kinds("decoder")
    per_tok = 2 * cfg.kv_heads * cfg.dim_head
    n_attn = sum(m == "attention" for m, _ in kinds)
    kv = n_attn * per_tok * length
    cross = len(kinds) * per_tok * src_len if cfg.arch == "encoder-decoder" else 0
    state = sum(ssm_state_numbers(cfg, m) for m, _ in kinds if m != "attention")
    b = bytes_per_number
    return DecodeMemory(kv * b, cross * b, state * b)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Average forward/training FLOPs per token at context ``seq_len`` (src = tgt = seq_len
    for encoder-decoder), with the encoder and decoder parts separately."""
    if cfg.arch == "encoder":
        f = flops_per_example(cfg, src_len=seq_len)
        n_tok = seq_len
    elif cfg.arch == "encoder-decoder":
        f = flops_per_example(cfg, src_len=seq_len, tgt_len=seq_len)
        n_tok = 2 * seq_len
    else:
        f = flops_per_example(cfg, tgt_len=seq_len)
        n_tok = seq_len
    out = {
        "forward": f.forward / n_tok,
        "train": f.train / n_tok,
    }
    if cfg.arch == "encoder-decoder":
        out["encoder_forward_per_src_token"] = f.encoder / seq_len
        out["decoder_forward_per_tgt_token"] = (f.decoder + f.head) / seq_len
    return out
