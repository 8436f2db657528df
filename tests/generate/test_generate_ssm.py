"""Decoding Mamba and hybrid stacks: the per-layer cache (KV + conv/SSM states) equals full
recomputation (tokens; logits in float64), with left-padded batches; padding changes no
row; beam 1 is greedy; beam and sampling agree with and without the cache."""

from __future__ import annotations

import pytest
import torch

from archlab import build_model
from archlab.config import ModelConfig, SSMConfig
from archlab.generate import GenerationConfig, generate
from archlab.model.cache import StackCache
from archlab.objectives.base import SpecialTokens

V = 48
SP = SpecialTokens(vocab_size=V, first_normal=6)
INPUTS = [[7, 8, 9, 10, 11, 12], [13, 14], [20, 21, 22, 23]]  # left padding for decoders
CASES = [("decoder", "MMMM"), ("decoder", "SSSS"), ("decoder", "MSAM"), ("prefix-lm", "MSA"),
         ("prefix-lm", "SSS"), ("encoder-decoder", "MS/SA"), ("encoder-decoder", "AA/MM")]
IDS = [f"{a}-{p}" for a, p in CASES]


def peaky(arch: str, layers: str, dtype=torch.float64):
    n = len(layers.split("/")[0])
    cfg = ModelConfig(arch=arch, vocab_size=V, d_model=32, n_heads=2, n_layers=n, d_ff=64,
                      layers=layers, ssm=SSMConfig(head_dim=16, chunk_size=4, d_state=4),
                      pad_token_id=SP.pad, bos_token_id=SP.bos, eos_token_id=SP.eos)
    torch.manual_seed(3)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "A_log" in name or "dt" in name:
                continue  # keep decays in their usual range
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if "norm" in name else 0.0))
    return model.to(dtype)


@pytest.mark.parametrize("arch,layers", CASES, ids=IDS)
def test_greedy_cache_equals_recompute(arch, layers):
    model = peaky(arch, layers)
    cfg = GenerationConfig(max_new_tokens=10)
    cached = generate(model, INPUTS, cfg, special=SP, output_logits=True)
    full = generate(model, INPUTS, cfg, special=SP, output_logits=True, use_cache=False)
    assert cached.sequences == full.sequences
    assert len(set(map(tuple, cached.sequences))) > 1  # not vacuous
    for a, b in zip(cached.logits, full.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,layers", CASES, ids=IDS)
def test_padded_batch_equals_each_row_alone(arch, layers):
    """Left-padded prompts must not feed pads into the recurrence: each row of the batch
    decodes exactly as it does alone."""
    model = peaky(arch, layers)
    cfg = GenerationConfig(max_new_tokens=8)
    batch = generate(model, INPUTS, cfg, special=SP, output_logits=True)
    for i, x in enumerate(INPUTS):
        alone = generate(model, [x], cfg, special=SP, output_logits=True)
        assert batch.sequences[i] == alone.sequences[0]
        for a, b in zip(batch.logits, alone.logits):
            torch.testing.assert_close(a[i], b[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("arch,layers", CASES, ids=IDS)
def test_beam_and_sampling_cache_equals_recompute(arch, layers):
    model = peaky(arch, layers)
    for cfg in (GenerationConfig(strategy="beam", num_beams=3, max_new_tokens=8, num_return_sequences=2),
                GenerationConfig(strategy="sample", seed=4, max_new_tokens=8, top_k=10)):
        a = generate(model, INPUTS, cfg, special=SP)
        b = generate(model, INPUTS, cfg, special=SP, use_cache=False)
        assert a.sequences == b.sequences
    greedy = generate(model, INPUTS, GenerationConfig(max_new_tokens=8), special=SP)
    beam1 = generate(model, INPUTS, GenerationConfig(strategy="beam", num_beams=1, max_new_tokens=8),
                     special=SP)
    assert beam1.sequences == greedy.sequences


def _left_pad(rows, pad):
    P = max(map(len, rows))
    ids = torch.full((len(rows), P), pad)
    mask = torch.zeros(len(rows), P, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = torch.tensor(r)
        mask[i, P - len(r):] = True
    return ids, mask


@pytest.mark.parametrize("arch,layers", [c for c in CASES if c[0] != "encoder-decoder"],
                         ids=[i for c, i in zip(CASES, IDS) if c[0] != "encoder-decoder"])
def test_fp64_cached_logits_equal_full_forward(arch, layers):
    """Model level, float64, no cast: prefill a left-padded batch, then one token per step;
    every step's logits equal a full forward over everything so far to 1e-10."""
    model = peaky(arch, layers)
    ids, mask = _left_pad(INPUTS, SP.pad)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    B, P = ids.shape
    prefix = torch.full((B,), P) if arch == "prefix-lm" else None
    cache = model.new_cache(B, P + 6)
    assert isinstance(cache, StackCache)
    h = model.decode(ids, mask, prefix_lengths=prefix, position_ids=pos, cache=cache)
    step_logits = [model.lm_logits(h[:, -1])]
    g = torch.Generator().manual_seed(0)
    new = torch.randint(6, V, (B, 5), generator=g)
    for t in range(5):
        p = pos[:, -1:] + t + 1
        h = model.decode(new[:, t:t + 1], position_ids=p, cache=cache)
        step_logits.append(model.lm_logits(h[:, -1]))
    assert cache.state_nbytes() > 0
    for t in range(6):
        all_ids = torch.cat([ids, new[:, :t]], 1)
        all_mask = torch.cat([mask, torch.ones(B, t, dtype=torch.bool)], 1)
        all_pos = torch.cat([pos, pos[:, -1:] + torch.arange(1, t + 1)], 1)
        full = model.decode(all_ids, all_mask, prefix_lengths=prefix, position_ids=all_pos)
        torch.testing.assert_close(step_logits[t], model.lm_logits(full[:, -1]), atol=1e-10, rtol=1e-10)


def test_fp64_encoder_decoder_cached_logits_equal_full_forward():
    model = peaky("encoder-decoder", "MS/SA")
    src = torch.tensor([[7, 8, 9, 10, 2], [13, 14, 2, 0, 0]])
    smask = src != 0
    enc = model.encode(src, smask)
    tgt = torch.tensor([[1, 20, 21, 22, 23, 24], [1, 30, 31, 32, 33, 34]])
    cache = model.new_cache(2, 6)
    outs = []
    for t in range(6):
        h = model.decode(tgt[:, t:t + 1], encoder_out=enc if t == 0 else None, encoder_mask=smask,
                         cache=cache)
        outs.append(h[:, -1])
    full = model.decode(tgt, encoder_out=enc, encoder_mask=smask)
    torch.testing.assert_close(torch.stack(outs, 1), full, atol=1e-10, rtol=1e-10)


def test_cache_reorder_and_repeat_cover_ssm_states():
    model = peaky("decoder", "MSAM")
    ids = torch.tensor([[7, 8, 9], [10, 11, 12]])
    cache = model.new_cache(2, 8)
    model.decode(ids, cache=cache)
    before = [tuple(t.clone() for t in s) for s in cache.ssm if s is not None]
    cache.repeat_interleave(2)
    cache.reorder(torch.tensor([3, 2, 1, 0]))
    after = [s for s in cache.ssm if s is not None]
    assert len(after) == 3 and cache.k.shape[0] == 1  # KV only for the one attention layer
    for (c0, s0), (c1, s1) in zip(before, after):
        assert torch.equal(c1, c0[[1, 1, 0, 0]]) and torch.equal(s1, s0[[1, 1, 0, 0]])
