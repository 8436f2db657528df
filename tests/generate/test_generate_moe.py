"""Decoding MoE models (decoder, prefix-LM, encoder-decoder, Mamba hybrid): cached decoding
equals recomputation (tokens; logits in float64) with left-padded batches; each row of a
padded batch decodes as it does alone."""

from __future__ import annotations

import pytest
import torch

from archlab import build_model
from archlab.config import ModelConfig, MoEConfig, SSMConfig
from archlab.generate import GenerationConfig, generate
from archlab.objectives.base import SpecialTokens

V = 48
SP = SpecialTokens(vocab_size=V, first_normal=6)
INPUTS = [[7, 8, 9, 10, 11, 12], [13, 14], [20, 21, 22, 23]]
CASES = [("decoder", None, "EE", "topk-softmax"), ("decoder", None, "DE", "sigmoid-bias"),
         ("prefix-lm", None, "ED", "topk-softmax"), ("encoder-decoder", None, "DE/EE", "topk-softmax"),
         ("encoder-decoder", None, "E/E", "switch"), ("decoder", "MA", "EE", "topk-softmax")]
IDS = [f"{a}-{f}-{r}" + (f"-{m}" if m else "") for a, m, f, r in CASES]


def peaky(arch, layers, ffn, router, dtype=torch.float64):
    n = len(ffn.split("/")[0])
    moe = MoEConfig(n_experts=4, top_k=1 if router == "switch" else 2, router=router)
    cfg = ModelConfig(arch=arch, vocab_size=V, d_model=32, n_heads=2, n_layers=n, d_ff=48,
                      layers=layers, ffn=ffn, moe=moe,
                      ssm=SSMConfig(head_dim=16, chunk_size=4, d_state=4) if layers else None,
                      pad_token_id=SP.pad, bos_token_id=SP.bos, eos_token_id=SP.eos)
    torch.manual_seed(3)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "A_log" in name or "dt" in name:
                continue
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if "norm" in name else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("expert_bias"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.2)
    return model.to(dtype)


@pytest.mark.parametrize("arch,layers,ffn,router", CASES, ids=IDS)
def test_greedy_cache_equals_recompute_and_rows_alone(arch, layers, ffn, router):
    model = peaky(arch, layers, ffn, router)
    cfg = GenerationConfig(max_new_tokens=8)
    cached = generate(model, INPUTS, cfg, special=SP, output_logits=True)
    full = generate(model, INPUTS, cfg, special=SP, output_logits=True, use_cache=False)
    assert cached.sequences == full.sequences
    assert len(set(map(tuple, cached.sequences))) > 1  # not vacuous
    for a, b in zip(cached.logits, full.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    for i, x in enumerate(INPUTS):
        alone = generate(model, [x], cfg, special=SP, output_logits=True)
        assert cached.sequences[i] == alone.sequences[0]
        for a, b in zip(cached.logits, alone.logits):
            torch.testing.assert_close(a[i], b[0], atol=1e-10, rtol=1e-10)


def test_fp32_cached_generation_with_beam_equals_recompute():
    model = peaky("decoder", None, "EE", "topk-softmax", dtype=torch.float32)
    for cfg in (GenerationConfig(strategy="beam", num_beams=3, max_new_tokens=6),
                GenerationConfig(strategy="sample", seed=4, max_new_tokens=6, top_k=10)):
        a = generate(model, INPUTS, cfg, special=SP)
        b = generate(model, INPUTS, cfg, special=SP, use_cache=False)
        assert a.sequences == b.sequences
