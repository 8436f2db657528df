"""Building blocks shared by every family: norms, feed-forward, position encodings."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from archlab.config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019); T5's "T5LayerNorm" and Llama's norm.

    Statistics are computed in fp32 whatever the input dtype, as both T5 and Llama do, so that
    bf16 autocast does not lose precision in the variance.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., C)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


# Most rows a decoding step multiplies (batch x beams x 1 token) for which the split
# matrix-vector path below is used; measured faster than F.linear up to 8 rows.
FEW_ROWS = 8


def decode_blocks(x: torch.Tensor, weight: torch.Tensor) -> int:
    """How many row blocks :func:`linear` cuts ``weight`` into for ``x``; 0 means ``F.linear``.

    A decoding step multiplies a few rows (one new token per sequence) by every weight matrix,
    a matrix-vector product bound by memory bandwidth. On CPU, PyTorch's BLAS (MKL) runs such
    products on one thread: measured on this project's 2-core machine, the 25 matrices of a
    6-layer d=384 decoder took 3.6 ms per token with ``F.linear`` (15 GB/s) against 1.1 ms
    (about 50 GB/s, the rate of a plain read of the same bytes) when the weight's rows are cut
    into one block per thread and multiplied in one ``bmm``, which runs its blocks in
    parallel. The split path is used only under ``torch.inference_mode`` (generation), on CPU,
    without autocast, for at most ``FEW_ROWS`` rows; training and ordinary forwards keep
    ``F.linear``. Its result equals ``F.linear``'s up to the order of floating-point sums.
    """
    if not (torch.is_inference_mode_enabled() and x.is_cpu and x.is_contiguous()
            and x.dtype == weight.dtype) or torch.is_autocast_enabled("cpu"):
        return 0
    K = x.shape[-1]
    if not 0 < x.numel() <= FEW_ROWS * K:
        return 0
    return _weight_blocks(weight)


def _weight_blocks(weight: torch.Tensor) -> int:
    """Row blocks (one per thread) a contiguous weight is cut into; 0 when fewer than two."""
    blocks = min(torch.get_num_threads(), weight.shape[0])
    return blocks if blocks > 1 and weight.is_contiguous() else 0


def _blocked_views(weight: torch.Tensor, bias: torch.Tensor | None,
                   blocks: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(blocks, n, K) view of the first ``blocks * n`` weight rows, the matching (blocks, n, 1)
    bias view, and ``n``."""
    N, K = weight.shape
    n = N // blocks
    main = n * blocks
    w3 = (weight if main == N else weight[:main]).view(blocks, n, K)
    b3 = None if bias is None else (bias if main == N else bias[:main]).view(blocks, n, 1)
    return w3, b3, n


def _blocked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    blocks: int) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` as one bmm over ``blocks`` row blocks of the weight (see
    :func:`decode_blocks`); x must be contiguous."""
    N, K = weight.shape
    w3, b3, n = _blocked_views(weight, bias, blocks)
    main = n * blocks
    M = x.numel() // K
    xb = x.as_strided((blocks, K, M), (0, 1, K))  # every block sees all M rows, no copy
    # (blocks, n, K) @ (blocks, K, M) -> (blocks, n, M): one matrix-vector product per thread
    out = torch.bmm(w3, xb) if b3 is None else torch.baddbmm(b3, w3, xb)
    if M == 1 and main == N:
        return out.view(*x.shape[:-1], N)
    out = out.view(main, M).t()  # (M, main)
    if main < N:  # the last N % blocks rows
        rest = F.linear(x.view(M, K), weight[main:], None if bias is None else bias[main:])
        out = torch.cat([out, rest], dim=1)
    return out.reshape(*x.shape[:-1], N)


# Blocked weight views kept for the length of one generation call (see decode_views). Making
# them, and deciding per call whether the blocked path applies, costs a few microseconds per
# matrix and token: about 0.1 ms of a 1.7 ms batch-1 step of the bench model. None outside
# such a call, and per thread (two threads may generate at once). Keys are the ids of weight
# and bias; a value is (w3, b3, N, K) for the one-row blocked path, or (weight, bias, N, -1)
# where it never applies (K = -1 matches no input). Each value holds its tensors (or views of
# them), which keeps them alive, so an id cannot be reused while its entry exists.
_Plan = tuple[torch.Tensor, torch.Tensor | None, int, int]


class _DecodeState(threading.local):
    views: dict[tuple[int, int], _Plan] | None = None


_STATE = _DecodeState()


@contextmanager
def decode_views() -> Iterator[None]:
    """Within this context (``archlab.generate`` enters it, under ``torch.inference_mode``),
    :func:`linear` decides once per weight whether the blocked path applies and keeps the
    blocked views; they are dropped on exit, so no view outlives the call or pins a weight
    that is later moved or replaced. Parameters must not be replaced or moved inside the
    context (in-place changes are seen: the views share storage)."""
    outer = _STATE.views
    if outer is None:
        _STATE.views = {}
    try:
        yield
    finally:
        _STATE.views = outer


def _plan(weight: torch.Tensor, bias: torch.Tensor | None) -> _Plan:
    blocks = _weight_blocks(weight) if weight.dim() == 2 and weight.is_cpu else 0
    if blocks and weight.shape[0] % blocks == 0:  # with a remainder block: the general path
        w3, b3, _ = _blocked_views(weight, bias, blocks)
        return w3, b3, weight.shape[0], weight.shape[1]
    return weight, bias, weight.shape[0], -1


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` (x: (..., K), weight: (N, K) -> (..., N)) with the decoding path of
    :func:`decode_blocks`."""
    views = _STATE.views
    if views is not None and torch.is_inference_mode_enabled():
        key = (id(weight), id(bias))
        if key in views:
            plan = views[key]
        else:
            plan = views[key] = _plan(weight, bias)
        # the plan covers the weight; what is left to check is this call's input
        if x.numel() == plan[3] and x.is_contiguous() and (
                x.dtype == weight.dtype) and not torch.is_autocast_enabled("cpu"):
            w3, b3, N, K = plan  # one row: (blocks, n, K) @ (blocks, K, 1) -> (blocks, n, 1)
            xb = x.as_strided((w3.shape[0], K, 1), (0, 1, K))
            out = torch.bmm(w3, xb) if b3 is None else torch.baddbmm(b3, w3, xb)
            return out.view(*x.shape[:-1], N)  # (ints, not a torch.Size: a faster view call)
    blocks = decode_blocks(x, weight)
    if not blocks:
        return F.linear(x, weight, bias)
    return _blocked_linear(x, weight, bias, blocks)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) whose forward is :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return linear(x, self.weight, self.bias)


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.d_model
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


_ACT = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swiglu": F.silu,
    "geglu": F.gelu,
    "geglu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "reglu": F.relu,
}


def activation_fn(name: str):
    return _ACT[name]


class MLP(nn.Module):
    """Position-wise feed-forward network.

    Gated variants (SwiGLU, GeGLU, ReGLU; Shazeer 2020) keep the gate and the up projection in
    one fused matrix ``w_in`` of shape (2*d_ff, d): one GEMM instead of two.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated = cfg.gated
        self.act = activation_fn(cfg.activation)
        self.w_in = Linear(cfg.d_model, cfg.d_ff * (2 if self.gated else 1), bias=cfg.bias)
        self.w_out = Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        h = self.w_in(x)  # (B, T, d_ff or 2*d_ff)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.w_out(self.dropout(h) if self.training else h)


# ---------------------------------------------------------------------------------------------
# Positions
# ---------------------------------------------------------------------------------------------


def sinusoidal_table(n_pos: int, dim: int, layout: str = "interleaved") -> torch.Tensor:
    """Fixed sin/cos table of Vaswani et al. 2017, Sec. 3.5: (n_pos, dim).

    ``halves``: the sines of all frequencies, then the cosines (Marian, fairseq), computed in
    float64 and rounded once, as HF's MarianSinusoidalPositionalEmbedding does."""
    if layout == "halves":
        p64 = torch.arange(n_pos, dtype=torch.float64)[:, None]
        freq = torch.tensor([10000.0 ** (2 * i / dim) for i in range(dim // 2)], dtype=torch.float64)
        angle = p64 / freq  # (n_pos, dim // 2)
        return torch.cat([torch.sin(angle), torch.cos(angle)], 1).float()
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_pos, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv[: dim // 2])
    return table


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021, RoFormer), "rotate half" layout as in HF Llama.

    cos/sin are computed per call from integer positions (B, T): cheap compared to attention,
    and it makes left padding, KV caches and arbitrary position ids work without a cached table
    that must be grown.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: (B, T) -> cos, sin: (B, 1, T, head_dim / 2), broadcast over heads
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, hd/2)
        return freqs.cos().to(dtype)[:, None], freqs.sin().to(dtype)[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i + hd/2}) by their position's angles: the same arithmetic as
    ``x * cos + rotate_half(x) * sin`` (HF Llama), with half-width tables and no negated copy."""
    # x: (B, H, T, hd); cos, sin: (B|1, 1, T, hd/2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Head slopes of ALiBi (Press et al. 2022, Sec. 3): a geometric sequence from 2^(-8/n)."""

    def pow2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = pow2(n_heads)
    else:  # the paper's recipe for head counts that are not powers of two
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = pow2(closest) + pow2(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """-slope * |i - j|: (B, H, Tq, Tk). Symmetric, so the same bias serves encoders; a causal
    mask removes the future half for decoders."""
    dist = (q_pos[:, :, None] - k_pos[:, None, :]).abs().float()  # (B, Tq, Tk)
    return -slopes[None, :, None, None] * dist[:, None]


class RelativePositionBias(nn.Module):
    """T5's bucketed relative position bias (Raffel et al. 2020, Sec. 2.1).

    One learned scalar per (bucket, head), computed once per stack and added to the attention
    logits of every layer. Half the buckets are exact offsets, the rest log-spaced up to
    ``max_distance``; encoders use both directions, decoders only the past.
    """

    def __init__(self, n_heads: int, n_buckets: int, max_distance: int, bidirectional: bool) -> None:
        super().__init__()
        self.n_buckets = n_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.embedding = nn.Embedding(n_buckets, n_heads)

    def bucket(self, rel: torch.Tensor) -> torch.Tensor:
        n = self.n_buckets
        out = torch.zeros_like(rel)
        if self.bidirectional:
            n //= 2
            out = out + (rel > 0).long() * n
            rel = rel.abs()
        else:
            rel = -torch.clamp(rel, max=0)
        max_exact = n // 2
        is_small = rel < max_exact
        large = max_exact + (
            torch.log(rel.float().clamp(min=1) / max_exact)
            / math.log(self.max_distance / max_exact)
            * (n - max_exact)
        ).long()
        large = torch.clamp(large, max=n - 1)
        return out + torch.where(is_small, rel, large)

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        # q_pos: (B, Tq), k_pos: (B, Tk) -> (B, H, Tq, Tk)
        rel = k_pos[:, None, :] - q_pos[:, :, None]  # memory - context, as in T5
        return self.embedding(self.bucket(rel)).permute(0, 3, 1, 2)
