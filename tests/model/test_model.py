"""Shapes, causality by perturbation, padding invariance, KV cache, training for every family."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.testing import assert_close

from archlab import build_model
from archlab.info import sanity_losses
from archlab.model import get_preset
from tests.helpers import ACTIVATIONS, ARCHS, NORMS, POSITIONS, tiny

V = 61


def run(model, ids, mask=None, *, src=None, src_mask=None, prefix=None, positions=None):
    """Per-position outputs of the stack a family is judged by: (B, T, C)."""
    arch = model.cfg.arch
    if arch == "encoder":
        return model.encode(ids, mask, position_ids=positions)
    if arch == "encoder-decoder":
        enc = model.encode(src, src_mask)
        return model.decode(ids, mask, encoder_out=enc, encoder_mask=src_mask, position_ids=positions)
    return model.decode(ids, mask, prefix_lengths=prefix, position_ids=positions)


# ---------------------------------------------------------------------------------------------
# shapes: every family x position x norm x activation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "arch,position,norm,activation", list(itertools.product(ARCHS, POSITIONS, NORMS, ACTIVATIONS))
)
def test_shapes(arch, position, norm, activation):
    cfg = tiny(arch, position=position, norm=norm, activation=activation, n_layers=1, d_model=16,
               n_heads=2, d_ff=24, n_classes=3)
    model = build_model(cfg).eval()
    B, S, T = 2, 7, 5
    src = torch.randint(0, V, (B, S))
    tgt = torch.randint(0, V, (B, T))
    if arch == "encoder-decoder":
        out = model(src, decoder_input_ids=tgt)
        assert out.logits.shape == (B, T, V)
        assert out.encoder_hidden.shape == (B, S, 16)
    else:
        out = model(src, prefix_lengths=torch.tensor([3, 4]) if arch == "prefix-lm" else None)
        assert out.logits.shape == (B, S, V)
        assert out.hidden.shape == (B, S, 16)
    assert torch.isfinite(out.logits).all()
    assert model.classify(src).shape == (B, 3)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_shapes_options(arch, norm_position):
    kw = dict(norm_position=norm_position, n_kv_heads=2, bias=True, tie_embeddings=False,
              embedding_norm=True, type_vocab_size=2 if arch == "encoder" else 0, head_dim=6,
              lm_head_bias=True)
    if arch == "encoder-decoder":
        kw.update(n_encoder_layers=3, n_decoder_layers=1)
    model = build_model(tiny(arch, **kw)).eval()
    x = torch.randint(0, V, (3, 9))
    out = model(x, decoder_input_ids=x[:, :4] if arch == "encoder-decoder" else None)
    assert out.logits.shape[-1] == V and torch.isfinite(out.logits).all()


def test_shared_encoder_decoder_shares_weights():
    model = build_model(tiny("encoder-decoder", share_encoder_decoder=True))
    for eb, db in zip(model.encoder.blocks, model.decoder.blocks):
        assert eb.attn.qkv.weight is db.attn.qkv.weight
        assert eb.mlp.w_in.weight is db.mlp.w_in.weight
    unshared = build_model(tiny("encoder-decoder"))
    n = sum(p.numel() for p in model.parameters())
    m = sum(p.numel() for p in unshared.parameters())
    assert n < m


# ---------------------------------------------------------------------------------------------
# causality by perturbation
# ---------------------------------------------------------------------------------------------
def _perturb(ids, t):
    out = ids.clone()
    out[:, t] = (out[:, t] + 7) % V
    return out


@pytest.mark.parametrize("position", POSITIONS)
def test_decoder_is_causal(position):
    model = build_model(tiny("decoder", position=position)).eval()
    ids = torch.randint(0, V, (2, 12))
    t = 6
    a, b = run(model, ids), run(model, _perturb(ids, t))
    assert_close(a[:, :t], b[:, :t])  # the past never sees a later token
    assert not torch.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("position", POSITIONS)
def test_encoder_is_bidirectional(position):
    model = build_model(tiny("encoder", position=position)).eval()
    ids = torch.randint(0, V, (2, 12))
    t = 8
    a, b = run(model, ids), run(model, _perturb(ids, t))
    for i in range(t):  # every earlier position sees the change
        assert not torch.allclose(a[:, i], b[:, i])


@pytest.mark.parametrize("position", POSITIONS)
def test_prefix_lm_bidirectional_in_prefix_causal_after(position):
    model = build_model(tiny("prefix-lm", position=position)).eval()
    ids = torch.randint(0, V, (2, 12))
    prefix = torch.tensor([5, 5])
    # inside the prefix: earlier prefix positions see a later prefix token
    a, b = run(model, ids, prefix=prefix), run(model, _perturb(ids, 3), prefix=prefix)
    for i in range(3):
        assert not torch.allclose(a[:, i], b[:, i])
    # after the prefix: causal
    t = 8
    a, b = run(model, ids, prefix=prefix), run(model, _perturb(ids, t), prefix=prefix)
    assert_close(a[:, :t], b[:, :t])
    assert not torch.allclose(a[:, t], b[:, t])
    # per-example prefix lengths: example 1 has a longer prefix that covers slot 6
    prefix = torch.tensor([4, 8])
    a, b = run(model, ids, prefix=prefix), run(model, _perturb(ids, 6), prefix=prefix)
    assert_close(a[0, :6], b[0, :6])
    assert not torch.allclose(a[1, :6], b[1, :6])


@pytest.mark.parametrize("position", POSITIONS)
def test_encoder_decoder_causal_decoder_sees_whole_source(position):
    model = build_model(tiny("encoder-decoder", position=position)).eval()
    src = torch.randint(0, V, (2, 10))
    tgt = torch.randint(0, V, (2, 8))
    t = 4
    a = run(model, tgt, src=src)
    b = run(model, _perturb(tgt, t), src=src)
    assert_close(a[:, :t], b[:, :t])
    assert not torch.allclose(a[:, t], b[:, t])
    c = run(model, tgt, src=_perturb(src, 9))  # last source token
    for i in range(8):
        assert not torch.allclose(a[:, i], c[:, i])


# ---------------------------------------------------------------------------------------------
# padding never changes the outputs of real tokens
# ---------------------------------------------------------------------------------------------
def _positions(mask):
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("position", POSITIONS)
def test_right_padding_invariance(arch, position):
    model = build_model(tiny(arch, position=position)).eval()
    lens = [9, 5, 2]
    seqs = [torch.randint(0, V, (n,)) for n in lens]
    srcs = [torch.randint(0, V, (n,)) for n in (4, 10, 7)]
    T, S = max(lens), 10
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.bool)
    src = torch.zeros(3, S, dtype=torch.long)
    smask = torch.zeros(3, S, dtype=torch.bool)
    for i, (s, r) in enumerate(zip(seqs, srcs)):
        ids[i, : len(s)], mask[i, : len(s)] = s, True
        src[i, : len(r)], smask[i, : len(r)] = r, True
    prefix = torch.tensor([3, 2, 1]) if arch == "prefix-lm" else None
    batched = run(model, ids, mask, src=src, src_mask=smask, prefix=prefix)
    for i, s in enumerate(seqs):
        alone = run(model, s[None], src=srcs[i][None],
                    prefix=prefix[i : i + 1] if prefix is not None else None)
        assert_close(batched[i, : len(s)], alone[0])


@pytest.mark.parametrize("arch", ["decoder", "prefix-lm"])
@pytest.mark.parametrize("position", POSITIONS)
def test_left_padding_invariance(arch, position):
    model = build_model(tiny(arch, position=position)).eval()
    lens = [9, 4]
    seqs = [torch.randint(0, V, (n,)) for n in lens]
    T = max(lens)
    ids = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):], mask[i, T - len(s):] = s, True
    plen = [3, 2]
    prefix = torch.tensor([T - n + p for n, p in zip(lens, plen)]) if arch == "prefix-lm" else None
    batched = run(model, ids, mask, prefix=prefix, positions=_positions(mask))
    for i, s in enumerate(seqs):
        alone = run(model, s[None], prefix=torch.tensor([plen[i]]) if prefix is not None else None)
        assert_close(batched[i, T - len(s):], alone[0])


def test_no_nan_for_fully_padded_rows():
    model = build_model(tiny("decoder", position="alibi")).eval()
    ids = torch.randint(0, V, (2, 6))
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.isfinite(run(model, ids, mask)).all()


# ---------------------------------------------------------------------------------------------
# KV cache: incremental decoding equals full recomputation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["decoder", "prefix-lm", "encoder-decoder"])
@pytest.mark.parametrize("position", POSITIONS)
def test_kv_cache_matches_full_forward(arch, position):
    model = build_model(tiny(arch, position=position, n_kv_heads=2)).eval()
    ids = torch.randint(0, V, (2, 11))
    src = torch.randint(0, V, (2, 6))
    P = 5  # prompt length; prefix-LM treats the prompt as its bidirectional prefix
    prefix = torch.tensor([P, P]) if arch == "prefix-lm" else None
    full = run(model, ids, src=src, prefix=prefix)
    cache = model.new_cache(2, 16)
    enc = model.encode(src) if arch == "encoder-decoder" else None
    steps = [model.decode(ids[:, :P], encoder_out=enc, prefix_lengths=prefix, cache=cache)]
    for t in range(P, ids.shape[1]):
        # after the first step the encoder output is no longer needed: cross K/V are cached
        steps.append(model.decode(ids[:, t : t + 1], cache=cache))
    assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == ids.shape[1]


# ---------------------------------------------------------------------------------------------
# a few optimizer steps reduce the loss on a fixed batch, for every family
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_few_steps_reduce_loss(arch):
    cfg = get_preset(f"{arch}-tiny", vocab_size=512)
    losses = sanity_losses(cfg, steps=8, batch=4, seq_len=16)
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("arch", ARCHS)
def test_post_norm_variants_train(arch):
    cfg = tiny(arch, norm_position="post", norm="layernorm", position="learned", activation="gelu",
               bias=True, vocab_size=256)
    losses = sanity_losses(cfg, steps=15, batch=4, seq_len=16)
    assert losses[-1] < 0.8 * losses[0], losses


# ---------------------------------------------------------------------------------------------
# sliding-window attention
# ---------------------------------------------------------------------------------------------
def _window_inputs(arch, T=10):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, V, (3, T), generator=g)
    mask = torch.ones(3, T, dtype=torch.bool)
    mask[1, -3:] = False  # right padding
    src = torch.randint(3, V, (3, 7), generator=g)
    prefix = torch.tensor([4, 2, T]) if arch == "prefix-lm" else None
    return ids, mask, src, prefix


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("position", ["rope", "learned", "alibi", "t5-relative"])
def test_window_as_long_as_the_sequence_is_full_attention(arch, position):
    torch.manual_seed(0)
    cfg = tiny(arch, position=position)
    full = build_model(cfg).eval()
    ids, mask, src, prefix = _window_inputs(arch)
    ref = run(full, ids, mask, src=src, prefix=prefix)
    for w in (10, 64):  # T = 10 and S = 7: nothing is ever out of the window
        win = build_model(cfg.replace(attn_window=w)).eval()
        win.load_state_dict(full.state_dict())
        assert_close(run(win, ids, mask, src=src, prefix=prefix), ref, rtol=0, atol=0)
    short = build_model(cfg.replace(attn_window=3)).eval()
    short.load_state_dict(full.state_dict())
    out = run(short, ids, mask, src=src, prefix=prefix)
    assert (out - ref).abs().max() > 1e-3  # a short window does change the outputs


@pytest.mark.parametrize("arch", ["encoder", "decoder", "prefix-lm"])
def test_window_limits_what_a_token_influences(arch):
    """One layer, window 3: perturbing token 5 changes exactly the outputs the band allows
    (causal: positions 5..7; bidirectional: 3..7), never those further away."""
    torch.manual_seed(0)
    model = build_model(tiny(arch, n_layers=1, attn_window=3)).eval()
    ids = torch.randint(3, V, (1, 12))
    other = ids.clone()
    other[0, 5] = (ids[0, 5] + 1) % V
    prefix = torch.tensor([12]) if arch == "prefix-lm" else None  # all bidirectional
    changed = (run(model, ids, prefix=prefix) - run(model, other, prefix=prefix)).abs().amax(-1)[0] > 1e-6
    lo = 5 if arch == "decoder" else 3
    assert changed.nonzero().flatten().tolist() == list(range(lo, 8))
