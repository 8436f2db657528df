"""Cross-entropy fused with the vocabulary projection, computed in chunks.

A plain ``cross_entropy(hidden @ W.T, y)`` materialises (N, V) logits, their log-softmax,
and in backward a zero-filled (N, V) gradient: for N = 2048 tokens and V = 8192 that is
several 64 MB tensors per step, and on a CPU the time goes to memory traffic rather than
arithmetic. Here the projection, the loss and its gradient are computed for ``chunk`` rows
at a time, and the gradients with respect to the hidden states, the weight and the bias are
accumulated during the forward pass (the loss is a scalar, so its gradient only needs scaling
in backward). This is the approach of Liger Kernel's fused linear cross-entropy (Hsu et al.
2024) and of Cut Cross-Entropy (Wijmans et al. 2024), written with plain PyTorch ops.
"""

from __future__ import annotations

import torch

# about 8 MB of fp32 logits per chunk: large enough for efficient GEMMs, small enough for cache
_CHUNK_ELEMENTS = 2**21


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, target, chunk, smoothing=0.0):  # noqa: ANN001, ANN205
        # h: (N, C), weight: (V, C), bias: (V,) or None, target: (N,) -> mean loss (scalar)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        cd = _compute_dtype(h)
        N = h.shape[0]
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(cd)
            b = bias.to(torch.float32) if bias is not None else None
            grad_h = torch.empty_like(h) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            # one logits buffer reused by every chunk: no allocation (and no page faults) per chunk
            buf = torch.empty(min(chunk, N), w.shape[0], dtype=cd, device=h.device)
            for s in range(0, N, chunk):
                hc = h[s : s + chunk].to(cd)  # (n, C)
                tc = target[s : s + chunk]
                logits = torch.mm(hc, w.t(), out=buf[: len(hc)]).float()  # (n, V)
                if b is not None:
                    logits += b
                lse = torch.logsumexp(logits, dim=-1)  # (n,)
                nll = lse - logits.gather(1, tc[:, None]).squeeze(1)
                if smoothing:
                    # label smoothing (Szegedy et al. 2016): target = (1 - e) onehot + e / V
                    nll = (1.0 - smoothing) * nll + smoothing * (lse - logits.mean(-1))
                total += nll.sum()
                if not (need_h or need_w or need_b):
                    continue
                # d loss / d logits = (softmax - onehot) / N, computed in place over the logits
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(len(tc), device=tc.device), tc] -= 1.0 - smoothing
                if smoothing:
                    probs -= smoothing / probs.shape[1]
                probs.div_(N)
                if need_b:
                    grad_b += probs.sum(0)
                g = probs.to(cd)
                if need_h:
                    grad_h[s : s + chunk] = (g @ w).to(h.dtype)
                if need_w:
                    if cd == torch.float32:
                        grad_w.addmm_(g.t(), hc)  # (V, C), accumulated without a temporary
                    else:
                        grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total / N

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(w_dtype) if grad_w is not None else None
        gb = (grad_b * grad_out).to(b_dtype) if grad_b is not None else None
        return gh, gw, gb, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    chunk: int | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``target``.

    hidden: (N, C); weight: (V, C); bias: (V,) or None; target: (N,) class ids (no ignored
    entries: select the labelled rows first). Same value and gradients as
    ``F.cross_entropy(F.linear(hidden, weight, bias).float(), target, label_smoothing=...)`` up
    to float rounding.
    """
    if chunk is None:
        chunk = max(16, _CHUNK_ELEMENTS // weight.shape[0])
    return _FusedLinearCrossEntropy.apply(hidden, weight, bias, target, chunk, float(label_smoothing))
