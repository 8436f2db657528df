"""Exact parameter counts and analytic FLOPs, computed from the config alone.

Budget matching (``archlab compare``) sizes models without building them, so these formulas
must agree exactly with the built modules; a unit test checks that for every option.

FLOPs count a multiply-add as 2. Forward FLOPs of a token are 2 x (matrix parameters it
passes through) plus attention's two batched products (QK^T and AV: 2 x 2 x H x hd per
attended key), in the accounting of Kaplan et al. 2020 (Sec. 2.1) and Hoffmann et al. 2022
(App. F). Causal attention is counted over the keys a token actually attends (on average
(T+1)/2), which is what fused causal kernels compute; under a sliding window
(``attn_window``) only the keys inside the window count. Training is 3x forward (the backward
pass costs two forward passes). Norms, activations, softmax and embedding lookups are left
out, as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

from archlab.config import ModelConfig


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


def _block_params(cfg: ModelConfig, cross: bool, shared: bool = False) -> int:
    n = 0 if shared else 2 * _norm_params(cfg) + _attn_params(cfg) + _mlp_params(cfg)
    if cross:
        n += _norm_params(cfg) + _attn_params(cfg)  # q + kv have the same sizes as qkv
    return n


def _stack_params(cfg: ModelConfig, n_layers: int, cross: bool, shared: bool = False) -> int:
    n = n_layers * _block_params(cfg, cross, shared)
    if cfg.use_final_norm:
        n += _norm_params(cfg)
    if cfg.position == "t5-relative":
        n += cfg.rel_buckets * cfg.n_heads
    return n


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

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def count_params(cfg: ModelConfig) -> ParamCount:
    """Exact number of trainable parameters of ``build_model(cfg)`` (shared tensors once)."""
    emb = cfg.vocab_size * cfg.d_model
    enc = dec = 0
    if cfg.encoder_layers:
        emb += _input_embedding_params(cfg)
        enc = _stack_params(cfg, cfg.encoder_layers, cross=False)
    if cfg.decoder_layers:
        emb += _input_embedding_params(cfg)
        dec = _stack_params(cfg, cfg.decoder_layers, cross=cfg.arch == "encoder-decoder",
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
    return ParamCount(emb, enc, dec, head, emb + enc + dec + head)


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------


def _layer_matmul_flops(cfg: ModelConfig) -> int:
    """2 x matrix parameters of one self-attention block's projections and MLP, per token."""
    q = cfg.n_heads * cfg.dim_head
    kv = cfg.kv_heads * cfg.dim_head
    g = 2 if cfg.gated else 1
    return 2 * (cfg.d_model * (q + 2 * kv) + q * cfg.d_model + cfg.d_model * g * cfg.d_ff + cfg.d_ff * cfg.d_model)


def _attended_keys(n_queries: int, kind: str, prefix: int = 0, window: int | None = None) -> int:
    """Sum over queries of the number of keys each attends (self-attention of n tokens);
    with a sliding ``window``, only keys fewer than ``window`` slots away count."""
    n = n_queries
    if window is not None and window < n:
        return _windowed_keys(n, kind, prefix, window)
    if kind == "bidirectional":
        return n * n
    p = min(prefix, n) if kind == "prefix" else 0
    # queries inside the prefix see the whole prefix; later query i sees keys 0..i
    return p * p + (n * (n + 1) - p * (p + 1)) // 2


def _windowed_keys(n: int, kind: str, prefix: int, w: int) -> int:
    """_attended_keys under a window w < n: per query, the keys of its band [i-w+1, i+w-1]
    that its mask allows (one interval for causal / bidirectional; for prefix, the union of
    the causal part and the prefix part of the band)."""
    p = min(prefix, n) if kind == "prefix" else 0
    total = 0
    for i in range(n):
        lo, hi = max(0, i - w + 1), min(n - 1, i + w - 1)
        if kind == "bidirectional":
            total += hi - lo + 1
            continue
        total += i - lo + 1  # causal part: lo..i
        if p:  # prefix keys after the query, inside the band: i+1 .. min(hi, p-1)
            total += max(0, min(hi, p - 1) - i)
    return total


@dataclass
class FlopCount:
    encoder: int  # forward FLOPs in the encoder stack (per example)
    decoder: int  # forward FLOPs in the decoder stack (incl. cross-attention)
    head: int  # LM / MLM head
    forward: int
    train: int  # 3 x forward


def flops_per_example(
    cfg: ModelConfig,
    src_len: int = 0,
    tgt_len: int = 0,
    *,
    prefix_len: int = 0,
    predicted: int | None = None,
) -> FlopCount:
    """Forward and training FLOPs for one example.

    encoder: ``src_len`` tokens; decoder / prefix-LM: ``tgt_len`` tokens (``prefix_len`` of
    them bidirectional, prefix-LM only); encoder-decoder: ``src_len`` encoder tokens,
    ``tgt_len`` decoder tokens. ``predicted``: positions that go through the LM head (default:
    every output position: ``src_len`` for an encoder, ``tgt_len`` otherwise).
    """
    attn_unit = 4 * cfg.n_heads * cfg.dim_head  # QK^T + AV per (query, key) pair
    enc = dec = 0
    if cfg.arch in ("encoder", "encoder-decoder"):
        per_layer = src_len * _layer_matmul_flops(cfg) + attn_unit * _attended_keys(
            src_len, "bidirectional", window=cfg.attn_window)
        enc = cfg.encoder_layers * per_layer
    if cfg.arch != "encoder":
        kind = "prefix" if cfg.arch == "prefix-lm" and prefix_len else "causal"
        per_layer = tgt_len * _layer_matmul_flops(cfg) + attn_unit * _attended_keys(
            tgt_len, kind, prefix_len, cfg.attn_window)
        if cfg.arch == "encoder-decoder":
            q = cfg.n_heads * cfg.dim_head
            kv = cfg.kv_heads * cfg.dim_head
            per_layer += tgt_len * 2 * (cfg.d_model * q + q * cfg.d_model)  # q and o projections
            per_layer += src_len * 2 * cfg.d_model * 2 * kv  # k, v of the encoder output
            per_layer += attn_unit * tgt_len * src_len
        dec = cfg.decoder_layers * per_layer
    if predicted is None:
        predicted = src_len if cfg.arch == "encoder" else tgt_len
    head = predicted * 2 * cfg.d_model * cfg.vocab_size
    if cfg.arch == "encoder" and cfg.mlm_transform:
        head += predicted * 2 * cfg.d_model * cfg.d_model
    fwd = enc + dec + head
    return FlopCount(enc, dec, head, fwd, 3 * fwd)


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
