"""Decoding checks: the KV-cache path equals full recomputation (tokens; logits to 1e-5 for
greedy) for every generative family, batched with padding; beam 1 is greedy; sampling is
reproducible under a seed; batching does not change any row."""

from __future__ import annotations

import pytest
import torch

from archlab import build_model
from archlab.errors import ArchlabError, ConfigError
from archlab.generate import GenerationConfig, generate
from archlab.model.presets import resolve_model_config
from archlab.objectives.base import SpecialTokens

V = 48
SP = SpecialTokens(vocab_size=V, first_normal=6)
# different lengths: left padding for decoder prompts, right padding for encoder sources
INPUTS = [[7, 8, 9, 10, 11, 12], [13, 14], [20, 21, 22, 23]]
ARCHS = ["decoder", "prefix-lm", "encoder-decoder"]


def peaky_model(arch: str, position: str = "rope", **over: str):
    """A random tiny model whose outputs vary from token to token (every weight drawn with a
    large spread, norms near identity), so equal outputs mean something."""
    cfg = resolve_model_config(f"{arch}-tiny", [f"vocab_size={V}", f"position={position}",
                                               *(f"{k}={v}" for k, v in over.items())])
    torch.manual_seed(3)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.15 + (1.0 if "norm" in name else 0.0))
    return model


# float64 isolates the cache logic from rounding: any slot, position or mask error shows up
# far above 1e-5 (measured: the two paths agree exactly once cast to fp32). In float32 the
# paths multiply different GEMM shapes (one query vs the whole sequence), which sum in
# different orders; on these deliberately peaky models that moves logits of magnitude ~6 by
# up to 1.2e-5 (measured), so fp32 gets a tolerance of a few ulps of that scale.
LOGIT_TOL = {torch.float64: dict(atol=1e-5, rtol=1e-5), torch.float32: dict(atol=5e-5, rtol=1e-5)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("position", ["rope", "learned", "t5-relative", "alibi"])
def test_greedy_cache_equals_recompute(arch, position, dtype):
    model = peaky_model(arch, position).to(dtype)
    cfg = GenerationConfig(max_new_tokens=10)
    cached = generate(model, INPUTS, cfg, special=SP, output_logits=True)
    full = generate(model, INPUTS, cfg, special=SP, output_logits=True, use_cache=False)
    assert cached.sequences == full.sequences
    assert len(set(map(tuple, cached.sequences))) > 1  # the check is not vacuous
    assert len(cached.logits) == len(full.logits)
    for a, b in zip(cached.logits, full.logits):
        torch.testing.assert_close(a, b, **LOGIT_TOL[dtype])


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_of_one_cache_equals_recompute_on_the_one_row_path(arch, monkeypatch):
    """Batch 1 is where decoding takes the fastest path: one-row products through the blocked
    views the cpu-blocked backend keeps for the call (generate.backends) and single-query head
    splits with grouped K/V heads. Checked in float64 against full recomputation, after
    checking the path is taken."""
    from archlab.generate import backends

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the blocked split, whatever CI has
    one_row = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda w, x: one_row.append(x.shape[-1] == 1) or real_bmm(w, x))
    model = peaky_model(arch, "rope", n_kv_heads=2).to(torch.float64)
    cfg = GenerationConfig(max_new_tokens=10, backend="cpu-blocked")
    cached = generate(model, INPUTS[:1], cfg, special=SP, output_logits=True)
    assert any(one_row)  # some weights took the blocked one-row path
    full = generate(model, INPUTS[:1], cfg, special=SP, output_logits=True, use_cache=False)
    assert cached.sequences == full.sequences
    for a, b in zip(cached.logits, full.logits, strict=True):
        torch.testing.assert_close(a, b, **LOGIT_TOL[torch.float64])
    assert backends._APPLIED == {} and "lm_logits" not in vars(model)  # nothing kept after the call


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layout", ["seq2seq", "lm", "raw"])
def test_beam_cache_equals_recompute_and_batch_equals_single(arch, layout):
    model = peaky_model(arch, "t5-relative" if arch == "encoder-decoder" else "rope")
    cfg = GenerationConfig(strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=8,
                           prompt_layout=layout)
    cached = generate(model, INPUTS, cfg, special=SP)
    full = generate(model, INPUTS, cfg, special=SP, use_cache=False)
    assert cached.sequences == full.sequences
    assert cached.scores == pytest.approx(full.scores, abs=1e-4)
    for i, x in enumerate(INPUTS):  # padding in a batch changes nothing
        alone = generate(model, [x], cfg, special=SP)
        assert alone.sequences == cached.sequences[2 * i : 2 * i + 2]
    for i in range(0, len(cached.scores), 2):  # n-best: best first
        assert cached.scores[i] >= cached.scores[i + 1]


@pytest.mark.parametrize("arch", ARCHS)
def test_beam_of_one_is_greedy(arch):
    model = peaky_model(arch)
    greedy = generate(model, INPUTS, GenerationConfig(max_new_tokens=12), special=SP)
    beam1 = generate(model, INPUTS, GenerationConfig(strategy="beam", num_beams=1, max_new_tokens=12,
                                                     length_penalty=0.0), special=SP)
    assert beam1.sequences == greedy.sequences


def test_greedy_batch_equals_single_with_learned_positions():
    model = peaky_model("decoder", "learned")
    cfg = GenerationConfig(max_new_tokens=9, prompt_layout="raw")
    both = generate(model, INPUTS, cfg, special=SP)
    assert both.sequences == [generate(model, [x], cfg, special=SP).sequences[0] for x in INPUTS]


@pytest.mark.parametrize("arch", ARCHS)
def test_sampling_is_reproducible_with_a_seed(arch):
    model = peaky_model(arch)
    cfg = GenerationConfig(strategy="sample", max_new_tokens=12, seed=11, temperature=1.3, top_k=20,
                           top_p=0.95, num_return_sequences=2)
    a = generate(model, INPUTS, cfg, special=SP)
    b = generate(model, INPUTS, cfg, special=SP)
    c = generate(model, INPUTS, cfg, special=SP, seed=12)
    assert a.sequences == b.sequences
    assert a.sequences != c.sequences
    # top-k 1 is greedy whatever the seed
    g = generate(model, INPUTS, GenerationConfig(max_new_tokens=12), special=SP)
    k1 = generate(model, INPUTS, cfg, special=SP, top_k=1, num_return_sequences=1)
    assert k1.sequences == g.sequences


def test_eos_stops_rows_and_min_new_tokens_delays_it():
    model = peaky_model("decoder")
    out = generate(model, INPUTS, GenerationConfig(max_new_tokens=10), special=SP)
    seq = out.sequences[0]
    eos = seq[2]  # make the third token of row 0 its end
    stopped = generate(model, INPUTS, GenerationConfig(max_new_tokens=10, eos_token_id=eos), special=SP)
    assert stopped.sequences[0] == seq[:2] and stopped.finished[0]
    assert stopped.n_new_tokens == sum(len(s) + f for s, f in zip(stopped.sequences, stopped.finished))
    later = generate(model, INPUTS, GenerationConfig(max_new_tokens=10, eos_token_id=eos, min_new_tokens=5),
                     special=SP)
    assert len(later.sequences[0]) >= 5


def test_sequences_never_exceed_max_new_tokens_nor_position_table():
    model = peaky_model("decoder", "learned", max_seq_len="12")
    out = generate(model, INPUTS, GenerationConfig(max_new_tokens=50, prompt_layout="raw"), special=SP)
    assert all(len(s) <= 12 - len(INPUTS[0]) for s in out.sequences)


def test_bad_options_and_encoder_models_give_clear_errors():
    with pytest.raises(ConfigError, match="generate.strategy"):
        GenerationConfig(strategy="nucleus").validate()
    with pytest.raises(ConfigError, match="generate.top_p"):
        GenerationConfig(top_p=0.0).validate()
    with pytest.raises(ConfigError, match="num_return_sequences"):
        GenerationConfig(strategy="beam", num_beams=2, num_return_sequences=3).validate()
    enc = build_model(resolve_model_config("encoder-tiny", [f"vocab_size={V}"]))
    with pytest.raises(ArchlabError, match="encoder"):
        generate(enc, INPUTS, special=SP)


def test_left_padding_keeps_cache_finite():
    """A left-padded row's pad slots see no real key; their cached keys/values must stay
    finite, or 0 * NaN would corrupt the row's later steps."""
    model = peaky_model("decoder")
    cache = model.new_cache(2, 16)
    ids = torch.tensor([[0, 0, 0, 7, 8], [9, 10, 11, 12, 13]])
    mask = ids != 0
    mask[1] = True
    with torch.inference_mode():
        model.decode(ids, mask, position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0), cache=cache)
    assert torch.isfinite(cache.k[:, :, :, :5]).all() and torch.isfinite(cache.v[:, :, :, :5]).all()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("position,strategy", [("rope", "greedy"), ("learned", "greedy"),
                                               ("t5-relative", "greedy"), ("rope", "beam")])
def test_sliding_window_cache_equals_recompute_past_the_window(arch, position, strategy):
    """Window 3 with prompts of 2-6 tokens and 12 new ones: every step's keys run past the
    window (and left padding sits inside it early on); the static cache, masked to the band,
    gives the tokens and logits of full recomputation."""
    model = peaky_model(arch, position, attn_window=3).to(torch.float64)
    cfg = GenerationConfig(max_new_tokens=12, strategy=strategy, num_beams=3 if strategy == "beam" else 1)
    cached = generate(model, INPUTS, cfg, special=SP, output_logits=strategy == "greedy")
    full = generate(model, INPUTS, cfg, special=SP, output_logits=strategy == "greedy", use_cache=False)
    assert cached.sequences == full.sequences
    no_window = peaky_model(arch, position).to(torch.float64)
    assert generate(no_window, INPUTS, cfg, special=SP).sequences != cached.sequences  # the window acts
    if strategy == "greedy":
        for a, b in zip(cached.logits, full.logits, strict=True):
            torch.testing.assert_close(a, b, **LOGIT_TOL[torch.float64])
    # one row at a time gives what the padded batch gives
    for i, src in enumerate(INPUTS):
        assert generate(model, [src], cfg, special=SP).sequences[0] == cached.sequences[i]
