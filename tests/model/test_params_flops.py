"""Parameter counts and FLOPs: analytic formulas agree with built modules and a hand count."""

from __future__ import annotations

import itertools

import pytest

from archlab import build_model, count_params, flops_per_example
from archlab.config import ModelConfig
from tests.helpers import ACTIVATIONS, ARCHS, NORMS, POSITIONS, tiny


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared tensors counted once


@pytest.mark.parametrize("arch,position,norm,activation,bias,tie",
                         list(itertools.product(ARCHS, POSITIONS, NORMS, ACTIVATIONS[::3],
                                                [False, True], [False, True])))
def test_count_params_matches_built_model(arch, position, norm, activation, bias, tie):
    cfg = tiny(arch, position=position, norm=norm, activation=activation, bias=bias,
               tie_embeddings=tie, n_kv_heads=2, n_classes=3, n_tags=5 if bias else 0, embedding_norm=bias,
               type_vocab_size=2 if bias else 0, lm_head_bias=bias, position_offset=2 if bias else 0)
    assert count_params(cfg).total == n_params(build_model(cfg))


def test_count_params_shared_and_unbalanced():
    for cfg in (tiny("encoder-decoder", share_encoder_decoder=True),
                tiny("encoder-decoder", n_encoder_layers=3, n_decoder_layers=1, head_dim=6)):
        p = count_params(cfg)
        model = build_model(cfg)
        assert p.total == n_params(model)
        assert p.encoder == n_params(model.encoder)


def test_hand_count_decoder():
    # GPT-2-like block: layernorm with bias, learned positions, GELU MLP, biases, tied head.
    cfg = ModelConfig(arch="decoder", vocab_size=100, d_model=8, n_heads=2, n_layers=3, d_ff=32,
                      max_seq_len=16, norm="layernorm", position="learned", activation="gelu",
                      bias=True)
    d, ff, V, L, T = 8, 32, 100, 3, 16
    per_block = (
        2 * d  # attn norm
        + d * 3 * d + 3 * d  # qkv
        + d * d + d  # o
        + 2 * d  # mlp norm
        + d * ff + ff  # w_in
        + ff * d + d  # w_out
    )
    hand = V * d + T * d + L * per_block + 2 * d  # tokens + positions + blocks + final norm
    assert count_params(cfg).total == hand == n_params(build_model(cfg))


def test_hand_count_encoder_decoder_gqa_swiglu():
    cfg = ModelConfig(arch="encoder-decoder", vocab_size=50, d_model=8, n_heads=4, n_kv_heads=2,
                      n_encoder_layers=2, n_decoder_layers=1, d_ff=12, norm="rmsnorm",
                      position="t5-relative", rel_buckets=8, activation="swiglu", bias=False)
    d, ff, V, hd = 8, 12, 50, 2
    attn = d * (4 * hd + 2 * 2 * hd) + 4 * hd * d
    mlp = d * 2 * ff + ff * d
    enc_block = d + attn + d + mlp
    dec_block = enc_block + d + attn  # + cross norm + cross-attention
    rel = 8 * 4
    hand = V * d + (2 * enc_block + d + rel) + (1 * dec_block + d + rel)
    assert count_params(cfg).total == hand == n_params(build_model(cfg))


def test_flops_hand_count():
    cfg = ModelConfig(arch="decoder", vocab_size=100, d_model=8, n_heads=2, n_layers=1, d_ff=32,
                      activation="gelu", position="rope")
    T = 4
    matmul = 2 * (8 * 24 + 8 * 8 + 8 * 32 + 32 * 8)  # qkv, o, w_in, w_out per token
    attn = 4 * 8 * (1 + 2 + 3 + 4)  # causal: query i attends i keys
    head = 2 * 8 * 100
    f = flops_per_example(cfg, tgt_len=T)
    assert f.forward == T * matmul + attn + T * head
    assert f.train == 3 * f.forward
    enc = flops_per_example(cfg.replace(arch="encoder", mlm_transform=False), src_len=T)
    assert enc.forward == T * matmul + 4 * 8 * T * T + T * head


def test_flops_prefix_counts_bidirectional_prefix():
    """A prefix-LM passes SDPA a mask tensor: every pair is computed, as in an encoder; a causal
    decoder takes the triangular fast path."""
    cfg = tiny("prefix-lm")
    causal = flops_per_example(cfg, tgt_len=10)
    pre = flops_per_example(cfg, tgt_len=10, prefix_len=6)
    full = flops_per_example(cfg.replace(arch="encoder", mlm_transform=False), src_len=10)
    assert causal.decoder < pre.decoder == full.encoder


def test_encoder_decoder_flops_close_to_decoder_of_half_depth_per_token():
    # T5 paper: an L+L encoder-decoder costs about as much per example as an L-layer decoder
    # over the concatenated sequence; parameters are ~2x.
    ed = ModelConfig(arch="encoder-decoder", d_model=256, n_heads=4, n_layers=4, d_ff=1024)
    dec = ed.replace(arch="decoder")
    f_ed = flops_per_example(ed, src_len=64, tgt_len=64).forward
    f_dec = flops_per_example(dec, tgt_len=128).forward
    assert 0.8 < f_ed / f_dec < 1.3
    assert count_params(ed).non_embedding > 1.8 * count_params(dec).non_embedding


@pytest.mark.parametrize("kind,prefix", [("causal", 0), ("bidirectional", 0), ("prefix", 5)])
@pytest.mark.parametrize("window", [None, 1, 2, 3, 7, 12, 40])
@pytest.mark.parametrize("position", ["rope", "alibi"])
@pytest.mark.parametrize("n", [12, 33])
def test_attention_pairs_follow_the_kernel_build_mask_picks(kind, prefix, window, position, n):
    """attention_pairs makes the choices of the mask builder (as Stack calls it): the banded
    kernel's blocks when it returns a Band, the triangle on the causal fast path, every pair
    when it returns a mask tensor (tests/model/test_flop_counter.py checks the counts
    themselves against FlopCounterMode)."""
    import torch

    from archlab.model.flops import attention_pairs
    from archlab.model.masks import build_mask

    cfg = tiny("decoder", attn_window=window, position=position)
    m = build_mask(kind, n, n, prefix_lengths=torch.tensor([prefix]) if prefix else None,
                   window=window, banded=position == "rope")
    if position == "alibi":
        m = m.with_bias(torch.zeros(1, cfg.n_heads, n, n), n, n)
    if m.band is not None:
        computed = m.band.n_blocks * m.band.block * (2 + m.band.after) * m.band.block
    elif m.is_causal:
        computed = n * (n + 1) // 2
    else:
        computed = n * n
    assert attention_pairs(cfg, n, kind, prefix) == computed


def test_window_flops_in_flops_per_example():
    cfg = tiny("decoder", attn_window=4)
    full, win = flops_per_example(cfg.replace(attn_window=None), tgt_len=32), flops_per_example(cfg, tgt_len=32)
    attn_unit = 4 * cfg.n_heads * cfg.dim_head
    # banded: 8 blocks of 4 queries x 8 keys (the own and the previous block) vs the triangle
    assert full.forward - win.forward == cfg.n_layers * attn_unit * (32 * 33 // 2 - 8 * 4 * 8)
    enc = tiny("encoder-decoder", attn_window=4)
    f = flops_per_example(enc, src_len=32, tgt_len=8)
    g = flops_per_example(enc.replace(attn_window=None), src_len=32, tgt_len=8)
    assert f.encoder < g.encoder  # 8 blocks x 12 keys < 32^2
    # 8 tokens, window 4: the banded kernel would not pay; the dense masked kernel computes all
    # 64 pairs, more than the causal triangle (36) the unwindowed decoder runs
    assert f.decoder - g.decoder == cfg.n_layers * attn_unit * (64 - 36)
