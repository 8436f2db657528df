"""The banded sliding-window kernel equals SDPA with the dense band mask, and the model takes it
where ``masks.band_blocks`` says (so the FLOP count, which follows that rule, is what runs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import archlab.model.transformer as transformer
from archlab import build_model
from archlab.generate import GenerationConfig, generate
from archlab.model.attention import banded_attention
from archlab.model.masks import band_blocks, build_mask
from archlab.objectives.base import SpecialTokens
from tests.helpers import tiny

V = 61


@pytest.mark.parametrize("kind", ["causal", "bidirectional", "prefix"])
@pytest.mark.parametrize("T,w", [(24, 4), (33, 4), (40, 5), (37, 3)])
@pytest.mark.parametrize("padding", [None, "right", "left"])
@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_banded_equals_masked_sdpa(kind, T, w, padding, n_kv):
    """Outputs at real queries within 1e-6 and gradients within 1e-5 of SDPA with the dense
    mask, for lengths that are and are not multiples of the window, GQA/MQA, both paddings
    and per-row prefixes; every row (pad rows and the padded last block) finite."""
    torch.manual_seed(0)
    B, H, hd = 3, 4, 8
    kp = torch.ones(B, T, dtype=torch.bool)
    if padding == "right":
        kp[1, -7:] = False
    elif padding == "left":
        kp[0, :6] = False
    prefix = torch.tensor([5, 1, T]) if kind == "prefix" else None
    pad = kp if padding else None
    banded = build_mask(kind, T, T, key_padding=pad, prefix_lengths=prefix, window=w, banded=True)
    dense = build_mask(kind, T, T, key_padding=pad, prefix_lengths=prefix, window=w)
    assert banded.band is not None and banded.mask is None
    q = torch.randn(B, H, T, hd, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, n_kv, T, hd, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, n_kv, T, hd, dtype=torch.float64, requires_grad=True)
    y = banded_attention(q, k, v, banded.band)  # (B, T, H * hd)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=dense.mask if dense.mask is not None else None,
                                         is_causal=dense.is_causal, enable_gqa=n_kv != H)
    ref = ref.transpose(1, 2).reshape(B, T, H * hd)
    assert torch.isfinite(y).all()
    real = kp[..., None].expand_as(y)
    assert (y - ref)[real].abs().max() < 1e-6
    g = torch.randn_like(y) * real  # loss on real queries only
    grads = torch.autograd.grad((y * g).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((ref * g).sum(), (q, k, v))
    for a, b in zip(grads, grads_ref, strict=True):
        assert (a - b).abs().max() < 1e-5


def test_band_blocks_rule():
    """Banded where it computes at most half the pairs of the dense kernel: causal from T = 4w
    (2 key blocks), bidirectional and prefix from T = 6w (3 key blocks); never when the window
    covers the sequence."""
    assert band_blocks("causal", 16, 4) == 0 and band_blocks("causal", 15, 4) is None
    assert band_blocks("bidirectional", 24, 4) == 1 and band_blocks("bidirectional", 23, 4) is None
    assert band_blocks("prefix", 24, 4) == 1
    assert band_blocks("causal", 16, 16) is None and band_blocks("causal", 16, None) is None
    # a decoding step (queries at an offset) and cached keys always use the dense mask
    assert build_mask("causal", 1, 40, q_offset=39, window=4, banded=True).band is None
    assert build_mask("causal", 40, 40, window=4, banded=True).band is not None


def _outputs(model, arch, ids, mask, prefix):
    if arch == "encoder":
        return model.encode(ids, mask)
    if arch == "encoder-decoder":
        return model(ids, mask, decoder_input_ids=ids, decoder_attention_mask=mask, return_logits=False).hidden
    return model.decode(ids, mask, prefix_lengths=prefix)


@pytest.mark.parametrize("arch", ["encoder", "decoder", "prefix-lm", "encoder-decoder"])
@pytest.mark.parametrize("extra", [{}, {"layers": "AM", "ssm": {"d_state": 4}}, {"position": "alibi"}],
                         ids=["attention", "hybrid", "alibi"])
def test_model_takes_the_banded_path_and_matches_dense(arch, extra, monkeypatch):
    """Each family with a window of 4 over 36 tokens (right padding, per-row prefixes): the
    stack builds a Band (none with a position bias, whose T x T bias needs the dense mask),
    and its outputs at real positions equal those of the same model forced onto the dense
    masked kernel."""
    torch.manual_seed(0)
    model = build_model(tiny(arch, attn_window=4, **extra)).eval()
    T = 36
    ids = torch.randint(3, V, (3, T))
    mask = torch.arange(T)[None, :] < torch.tensor([T, 29, 20])[:, None]
    prefix = torch.tensor([9, 30, 4]) if arch == "prefix-lm" else None
    seen = []
    real_build = transformer.build_mask

    def spy(*a, **kw):
        m = real_build(*a, **kw)
        seen.append(m.band is not None)
        return m

    monkeypatch.setattr(transformer, "build_mask", spy)
    with torch.no_grad():
        banded = _outputs(model, arch, ids, mask, prefix)
    assert any(seen) == ("position" not in extra)
    monkeypatch.setattr(transformer, "build_mask", lambda *a, **kw: real_build(*a, **{**kw, "banded": False}))
    with torch.no_grad():
        dense = _outputs(model, arch, ids, mask, prefix)
    real = mask[..., None].expand_as(dense)
    assert (banded - dense)[real].abs().max() < 1e-6


@pytest.mark.parametrize("arch", ["decoder", "prefix-lm", "encoder-decoder"])
def test_cached_decoding_after_a_banded_prompt_equals_recomputation(arch):
    """A 30-token prompt read by the banded kernel (window 4), then 12 cached steps (dense
    masks over the cache): the tokens and logits of recomputing every step from scratch."""
    torch.manual_seed(0)
    model = build_model(tiny(arch, attn_window=4)).to(torch.float64).eval()
    sp = SpecialTokens(vocab_size=V, first_normal=8)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(8, V, (n,), generator=g).tolist() for n in (30, 26)]
    cfg = GenerationConfig(max_new_tokens=12, strategy="greedy", prompt_layout="raw")
    cached = generate(model, prompts, cfg, special=sp, output_logits=True)
    full = generate(model, prompts, cfg, special=sp, output_logits=True, use_cache=False)
    assert cached.sequences == full.sequences
    for a, b in zip(cached.logits, full.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)

