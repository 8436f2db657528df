"""The mask builder against a brute-force definition."""

from __future__ import annotations

import pytest
import torch

from archlab.model.masks import build_mask


def brute(kind, q_len, k_len, pad, prefix, q_offset, window=None):
    B = pad.shape[0]
    out = torch.zeros(B, 1, q_len, k_len, dtype=torch.bool)
    for b in range(B):
        for i in range(q_len):
            for j in range(k_len):
                qi = q_offset + i
                ok = {"bidirectional": True, "causal": j <= qi,
                      "prefix": j <= qi or j < int(prefix[b])}[kind]
                if window is not None:
                    ok = ok and abs(qi - j) < window
                out[b, 0, i, j] = ok and bool(pad[b, j])
    return out


def dense(m, B, q_len, k_len):
    if m.is_causal:
        return torch.ones(q_len, k_len).tril().bool().expand(B, 1, q_len, k_len)
    if m.mask is None:
        return torch.ones(B, 1, q_len, k_len, dtype=torch.bool)
    return m.mask.expand(B, 1, q_len, k_len)


@pytest.mark.parametrize("kind", ["bidirectional", "causal", "prefix"])
@pytest.mark.parametrize("q_offset,q_len", [(0, 6), (4, 2), (5, 1), (0, 9), (6, 3), (8, 1)])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("window", [None, 1, 2, 3, 5, 9, 20])
def test_mask_matches_definition(kind, q_offset, q_len, padded, window):
    k_len = q_offset + q_len
    pad = torch.ones(3, k_len, dtype=torch.bool)
    if padded:
        pad[0, :3] = False  # left padding (longer than a window of 2: a pad query's band is all pad)
        pad[1, -1] = False  # right padding
    prefix = torch.tensor([3, 1, k_len])
    m = build_mask(kind, q_len, k_len, key_padding=pad if padded else None,
                   prefix_lengths=prefix if kind == "prefix" else None, q_offset=q_offset,
                   window=window)
    got, want = dense(m, 3, q_len, k_len), brute(kind, q_len, k_len, pad, prefix, q_offset, window)
    # real queries see exactly what the definition says; a padding query's row is free (its
    # output is never used) but must allow some key, or SDPA returns NaN for it
    real_q = pad[:, q_offset:].reshape(3, 1, q_len, 1).expand_as(got)
    assert torch.equal(got[real_q], want[real_q])
    assert got.any(-1).all()


def test_pure_causal_uses_sdpa_fast_path():
    m = build_mask("causal", 8, 8)
    assert m.is_causal and m.mask is None
    assert build_mask("bidirectional", 8, 8).mask is None
    assert build_mask("causal", 1, 9, q_offset=8).mask is None  # one decoding step: no mask


def test_bias_folds_into_float_mask():
    bias = torch.zeros(1, 2, 4, 4)
    m = build_mask("causal", 4, 4).with_bias(bias, 4, 4)
    assert m.mask.dtype == torch.float32 and not m.is_causal
    assert (m.mask[0, 0].triu(1) < -1e30).sum() == 6


def test_window_reaching_every_key_is_no_window():
    """A window at least as long as the sequence is full attention, and keeps the fast paths."""
    for kind in ("causal", "bidirectional"):
        for w in (8, 50):
            a, b = build_mask(kind, 8, 8, window=w), build_mask(kind, 8, 8)
            assert (a.mask, a.is_causal) == (b.mask, b.is_causal)
    assert build_mask("causal", 8, 8, window=7).mask is not None
    assert build_mask("causal", 1, 9, q_offset=8, window=8).mask is not None  # one step, window 8 < 9


def test_bad_window():
    with pytest.raises(ValueError, match="window must be >= 1"):
        build_mask("causal", 2, 2, window=0)


def test_bad_kind():
    with pytest.raises(ValueError, match="causal, bidirectional or prefix"):
        build_mask("sideways", 2, 2)
