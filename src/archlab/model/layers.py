"""Building blocks shared by every family: norms, feed-forward, position encodings."""

from __future__ import annotations

import math

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
        self.w_in = nn.Linear(cfg.d_model, cfg.d_ff * (2 if self.gated else 1), bias=cfg.bias)
        self.w_out = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
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
