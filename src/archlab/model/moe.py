"""Mixture-of-experts feed-forward (ffn letter ``E`` in ``model.ffn``; options ``model.moe``).

Each token is sent by a router to k of E expert feed-forward networks and gets their outputs
weighted by gate values (Shazeer et al. 2017; GShard, Lepikhin et al. 2021; Switch, Fedus et
al. 2022; Mixtral, Jiang et al. 2024). Experts are stacked 3-D parameters (not a ModuleList:
data parallelism then never sees parameters without gradients), in nn.Linear's (out, in)
layout per expert, with the model's activation (gated ones keep [gate; up] fused in ``w_in``
as :class:`~archlab.model.layers.MLP` does):

    w_in:  (E, F or 2F, C)     w_out: (E, C, F)

Computation (dropless by default, as Mixtral and MegaBlocks): the (token, slot) assignments
are sorted by expert id (stable), each expert multiplies its contiguous group of rows (a
grouped matmul, ``torch._grouped_mm``, on CUDA, and on CPU in training steps; otherwise a loop
over the experts that received tokens), outputs are scaled by their gates and summed back per
token with ``index_add_``. At batch 1 only the chosen experts' weights are read. On CPU the
grouped matmul was measured slower than the loop with an earlier torch (1.9-3.1 s against
1.55-1.75 s for 20 products of 2048 x 128 x 512 over 8 experts); with torch 2.13 the expert
forward + backward of bench/moe.py's layer (2048 rows, 8 experts, C 256, SwiGLU width 512,
1 thread, machine under load) took 114 ms grouped against 146 ms looped (best of 15
interleaved; medians 121 / 153 ms) and a padded ``bmm`` over experts 156 ms, so CPU training
takes the grouped kernel (:data:`CPU_TRAIN_EXPERTS`; ``python bench/moe.py --experts``
re-measures). Both paths compute the same products (equal outputs and gradients).

Capacity (``capacity_factor``) is a training-time device, applied per sequence: in training
each expert takes at most ``ceil(cf * T_b * k / E)`` assignments from sequence b, T_b being
that sequence's number of real tokens (pads take no slot and do not count in T_b); within a
sequence first choices of all its tokens have priority over second choices (GShard Sec. 2.2:
one sequence is one "group"), then token order. Dropped assignments contribute nothing (the
residual carries the token) and are counted. Per sequence, an example's output does not
depend on the other examples of its batch (nor on how a global batch is split into
micro-batches or ranks). Evaluation and inference (``eval()``) are dropless, as NLLB-MoE and
fairseq's MoE at their default ``moe_eval_capacity_token_fraction`` of 1.0 (an expert may take
every token) and MegaBlocks / Mixtral always: per-sequence capacity over a sequence's length
cannot be applied to cached decoding, which sees one token at a time and not the final length
(HF SwitchTransformers keeps its fixed per-sequence ``expert_capacity`` at evaluation, so its
cached decoding and teacher forcing differ whenever a sequence overflows). Dropless evaluation
makes teacher forcing and cached decoding equal; expert health in evaluation still counts the
assignments training's capacity would drop on those batches (``dropped_fraction``).

Router in fp32. Auxiliary losses (the model returns them next to the logits; objectives add
them to the loss): Switch load balancing ``E * sum_i f_i P_i`` (f_i: fraction of
assignments to expert i, summing to k; P_i: mean router probability; as transformers'
``load_balancing_loss_func`` on one layer) and the router z-loss ``mean(logsumexp(logits)^2)``
(ST-MoE, Zoph et al. 2022, eq. 5). The sigmoid-bias router (DeepSeek-V3, aux-loss-free
balancing, Wang et al. 2024) keeps a per-expert bias buffer that only changes which experts
are chosen; :func:`update_balancing_bias` moves it after each optimizer step.

Padding tokens (``valid`` False) are not routed: they take no capacity, count in no statistic
and get a zero output.

Expert dropout (``model.dropout`` on the expert hidden activations, in training) draws one
mask for all the (M, F) grouped rows, then the loop slices it per expert: the grouped-matmul
path and the loop path drop the same entries from the same generator state.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from archlab.config import ModelConfig
from archlab.model.layers import MLP, activation_fn

# The routed experts' products on CPU while autograd records (training steps): one grouped
# matmul (torch._grouped_mm, what torch.nn.functional.grouped_mm calls; fp32 / bf16) or the
# per-expert loop. Measured with bench/moe.py --experts (module docstring); evaluation and
# decoding (no autograd) keep the loop, whose per-expert products decoding backends
# (archlab.generate.backends) replace on few rows.
CPU_TRAIN_EXPERTS: Literal["grouped_mm", "loop"] = "grouped_mm"


@contextlib.contextmanager
def cpu_train_experts(kind: Literal["grouped_mm", "loop"]) -> Iterator[None]:
    """Within this block CPU training steps run the experts as ``kind`` (benches, tests)."""
    global CPU_TRAIN_EXPERTS
    before, CPU_TRAIN_EXPERTS = CPU_TRAIN_EXPERTS, kind
    try:
        yield
    finally:
        CPU_TRAIN_EXPERTS = before


def _use_grouped_mm(x: torch.Tensor) -> bool:
    if x.dtype not in (torch.bfloat16, torch.float32) or not hasattr(torch, "_grouped_mm"):
        return False
    if x.is_cuda:
        return True
    # (not under CPU autocast: _grouped_mm would run in fp32 where the loop's F.linear runs bf16)
    return (x.device.type == "cpu" and CPU_TRAIN_EXPERTS == "grouped_mm" and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu"))


class MoE(nn.Module):
    """Routed experts (+ optional shared experts) replacing one layer's dense MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m = cfg.moe_cfg
        self.n_experts, self.top_k, self.router_kind = m.n_experts, m.top_k, m.router
        self.norm_topk = m.norm_topk
        self.capacity_factor = m.capacity_factor
        self.jitter = m.router_jitter
        self.bias_rate = m.bias_update_rate
        self.d_ff = m.d_expert(cfg.d_ff)
        self.gated = cfg.gated
        self.act = activation_fn(cfg.activation)
        E, C, Fd = m.n_experts, cfg.d_model, self.d_ff
        g = 2 if self.gated else 1
        self.router = nn.Linear(C, E, bias=False)
        self.w_in = nn.Parameter(torch.empty(E, g * Fd, C))
        self.w_out = nn.Parameter(torch.empty(E, C, Fd))
        self.b_in = nn.Parameter(torch.zeros(E, g * Fd)) if cfg.bias else None
        self.b_out = nn.Parameter(torch.zeros(E, C)) if cfg.bias else None
        self.shared = (MLP(cfg.replace(d_ff=m.n_shared_experts * Fd, dropout=0.0))
                       if m.n_shared_experts else None)
        if m.router == "sigmoid-bias":
            # selection-only bias (DeepSeek-V3 "e_score_correction_bias"): saved in checkpoints,
            # never trained by the optimizer
            self.register_buffer("expert_bias", torch.zeros(E))
        else:
            self.expert_bias = None
        # assignments per expert since the last bias update (training forwards)
        self.register_buffer("pending_load", torch.zeros(E), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.aux: dict[str, torch.Tensor] | None = None  # last forward's losses and counts
        self.health: dict[str, torch.Tensor] | None = None  # accumulated stats (evaluation)

    def reset_parameters(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.router.weight, 0.0, std)
        nn.init.normal_(self.w_in, 0.0, std)
        nn.init.normal_(self.w_out, 0.0, out_std)
        for b in (self.b_in, self.b_out):
            if b is not None:
                nn.init.zeros_(b)
        if self.expert_bias is not None:
            self.expert_bias.zero_()
        self.pending_load.zero_()

    # ---- routing ----------------------------------------------------------------------------
    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (N, C) -> router logits (N, E) in fp32 (fp64 for fp64 models), probabilities
        used by the balancing loss (N, E), gates (N, k) and chosen experts (N, k)."""
        rd = torch.promote_types(x.dtype, torch.float32)  # at least fp32 (bf16 models: fp32)
        h = x.to(rd)
        if self.training and self.jitter > 0:  # Switch: multiplicative jitter on the router input
            h = h * torch.empty_like(h).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(h, self.router.weight.to(rd))  # (N, E)
        if self.router_kind == "sigmoid-bias":
            scores = torch.sigmoid(logits)
            # the bias decides which experts are chosen; the gates are the unbiased scores
            _, idx = torch.topk(scores + self.expert_bias, self.top_k, dim=-1)
            gates = scores.gather(-1, idx)
            gates = gates / gates.sum(-1, keepdim=True).clamp(min=1e-20)
            probs = scores / scores.sum(-1, keepdim=True).clamp(min=1e-20)  # DeepSeek-V3 eq. 19
        else:
            probs = torch.softmax(logits, dim=-1)
            gates, idx = torch.topk(probs, self.top_k, dim=-1)
            # Mixtral renormalises over the k (k=1: 1.0); Jamba (norm_topk false) and Switch
            # gate by the probabilities themselves
            if self.router_kind == "topk-softmax" and self.norm_topk:
                gates = gates / gates.sum(-1, keepdim=True)
        return logits, probs, gates, idx

    def capacity(self, n_tokens: int) -> int | None:
        """Slots per expert for one sequence of ``n_tokens`` real tokens (None: dropless)."""
        if self.capacity_factor is None:
            return None
        return max(1, math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts))

    def _within_capacity(self, expert: torch.Tensor, seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """expert, seq: (k*N,) expert and sequence of each assignment in slot-major order (all
        first choices in token order, then all second choices, ...); lengths: (B,) real
        tokens per sequence -> (k*N,) bool, True for the assignments each (sequence, expert)
        pair keeps within its :meth:`capacity` of that sequence's length."""
        E, B = self.n_experts, lengths.shape[0]
        # capacity per sequence in float64, the same operations as capacity() on a Python int
        cap = torch.ceil(self.capacity_factor * lengths.to(torch.float64) * self.top_k / E).clamp(min=1)
        group = seq * E + expert  # (k*N,) one group per (sequence, expert)
        # a stable sort keeps the slot-major priority within each group
        order = torch.argsort(group, stable=True)
        sizes = torch.bincount(group, minlength=B * E)
        starts = torch.cumsum(sizes, 0) - sizes  # (B*E,) first sorted slot per group
        rank = torch.empty_like(group)
        rank[order] = torch.arange(group.shape[0], device=group.device) - starts[group[order]]
        return rank < cap.to(rank.device)[seq]

    # ---- experts ----------------------------------------------------------------------------
    def _act(self, h: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            return self.act(gate) * up
        return self.act(h)

    def _dropout_mask(self, xs: torch.Tensor) -> torch.Tensor | None:
        """Training: the (M, F) expert-dropout mask of all grouped rows (0 or 1/(1-p)), drawn
        in fp32 whatever the compute dtype, so both expert paths draw the same; else None."""
        p = self.dropout.p
        if not self.training or p == 0 or xs.shape[0] == 0:
            return None
        return F.dropout(torch.ones(xs.shape[0], self.d_ff, device=xs.device), p, training=True)

    def experts(self, xs: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """xs: (M, C) rows grouped by expert (counts[e] rows for expert e, in order) ->
        (M, C) expert outputs (before gating)."""
        if xs.shape[0] == 0:
            return xs.new_zeros(0, xs.shape[1])
        mask = self._dropout_mask(xs)  # (M, F) or None
        if _use_grouped_mm(xs):
            offs = torch.tensor(counts, device=xs.device).cumsum(0).to(torch.int32)
            h = torch._grouped_mm(xs, self.w_in.transpose(-2, -1), offs=offs)
            if self.b_in is not None:
                h = h + self.b_in.repeat_interleave(torch.tensor(counts, device=xs.device), dim=0,
                                                    output_size=xs.shape[0])
            h = self._act(h)  # (M, F)
            if mask is not None:
                h = h * mask.to(h.dtype)
            y = torch._grouped_mm(h, self.w_out.transpose(-2, -1), offs=offs)
            if self.b_out is not None:
                y = y + self.b_out.repeat_interleave(torch.tensor(counts, device=xs.device), dim=0,
                                                     output_size=xs.shape[0])
            return y
        outs = []
        start = 0
        for e, c in enumerate(counts):
            if c == 0:
                continue
            xe = xs[start:start + c]  # (c, C)
            h = self._act(self.expert_linear(xe, self.w_in[e], None if self.b_in is None else self.b_in[e]))
            if mask is not None:  # this expert's rows of the one mask the grouped path uses
                h = h * mask[start:start + c].to(h.dtype)
            start += c
            outs.append(self.expert_linear(h, self.w_out[e], None if self.b_out is None else self.b_out[e]))
        if not outs:
            return xs.new_zeros(0, xs.shape[1])
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _one_token(self, x: torch.Tensor, gates: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """x: (1, C); gates, idx: (k,) -> (1, C). Only the chosen experts' weights are read;
        summed in increasing expert order, as the grouped path does."""
        chosen = sorted(zip(idx.tolist(), range(len(gates))))
        out = None
        for e, j in chosen:
            h = self._act(self.expert_linear(x, self.w_in[e], None if self.b_in is None else self.b_in[e]))
            if self.training:
                h = self.dropout(h)
            y = self.expert_linear(h, self.w_out[e], None if self.b_out is None else self.b_out[e])
            y = y * gates[j].to(y.dtype)
            out = y if out is None else out + y
        if self.shared is not None:
            out = out + self.shared(x)
        return out

    @staticmethod
    def expert_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """One expert's product (x: (n, K), w: (N, K) -> (n, N)). Plain ``F.linear``; a decoding
        backend (``archlab.generate.backends``) may replace it for the length of a call."""
        return F.linear(x, w, b)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, C) normed hidden states; valid: (B, T) real tokens or None -> (B, T, C)."""
        B, T, C = x.shape
        flat = x.reshape(B * T, C)
        sel = None
        if valid is not None:
            sel = valid.reshape(-1).nonzero().squeeze(1)  # (N,) positions of real tokens
            flat = flat.index_select(0, sel)
        N, k, E = flat.shape[0], self.top_k, self.n_experts
        logits, probs, gates, idx = self.route(flat)
        # losses and counts are not needed while generating (inference mode, no health count)
        record = self.health is not None or not torch.is_inference_mode_enabled()
        if N == 1:  # one token (batch-1 decoding): its k experts directly, no grouping
            out = self._one_token(flat, gates[0], idx[0])
            if record:
                counts_t = torch.bincount(idx.reshape(-1), minlength=E)
                self._record(logits, probs, counts_t, counts_t)  # k <= E slots: nothing drops
            else:
                self.aux = None
            if sel is not None:
                out = torch.zeros_like(x.reshape(B * T, C)).index_copy_(0, sel, out)
            return out.view(B, T, C)
        # assignments in slot-major order: all first choices, then all second choices (the
        # capacity priority); a stable sort by expert keeps that order within each expert
        expert = idx.t().reshape(-1)  # (k*N,)
        order = torch.argsort(expert, stable=True)
        counts_t = torch.bincount(expert, minlength=E)  # (E,) assignments per expert
        kept_t = run_t = counts_t
        # capacity drops in training; evaluation is dropless but its health counts what
        # training's capacity would drop (module docstring)
        if self.capacity_factor is not None and (self.training or self.health is not None):
            if sel is not None:
                seq, lengths = sel // T, valid.sum(1)  # (N,) sequence of each real token, (B,)
            else:
                seq = torch.arange(N, device=x.device) // T
                lengths = torch.full((B,), T, device=x.device)
            keep = self._within_capacity(expert, seq.repeat(k), lengths)  # (k*N,)
            kept_t = torch.bincount(expert[keep], minlength=E)
            if self.training:
                order = order[keep[order]]
                run_t = kept_t
        token = order % N if N else order  # (M,) token of each kept assignment
        gate = gates.t().reshape(-1)[order]  # (M,) fp32
        counts = run_t.tolist()
        y = self.experts(flat.index_select(0, token), counts)  # (M, C)
        y = y * gate[:, None].to(y.dtype)
        # summed in the residual stream's dtype: under CPU/GPU autocast the experts' products
        # come out bf16 while ``flat`` is fp32 (index_add_ takes one dtype); fp32 also keeps the
        # k contributions' sum exact to the residual's precision, as a dense FFN's output is added
        out = torch.zeros_like(flat).index_add_(0, token, y.to(flat.dtype))  # (N, C)
        if self.shared is not None:
            out = out + self.shared(flat)
        if record:
            self._record(logits, probs, counts_t, kept_t)
        else:
            self.aux = None
        if sel is not None:
            out = torch.zeros_like(x.reshape(B * T, C)).index_copy_(0, sel, out)
        return out.view(B, T, C)

    # ---- losses and statistics ------------------------------------------------------------
    def _record(self, logits: torch.Tensor, probs: torch.Tensor, counts: torch.Tensor,
                kept: torch.Tensor) -> None:
        N = logits.shape[0]
        if N == 0:
            self.aux = None
            return
        f = counts.to(probs.dtype) / N  # (E,) assignments per token, sums to k
        balance = self.n_experts * (f * probs.mean(0)).sum()
        z = torch.logsumexp(logits, dim=-1).pow(2).mean()
        self.aux = {"balance": balance, "z": z}
        if self.training and self.expert_bias is not None:
            with torch.no_grad():
                self.pending_load += counts.to(self.pending_load.dtype)
        if self.health is not None:
            with torch.no_grad():
                p = torch.softmax(logits, -1) if self.router_kind != "sigmoid-bias" else probs
                ent = -(p * p.clamp(min=1e-20).log()).sum(-1).sum()
                h = self.health
                h["counts"] += counts.to(h["counts"].dtype)
                h["dropped"] += (counts - kept).sum().to(h["dropped"].dtype)
                h["tokens"] += N
                h["entropy"] += ent.to(h["entropy"].dtype)
                h["balance"] += balance.detach().double() * N
                h["z"] += z.detach().double() * N

    def start_health(self) -> None:
        dev = self.w_in.device
        self.health = {"counts": torch.zeros(self.n_experts, dtype=torch.float64, device=dev),
                       **{k: torch.zeros((), dtype=torch.float64, device=dev)
                          for k in ("dropped", "tokens", "entropy", "balance", "z")}}

    @torch.no_grad()
    def update_bias(self) -> None:
        """DeepSeek-V3 aux-loss-free balancing: b_i += rate * sign(mean load - load_i), then
        re-centred (torchtitan), using the load counted since the last update."""
        if self.expert_bias is None:
            return
        load = self.pending_load
        if load.sum() > 0:
            self.expert_bias += self.bias_rate * torch.sign(load.mean() - load)
            self.expert_bias -= self.expert_bias.mean()
        load.zero_()


def moe_layers(model: nn.Module) -> Iterator[tuple[str, MoE]]:
    for name, m in model.named_modules():
        if isinstance(m, MoE):
            yield name, m


def update_balancing_bias(model: nn.Module) -> None:
    """After each optimizer step: move the sigmoid-bias routers' biases toward equal load."""
    for _, m in moe_layers(model):
        m.update_bias()


def start_health(model: nn.Module) -> None:
    for _, m in moe_layers(model):
        m.start_health()


def collect_health(model: nn.Module) -> dict:
    """Expert health since :func:`start_health` (and stop counting): per layer tokens per
    expert, max violation (max load - mean) / mean, dead experts, mean router entropy
    (nats), dropped fraction; plus summaries over layers."""
    layers = {}
    for name, m in moe_layers(model):
        h, m.health = m.health, None
        if h is None or h["tokens"] == 0:
            continue
        counts = h["counts"]
        mean = counts.mean()
        n_tok = float(h["tokens"])
        layers[name] = {
            "tokens_per_expert": [int(c) for c in counts.tolist()],
            "max_violation": float((counts.max() - mean) / mean) if mean > 0 else 0.0,
            "dead_experts": int((counts == 0).sum()),
            "router_entropy": float(h["entropy"]) / n_tok,
            "dropped_fraction": float(h["dropped"]) / float(counts.sum()) if counts.sum() > 0 else 0.0,
            "balance_loss": float(h["balance"]) / n_tok,
            "z_loss": float(h["z"]) / n_tok,
        }
    if not layers:
        return {}
    vals = list(layers.values())
    return {
        "max_violation": max(v["max_violation"] for v in vals),
        "dead_experts": sum(v["dead_experts"] for v in vals),
        "router_entropy": sum(v["router_entropy"] for v in vals) / len(vals),
        "dropped_fraction": sum(v["dropped_fraction"] for v in vals) / len(vals),
        "layers": layers,
    }
