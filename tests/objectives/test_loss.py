"""The fused, chunked linear cross-entropy equals the plain one in value and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from archlab.objectives.loss import linear_cross_entropy


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [None, 7, 1000])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_matches_plain_cross_entropy(bias, chunk, smoothing):
    N, C, V = 37, 16, 50
    h = torch.randn(N, C, requires_grad=True)
    w = torch.randn(V, C, requires_grad=True)
    b = torch.randn(V, requires_grad=True) if bias else None
    y = torch.randint(0, V, (N,))
    ref = F.cross_entropy(F.linear(h, w, b), y, label_smoothing=smoothing)
    ref.backward(torch.tensor(2.5))
    grads = [h.grad.clone(), w.grad.clone()] + ([b.grad.clone()] if bias else [])
    for t in [h, w] + ([b] if bias else []):
        t.grad = None
    out = linear_cross_entropy(h, w, b, y, chunk=chunk, label_smoothing=smoothing)
    out.backward(torch.tensor(2.5))
    assert_close(out, ref)
    assert_close(h.grad, grads[0])
    assert_close(w.grad, grads[1])
    if bias:
        assert_close(b.grad, grads[2])


def test_no_grad_and_frozen_weight():
    h = torch.randn(5, 4, requires_grad=True)
    w = torch.randn(9, 4)  # frozen head
    y = torch.randint(0, 9, (5,))
    out = linear_cross_entropy(h, w, None, y)
    out.backward()
    assert h.grad is not None and w.grad is None
    with torch.no_grad():
        assert_close(linear_cross_entropy(h, w, None, y), F.cross_entropy(h @ w.t(), y))


def test_bf16_autocast_close_to_fp32():
    h = torch.randn(20, 16, requires_grad=True)
    w = torch.randn(30, 16, requires_grad=True)
    y = torch.randint(0, 30, (20,))
    ref = F.cross_entropy(h @ w.t(), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_cross_entropy(h, w, None, y)
    out.backward()
    assert out.dtype == torch.float32 and h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    assert abs(out.item() - ref.item()) < 0.05 * ref.item()
