"""State-space sequence mixers in pure PyTorch: Mamba-1 and Mamba-2, causal or bidirectional.

- Mamba-1 (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
  Alg. 2): in_proj -> short causal depthwise conv -> SiLU -> input-dependent (dt, B, C) ->
  selective scan ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t``, ``y_t = C_t h_t + D x_t`` ->
  gate ``y * SiLU(z)`` -> out_proj. A is diagonal (d_inner, N), kept as ``A_log``.
- Mamba-2 (Dao & Gu 2024, "Transformers are SSMs", SSD): A is a scalar per head, so a chunk
  of the scan is a masked matrix product (the "state space dual" form, Sec. 6); the gated
  RMSNorm ``norm(y * SiLU(z))`` of Hugging Face ``Mamba2Mixer`` precedes out_proj.

Training runs a chunked form (a Python loop over chunks at most, never over time steps);
decoding runs the one-step recurrence on a (conv state, SSM state) pair kept in the stack's
cache (``archlab.model.cache.StackCache``). Padding: inputs of pad slots are zeroed before
the convolution and before the scan (as HF's ``apply_mask_to_padding_states``), so a zero
state stays exactly zero across leading (left) pads; trailing pads come after every real
token of a causal scan and cannot reach it.

Bidirectional use (encoders; the prefix of a prefix-LM) runs a second mixer over each
sequence reversed by its own length (Caduceus ``BiMambaWrapper``, Schiff et al. 2024; Vim,
Zhu et al. 2024), see :func:`reverse_by_length`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archlab.config import SSMConfig

# Largest total decay |sum dt*A| inside one chunk of the Mamba-1 chunked scan (see
# selective_scan_chunked): exp(+budget) must stay far from overflow and the relative error
# of exp(S_t) * exp(-S_s) (about eps * 2 * budget) small.
_DECAY_BUDGET = {torch.float64: 300.0}
_DECAY_BUDGET_DEFAULT = 50.0


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # the scans run in fp32 at least (bf16/fp16 decays underflow; mamba issue #6)
    return torch.promote_types(dtype, torch.float32)


# ---------------------------------------------------------------------------------------------
# Mamba-1 selective scan
# ---------------------------------------------------------------------------------------------


def selective_scan_ref(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential reference (one step per token; tests only), the semantics of mamba-ssm's
    ``selective_scan_ref``. u, delta: (B, T, D); A: (D, N); B, C: (B, T, N); h0: (B, D, N)
    -> y (B, T, D), final state (B, D, N)."""
    Bsz, T, Dn = u.shape
    h = h0 if h0 is not None else u.new_zeros(Bsz, Dn, A.shape[1])
    ys = []
    for t in range(T):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    y = torch.stack(ys, 1) if ys else u.new_zeros(Bsz, 0, Dn)
    if D is not None:
        y = y + u * D
    return y, h


def selective_scan_chunked(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, h0: torch.Tensor | None = None, chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective scan as cumulative sums over chunks (same arguments as
    :func:`selective_scan_ref`).

    Inside a chunk, with Lambda_t = sum_{s<=t} dt_s (from the chunk start) and S_t =
    Lambda_t A (<= 0; A is constant in time, so one small cumsum gives every decay),
    ``h_t = exp(S_t) * (h_start + cumsum_s(exp(-S_s) * dt_s B_s x_s))``: cumsums and
    elementwise products, no loop over time. exp(-S) grows along the chunk, so the chunk is
    cut short enough that |S| stays within a budget (fp32: 50, so exp(50) ~ 5e21 and the
    weights exp(S_t - S_s) keep a relative error about 1e-5 or better); the bound is taken
    from the largest dt*|A| of this call, so any dt, however large, is exact (shorter chunks).

    Speed and memory on CPU: each chunk is cut further into blocks of channels of about
    ``_TILE_ELEMS`` (B, q, d, N) elements, so the state-sized intermediates stay in cache
    (a fresh 80 MB tensor per elementwise op costs more in page faults than the arithmetic).
    With autograd the scan is one :class:`torch.autograd.Function` that keeps only its
    inputs and the state at each chunk start, and recomputes a block's states in backward
    (as mamba-ssm's fused kernel does): a training step holds (B, T, D)-sized tensors, not
    the (B, T, D, N) ones autograd (and HF's slow path) would keep for the whole sequence.
    """
    Bsz, T, Dn = u.shape
    N = A.shape[1]
    if T == 0:
        y = u.new_zeros(Bsz, 0, Dn)
        return y, (h0 if h0 is not None else u.new_zeros(Bsz, Dn, N))
    # largest one-step decay |dt * A| of this call: bounds |S| over a chunk
    max_step = float((delta.detach().amax(dim=(0, 1)) * (-A.detach()).amax(-1)).max())
    budget = _DECAY_BUDGET.get(u.dtype, _DECAY_BUDGET_DEFAULT)
    Q = int(max(1, min(chunk_size, budget // max(max_step, 1e-30))))
    du = delta * u  # (B, T, D)
    h = h0 if h0 is not None else u.new_zeros(Bsz, Dn, N)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (du, delta, A, B, C, h)):
        y, h = _SelectiveScan.apply(delta, du, A, B, C, h, Q)
    else:
        y, h, _ = _scan_forward(delta, du, A, B, C, h, Q)
    if D is not None:
        y = y + u * D
    return y, h


# Elements of one (B, q, d, N) block of the Mamba-1 scan (4 MB in fp32): measured on a 2-core
# EPYC, the ssm preset's Mamba decoder training step (3000 tokens) took 1.85 s at 2^20, 2.2 s
# at 2^19, 2.5 s at 2^18 and at 2^21, 3.2 s at 2^17 (smaller: more Python overhead per
# element; larger: out of cache); 8.5 s before blocks and the hand-written backward.
_TILE_ELEMS = 1 << 20


def _blocks(Bsz: int, T: int, Dn: int, N: int, Q: int):
    """(chunk start, end, [(channel start, end), ...]) over the time chunks of length Q."""
    for s in range(0, T, Q):
        e = min(s + Q, T)
        d = max(1, min(Dn, _TILE_ELEMS // max(1, Bsz * (e - s) * N)))
        yield s, e, [(c, min(c + d, Dn)) for c in range(0, Dn, d)]


def _scan_forward(delta: torch.Tensor, du: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  C: torch.Tensor, h: torch.Tensor, Q: int
                  ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The scan without autograd: y (B, T, D) without the D skip, final state (B, D, N), and
    the state before each chunk (for the backward pass)."""
    Bsz, T, Dn = du.shape
    N = A.shape[1]
    y = du.new_empty(Bsz, T, Dn)
    starts = []
    with torch.no_grad():
        for s, e, chans in _blocks(Bsz, T, Dn, N, Q):
            starts.append(h)
            h_next = h.new_empty(h.shape)
            for c0, c1 in chans:
                H, _, _ = _block_states(delta[:, s:e, c0:c1], du[:, s:e, c0:c1], A[c0:c1], B[:, s:e], h[:, c0:c1])
                y[:, s:e, c0:c1] = (H * C[:, s:e, None, :]).sum(-1)
                h_next[:, c0:c1] = H[:, -1]
            h = h_next
    return y, h, starts


def _block_states(delta: torch.Tensor, du: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block: delta, du (B, q, d); A (d, N); B (B, q, N); h (B, d, N) the state before
    the chunk -> states H (B, q, d, N), decays E = exp(S) and inputs b = dt B x (same shape)."""
    E = (delta.cumsum(1)[..., None] * A).exp_()  # (B, q, d, N), in (0, 1]
    b = du[..., None] * B[:, :, None, :]  # (B, q, d, N)
    H = (b / E).cumsum_(1).add_(h[:, None]).mul_(E)
    return H, E, b


class _SelectiveScan(torch.autograd.Function):
    """The chunked scan with a hand-written backward pass (the adjoint is the same scan run
    backwards in time). With a_t = exp(dt_t A), h_t = a_t h_{t-1} + b_t, y_t = <h_t, C_t>:
    the adjoint of h_t is g_t = C_t gy_t + a_{t+1} g_{t+1}; then grad b_t = g_t,
    grad C_t = sum_d h_t gy_t, grad dt_t = sum_n A g_t (h_t - b_t) (since a_t h_{t-1} =
    h_t - b_t) and grad A = sum_{b,t} dt_t g_t (h_t - b_t)."""

    @staticmethod
    def forward(ctx, delta, du, A, B, C, h0, Q):  # noqa: D102
        y, h, starts = _scan_forward(delta, du, A, B, C, h0, Q)
        ctx.Q = Q
        ctx.save_for_backward(delta, du, A, B, C, *starts)
        return y, h

    @staticmethod
    def backward(ctx, gy, gh):  # noqa: D102
        delta, du, A, B, C, *starts = ctx.saved_tensors
        Bsz, T, Dn = du.shape
        N = A.shape[1]
        gy = gy if gy is not None else du.new_zeros(Bsz, T, Dn)
        g_delta, g_du = torch.empty_like(delta), torch.empty_like(du)
        g_A = torch.zeros_like(A)
        g_B, g_C = torch.zeros_like(B), torch.zeros_like(C)
        blocks = list(_blocks(Bsz, T, Dn, N, ctx.Q))
        # gh: adjoint of the state after the chunk being processed (None: zero)
        for (s, e, chans), h in zip(reversed(blocks), reversed(starts)):
            g_prev = h.new_empty(h.shape)
            for c0, c1 in chans:
                H, E, b = _block_states(delta[:, s:e, c0:c1], du[:, s:e, c0:c1], A[c0:c1], B[:, s:e],
                                        h[:, c0:c1])
                gyb = gy[:, s:e, c0:c1]
                # g_t = sum_{u>=t} (E_u / E_t) C_u gy_u + (E_q / E_t) gh: a reverse cumsum,
                # flipped so it accumulates from the end (E_u / E_t <= 1 for u >= t)
                G = (gyb[..., None] * C[:, s:e, None, :]).mul_(E).flip(1).cumsum_(1).flip(1)
                if gh is not None:
                    G.add_(E[:, -1:] * gh[:, None, c0:c1])
                G.div_(E)
                g_prev[:, c0:c1] = G[:, 0] * E[:, 0]  # adjoint of the chunk's start state
                g_C[:, s:e] += (H * gyb[..., None]).sum(2)
                g_du[:, s:e, c0:c1] = (G * B[:, s:e, None, :]).sum(-1)
                g_B[:, s:e] += (G * du[:, s:e, c0:c1, None]).sum(2)
                M = H.sub_(b).mul_(G)  # g_t (h_t - b_t) = g_t a_t h_{t-1}
                g_delta[:, s:e, c0:c1] = (M * A[c0:c1]).sum(-1)
                g_A[c0:c1] += (M * delta[:, s:e, c0:c1, None]).sum((0, 1))
            gh = g_prev
        return g_delta, g_du, g_A, g_B, g_C, gh, None


def selective_scan_step(
    h: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
    C: torch.Tensor, D: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step: h (B, D, N); u, delta (B, D); B, C (B, N) -> y (B, D), new h."""
    h = torch.exp(delta[..., None] * A) * h + (delta * u)[..., None] * B[:, None, :]
    y = (h * C[:, None, :]).sum(-1)
    if D is not None:
        y = y + u * D
    return y, h


# ---------------------------------------------------------------------------------------------
# Mamba-2 SSD
# ---------------------------------------------------------------------------------------------


def _segsum(x: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T): out[i, j] = sum_{j < k <= i} x_k for j <= i, -inf above the
    diagonal; by masked cumsums, without the subtraction of two cumsums that loses precision
    (mamba_ssm ``ssd_minimal.segsum``)."""
    T = x.shape[-1]
    x = x[..., None].expand(*x.shape, T)  # (..., T, T): x[..., k, j] = x_k
    low = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=-1)
    x = x.masked_fill(~low, 0)
    out = x.cumsum(-2)
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=0)
    return out.masked_fill(~keep, -torch.inf)


def _heads(t: torch.Tensor, H: int) -> torch.Tensor:
    # (B, T, G, N) -> (B, T, H, N): head h reads group h // (H / G) (repeat_interleave, as
    # mamba-ssm; the transformers bug fixed in PR #38249 used repeat)
    G = t.shape[2]
    return t if G == H else t.repeat_interleave(H // G, dim=2)


def ssd_ref(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential Mamba-2 reference (tests only). x: (B, T, H, P); dt: (B, T, H); A: (H,);
    B, C: (B, T, G, N); h0: (B, H, P, N) -> y (B, T, H, P), final state (B, H, P, N)."""
    Bsz, T, H, P = x.shape
    Bh, Ch = _heads(B, H), _heads(C, H)
    h = h0 if h0 is not None else x.new_zeros(Bsz, H, P, B.shape[-1])
    ys = []
    for t in range(T):
        y, h = ssd_step(h, x[:, t], dt[:, t], A, Bh[:, t], Ch[:, t], D)
        ys.append(y)
    y = torch.stack(ys, 1) if ys else x.new_zeros(Bsz, 0, H, P)
    return y, h


def ssd_step(
    h: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
    C: torch.Tensor, D: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: h (B, H, P, N); x (B, H, P); dt (B, H); B, C per head (B, H, N)."""
    h = h * torch.exp(dt * A)[..., None, None] + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    y = (h * C[:, :, None, :]).sum(-1)
    if D is not None:
        y = y + x * D[:, None]
    return y, h


def ssd_chunked(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, h0: torch.Tensor | None = None, chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD in its chunked matrix form (Dao & Gu 2024, Sec. 7 / ``ssd_minimal``); arguments
    as :func:`ssd_ref`. The length is zero-padded to a multiple of the chunk (dt = 0 there:
    decay 1 and no input, so the final state is unchanged).

    Computed per B/C group, not per head: the heads of a group share B and C, so C_l . B_s
    and the products with B and C are formed once per group (heads h = g * H/G + j, the
    repeat_interleave layout), not H/G times as with B and C repeated to every head."""
    Bsz, T, H, P = x.shape
    G, N = B.shape[2], B.shape[-1]
    J = H // G  # heads per group
    # a chunk no longer than the sequence: padding 47 tokens to a 64-chunk would waste a third
    Q = max(1, min(chunk_size, T))
    pad = (-T) % Q
    xd = x * dt[..., None]  # (B, T, H, P)
    a = dt * A  # (B, T, H)
    Bp, Cp = B, C
    if pad:
        xd = F.pad(xd, (0, 0, 0, 0, 0, pad))
        a = F.pad(a, (0, 0, 0, pad))
        Bp = F.pad(Bp, (0, 0, 0, 0, 0, pad))
        Cp = F.pad(Cp, (0, 0, 0, 0, 0, pad))
    nc = (T + pad) // Q
    xd = xd.view(Bsz, nc, Q, G, J, P)
    Bp = Bp.reshape(Bsz, nc, Q, G, N)
    Cp = Cp.reshape(Bsz, nc, Q, G, N)
    a = a.view(Bsz, nc, Q, G, J).permute(0, 3, 4, 1, 2)  # (B, G, J, c, l)
    a_cum = a.cumsum(-1)
    # 1. within chunks: a masked "attention" C_l . B_s exp(sum_{s<k<=l} a_k)
    L = torch.exp(_segsum(a))  # (B, G, J, c, l, s)
    CB = torch.einsum("bclgn,bcsgn->bgcls", Cp, Bp)  # (B, G, c, l, s), once per group
    y = torch.einsum("bgjcls,bcsgjp->bclgjp", L * CB[:, :, None], xd)
    # 2. state at the end of each chunk from its own inputs
    decay = torch.exp(a_cum[..., -1:] - a_cum)  # (B, G, J, c, l)
    states = torch.einsum("bclgn,bclgjp->bcgjpn", Bp, xd * decay.permute(0, 3, 4, 1, 2)[..., None])
    # 3. states passed across chunks (a segsum over chunk totals)
    init = (h0.view(Bsz, 1, G, J, P, N) if h0 is not None else states.new_zeros(Bsz, 1, G, J, P, N))
    states = torch.cat([init, states], 1)  # (B, c+1, G, J, P, N)
    chunk_decay = torch.exp(_segsum(F.pad(a_cum[..., -1], (1, 0))))  # (B, G, J, c+1, c+1)
    states = torch.einsum("bgjzc,bcgjpn->bzgjpn", chunk_decay, states)
    prev, final = states[:, :-1], states[:, -1]
    # 4. each position reads its chunk's start state
    y_off = torch.einsum("bclgn,bcgjpn->bclgjp", Cp, prev)
    y = y + y_off * torch.exp(a_cum).permute(0, 3, 4, 1, 2)[..., None]
    y = y.reshape(Bsz, nc * Q, H, P)[:, :T]
    if D is not None:
        y = y + x * D[:, None]
    return y, final.reshape(Bsz, H, P, N)


# ---------------------------------------------------------------------------------------------
# Mixers
# ---------------------------------------------------------------------------------------------


def _mask(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return x if valid is None else x * valid[..., None].to(x.dtype)


def _causal_conv(x: torch.Tensor, conv: nn.Conv1d, prev: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv over (B, T, C) with the last K-1 inputs ``prev`` (B, C, K-1)
    (zeros at the start) -> (B, T, C) pre-activation, new (B, C, K-1) window."""
    K = conv.kernel_size[0]
    xt = x.transpose(1, 2)  # (B, C, T)
    if prev is None:
        prev = xt.new_zeros(xt.shape[0], xt.shape[1], K - 1)
    full = torch.cat([prev.to(xt.dtype), xt], -1)  # (B, C, K-1+T)
    if xt.shape[-1] == 1:
        # a decoding step: the window times the taps, summed (a 4-tap depthwise conv1d call
        # costs ~100 us here, the dot product a few: HF's slow path does the same)
        y = (full * conv.weight[:, 0]).sum(-1, keepdim=True)  # (B, C, 1)
        if conv.bias is not None:
            y = y + conv.bias[:, None]
    else:
        y = F.conv1d(full, conv.weight, conv.bias, groups=conv.groups)  # (B, C, T)
    return y.transpose(1, 2), full[:, :, full.shape[-1] - (K - 1):]


def _inv_softplus_dt(n: int, s: SSMConfig) -> torch.Tensor:
    dt = torch.exp(torch.rand(n) * (math.log(s.dt_max) - math.log(s.dt_min)) + math.log(s.dt_min))
    dt = dt.clamp(min=s.dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # softplus^-1 (pytorch #72759)


class _RMS(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(_compute_dtype(x.dtype))
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Mamba(nn.Module):
    """Mamba-1 mixer (d_model -> d_model). Parameter names follow HF ``MambaMixer``."""

    kind = "mamba"

    def __init__(self, d_model: int, s: SSMConfig, norm_eps: float) -> None:
        super().__init__()
        self.d_inner = di = s.inner(d_model)
        self.d_state = N = s.d_state
        self.dt_rank = R = s.rank(d_model)
        self.chunk_size = s.chunk_size
        self.cfg = s
        self.in_proj = nn.Linear(d_model, 2 * di, bias=s.proj_bias)
        self.conv1d = nn.Conv1d(di, di, s.d_conv, groups=di, padding=s.d_conv - 1, bias=s.conv_bias)
        self.x_proj = nn.Linear(di, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, di, bias=True)
        self.A_log = nn.Parameter(torch.empty(di, N))
        self.D = nn.Parameter(torch.empty(di))
        self.out_proj = nn.Linear(di, d_model, bias=s.proj_bias)
        eps = s.norm_eps if s.norm_eps is not None else norm_eps
        if s.dtbc_norm:  # Jamba (Lieber et al. 2024): RMSNorm on dt, B, C for stability
            self.dt_layernorm, self.b_layernorm, self.c_layernorm = _RMS(R, eps), _RMS(N, eps), _RMS(N, eps)
        else:
            self.dt_layernorm = self.b_layernorm = self.c_layernorm = None
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """S4D-real A = -(1..N), D = 1, dt bias = softplus^-1 of a log-uniform dt in
        [dt_min, dt_max], dt_proj weight uniform(+-dt_rank^-0.5) (mamba_ssm ``Mamba``)."""
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).expand(self.d_inner, -1)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)
        std = self.dt_rank ** -0.5
        self.dt_proj.weight.uniform_(-std, std)
        self.dt_proj.bias.copy_(_inv_softplus_dt(self.d_inner, self.cfg))
        self.conv1d.reset_parameters()

    def state_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-example (conv state, SSM state) shapes: constant in length."""
        return (self.d_inner, self.conv1d.kernel_size[0] - 1), (self.d_inner, self.d_state)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor | None = None,
        state: tuple[torch.Tensor, torch.Tensor] | None = None, return_state: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """x: (B, T, C); valid: (B, T) True for real tokens; state: (conv (B, d_inner, K-1),
        ssm (B, d_inner, N)) after the earlier tokens -> (B, T, C), new state or None."""
        Bsz, T, _ = x.shape
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, d_inner) each
        xs = _mask(xs, valid)
        xc, conv_state = _causal_conv(xs, self.conv1d, state[0] if state is not None else None)
        xc = _mask(F.silu(xc), valid)
        dt, Bm, Cm = self.x_proj(xc).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.dt_layernorm is not None:
            dt, Bm, Cm = self.dt_layernorm(dt), self.b_layernorm(Bm), self.c_layernorm(Cm)
        ct = _compute_dtype(x.dtype)
        delta = F.softplus(self.dt_proj(dt).to(ct))  # (B, T, d_inner)
        A = -torch.exp(self.A_log.to(ct))
        h0 = state[1].to(ct) if state is not None else None
        u, Bm, Cm, Dp = xc.to(ct), Bm.to(ct), Cm.to(ct), self.D.to(ct)
        if T == 1 and h0 is not None:
            y, h = selective_scan_step(h0, u[:, 0], delta[:, 0], A, Bm[:, 0], Cm[:, 0], Dp)
            y = y[:, None]
        else:
            y, h = selective_scan_chunked(u, delta, A, Bm, Cm, Dp, h0, self.chunk_size)
        y = (y * F.silu(z.to(ct))).to(x.dtype)
        new = (conv_state, h.to(x.dtype)) if return_state else None
        return self.out_proj(y), new


class GatedRMSNorm(nn.Module):
    """norm(y * SiLU(z)) in groups of d_inner / n_groups channels (HF ``MambaRMSNormGated``,
    ``norm_before_gate=False``)."""

    def __init__(self, dim: int, group_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        ct = _compute_dtype(y.dtype)
        h = y.to(ct) * F.silu(z.to(ct))
        *lead, C = h.shape
        g = h.view(*lead, C // self.group_size, self.group_size)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * g.view(*lead, C).to(y.dtype)


class Mamba2(nn.Module):
    """Mamba-2 mixer (d_model -> d_model). Parameter names follow HF ``Mamba2Mixer``; in_proj
    rows are ordered [z, x, B, C, dt] as there."""

    kind = "mamba2"

    def __init__(self, d_model: int, s: SSMConfig, norm_eps: float) -> None:
        super().__init__()
        self.d_inner = di = s.inner(d_model)
        self.d_state = N = s.d_state
        self.n_heads = H = s.heads(d_model)
        self.head_dim = s.head_dim
        self.n_groups = G = s.n_groups
        self.chunk_size = s.chunk_size
        self.dt_limit = tuple(s.dt_limit) if s.dt_limit is not None else None
        self.cfg = s
        self.conv_dim = di + 2 * G * N
        self.in_proj = nn.Linear(d_model, di + self.conv_dim + H, bias=s.proj_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, s.d_conv, groups=self.conv_dim,
                                padding=s.d_conv - 1, bias=s.conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.empty(H))
        eps = s.norm_eps if s.norm_eps is not None else norm_eps
        self.norm = GatedRMSNorm(di, di // G, eps)
        self.out_proj = nn.Linear(di, d_model, bias=s.proj_bias)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """A = -(1..H), D = 1, dt bias as Mamba-1 (mamba_ssm ``Mamba2``)."""
        self.A_log.copy_(torch.log(torch.arange(1, self.n_heads + 1, dtype=torch.float32)))
        self.D.fill_(1.0)
        self.dt_bias.copy_(_inv_softplus_dt(self.n_heads, self.cfg))
        self.norm.weight.fill_(1.0)
        self.conv1d.reset_parameters()

    def state_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (self.conv_dim, self.conv1d.kernel_size[0] - 1), (self.n_heads, self.head_dim, self.d_state)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor | None = None,
        state: tuple[torch.Tensor, torch.Tensor] | None = None, return_state: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """As :meth:`Mamba.forward`; the SSM state is (B, H, P, N)."""
        Bsz, T, _ = x.shape
        H, P, N, G = self.n_heads, self.head_dim, self.d_state, self.n_groups
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, H], dim=-1)
        xBC = _mask(xBC, valid)
        xBC, conv_state = _causal_conv(xBC, self.conv1d, state[0] if state is not None else None)
        xBC = _mask(F.silu(xBC), valid)
        xs, Bm, Cm = xBC.split([self.d_inner, G * N, G * N], dim=-1)
        ct = _compute_dtype(x.dtype)
        dt = F.softplus(dt.to(ct) + self.dt_bias.to(ct))  # (B, T, H)
        if self.dt_limit is not None:
            dt = dt.clamp(self.dt_limit[0], self.dt_limit[1])
        A = -torch.exp(self.A_log.to(ct))
        h0 = state[1].to(ct) if state is not None else None
        xs = xs.to(ct).view(Bsz, T, H, P)
        Bm, Cm = Bm.to(ct).view(Bsz, T, G, N), Cm.to(ct).view(Bsz, T, G, N)
        Dp = self.D.to(ct)
        if T == 1 and h0 is not None:
            y, h = ssd_step(h0, xs[:, 0], dt[:, 0], A, _heads(Bm, H)[:, 0], _heads(Cm, H)[:, 0], Dp)
            y = y[:, None]
        else:
            y, h = ssd_chunked(xs, dt, A, Bm, Cm, Dp, h0, self.chunk_size)
        y = self.norm(y.reshape(Bsz, T, self.d_inner), z)
        new = (conv_state, h.to(x.dtype)) if return_state else None
        return self.out_proj(y.to(x.dtype)), new


def make_mixer(kind: str, d_model: int, s: SSMConfig, norm_eps: float) -> nn.Module:
    return Mamba(d_model, s, norm_eps) if kind == "mamba" else Mamba2(d_model, s, norm_eps)


def reverse_by_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse slots [0, L_b) of each row b of x (B, T, ...) and leave slots >= L_b in place
    (an involution). Flipping the whole padded batch would put right padding first in the
    backward scan; reversing each sequence by its own length keeps real tokens first."""
    T = x.shape[1]
    t = torch.arange(T, device=x.device)[None, :]  # (1, T)
    L = lengths.to(x.device)[:, None]
    idx = torch.where(t < L, L - 1 - t, t)  # (B, T)
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)
