"""State-space mixers: the chunked scans equal the sequential reference and the one-step
recurrence; causality by perturbation; bidirectional layers equal a flip-scan-flip reference
per sequence length; padding does not move real positions; gradcheck; layer patterns."""

from __future__ import annotations

import pytest
import torch

from archlab import build_model
from archlab.config import ModelConfig, SSMConfig, model_config_from_dict
from archlab.errors import ConfigError
from archlab.model import ssm
from archlab.model.ssm import (
    Mamba,
    Mamba2,
    reverse_by_length,
    selective_scan_chunked,
    selective_scan_ref,
    selective_scan_step,
    ssd_chunked,
    ssd_ref,
    ssd_step,
)

# fp32: the chunked forms sum in another order and factor exp(S_t - S_s) as
# exp(S_t) * exp(-S_s); tolerances of mamba-ssm's own kernel-vs-reference tests
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-3, rtol=6e-4)}


def _mamba1_inputs(dtype, T=37, dt_scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, D, N = 2, 6, 5

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)

    u, Bm, Cm, Dp, h0 = r(B, T, D), r(B, T, N), r(B, T, N), r(D), r(B, D, N)
    delta = (torch.rand(B, T, D, generator=g, dtype=torch.float64) * dt_scale).to(dtype)
    A = -(torch.rand(D, N, generator=g, dtype=torch.float64) * 3 + 0.1).to(dtype)
    return u, delta, A, Bm, Cm, Dp, h0


def _mamba2_inputs(dtype, T=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, H, P, G, N = 2, 4, 3, 2, 5

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)

    x, Bm, Cm, Dp, h0 = r(B, T, H, P), r(B, T, G, N), r(B, T, G, N), r(H), r(B, H, P, N)
    dt = torch.rand(B, T, H, generator=g, dtype=torch.float64).to(dtype)
    A = -(torch.rand(H, generator=g, dtype=torch.float64) * 2 + 0.1).to(dtype)
    return x, dt, A, Bm, Cm, Dp, h0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("T", [1, 8, 37])
def test_mamba1_chunked_equals_reference_and_steps(dtype, T):
    u, delta, A, Bm, Cm, Dp, h0 = _mamba1_inputs(dtype, T)
    ref = selective_scan_ref(*(t.double() for t in (u, delta, A, Bm, Cm, Dp, h0)))
    y, h = selective_scan_chunked(u, delta, A, Bm, Cm, Dp, h0, chunk_size=8)  # 37 = 4*8 + 5
    torch.testing.assert_close(y.double(), ref[0], **TOL[dtype])
    torch.testing.assert_close(h.double(), ref[1], **TOL[dtype])
    hs, ys = h0, []
    for t in range(T):
        yt, hs = selective_scan_step(hs, u[:, t], delta[:, t], A, Bm[:, t], Cm[:, t], Dp)
        ys.append(yt)
    torch.testing.assert_close(torch.stack(ys, 1).double(), ref[0], **TOL[dtype])
    torch.testing.assert_close(hs.double(), ref[1], **TOL[dtype])


def test_mamba1_chunked_is_exact_for_large_steps():
    """dt * |A| up to ~60 per step: exp(-cumsum) of a full chunk would overflow even fp64's
    range budget; the scan shortens its chunks instead and stays exact."""
    u, delta, A, Bm, Cm, Dp, h0 = _mamba1_inputs(torch.float32, 40, dt_scale=20.0)
    y, h = selective_scan_chunked(u, delta, A, Bm, Cm, Dp, h0, chunk_size=16)
    ref = selective_scan_ref(*(t.double() for t in (u, delta, A, Bm, Cm, Dp, h0)))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), ref[0], **TOL[torch.float32])
    torch.testing.assert_close(h.double(), ref[1], **TOL[torch.float32])


# one block per chunk; or blocks of 2 of the 6 channels (2 x 8 x 5 state elements per
# channel in a chunk of 8), so the blocked forward and the hand-written backward cross blocks
@pytest.mark.parametrize("tile", [10**9, 2 * 8 * 5 * 2], ids=["one-block", "channel-blocks"])
def test_mamba1_scan_gradients_equal_autograd_of_reference(monkeypatch, tile):
    """The chunked scan's hand-written backward (adjoint scan, states recomputed per block)
    gives the gradients autograd takes through the sequential reference, for every input
    (h0 included) and both outputs, in fp64, over 5 chunks (37 = 4*8 + 5)."""
    monkeypatch.setattr(ssm, "_TILE_ELEMS", tile)
    ins = [t.requires_grad_(True) for t in _mamba1_inputs(torch.float64, 37, dt_scale=0.3)]
    g = torch.Generator().manual_seed(1)
    y, h = selective_scan_chunked(*ins, chunk_size=8)
    wy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    wh = torch.randn(h.shape, generator=g, dtype=h.dtype)
    got = torch.autograd.grad((y * wy).sum() + (h * wh).sum(), ins)
    y0, h0 = selective_scan_ref(*ins)
    want = torch.autograd.grad((y0 * wy).sum() + (h0 * wh).sum(), ins)
    torch.testing.assert_close(y, y0, atol=1e-10, rtol=1e-10)
    for name, a, b in zip(("u", "delta", "A", "B", "C", "D", "h0"), got, want):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9, msg=lambda m, n=name: f"grad {n}: {m}")


def test_mamba1_scan_keeps_no_state_sized_tensor_for_backward():
    """Autograd keeps the scan's inputs and one state per chunk, not the (B, T, D, N) states
    (what lets a training step at T=4096 fit): the saved tensors of the graph are counted."""
    ins = [t.requires_grad_(True) for t in _mamba1_inputs(torch.float32, 64)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y, h = selective_scan_chunked(*ins, chunk_size=16)
    B, T, D = ins[0].shape
    assert max(saved) == B * T * D  # the largest saved tensors are the (B, T, D) inputs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("T", [1, 8, 37])
def test_mamba2_ssd_chunked_equals_reference_and_steps(dtype, T):
    x, dt, A, Bm, Cm, Dp, h0 = _mamba2_inputs(dtype, T)
    ref = ssd_ref(*(t.double() for t in (x, dt, A, Bm, Cm, Dp, h0)))
    y, h = ssd_chunked(x, dt, A, Bm, Cm, Dp, h0, chunk_size=8)
    torch.testing.assert_close(y.double(), ref[0], **TOL[dtype])
    torch.testing.assert_close(h.double(), ref[1], **TOL[dtype])
    H = x.shape[2]
    Bh, Ch = Bm.repeat_interleave(H // Bm.shape[2], 2), Cm.repeat_interleave(H // Cm.shape[2], 2)
    hs, ys = h0, []
    for t in range(T):
        yt, hs = ssd_step(hs, x[:, t], dt[:, t], A, Bh[:, t], Ch[:, t], Dp)
        ys.append(yt)
    torch.testing.assert_close(torch.stack(ys, 1).double(), ref[0], **TOL[dtype])


def test_mamba2_groups_map_heads_by_repeat_interleave():
    """Head h reads B/C group h // (H/G) (the transformers PR #38249 bug used repeat): a
    per-group reference computed head by head must match."""
    x, dt, A, Bm, Cm, Dp, h0 = _mamba2_inputs(torch.float64, 9)
    y, _ = ssd_chunked(x, dt, A, Bm, Cm, Dp, None, chunk_size=4)
    H, G = x.shape[2], Bm.shape[2]
    for head in range(H):
        g = head // (H // G)
        yh, _ = ssd_ref(x[:, :, head:head + 1], dt[:, :, head:head + 1], A[head:head + 1],
                        Bm[:, :, g:g + 1], Cm[:, :, g:g + 1], Dp[head:head + 1])
        torch.testing.assert_close(y[:, :, head:head + 1], yh, atol=1e-10, rtol=1e-10)


def _mixer(kind, dtype=torch.float64, **over):
    torch.manual_seed(0)
    s = SSMConfig(**{"head_dim": 8, "chunk_size": 4, "d_state": 4, **over})
    m = (Mamba if kind == "mamba" else Mamba2)(16, s, 1e-6).to(dtype)
    with torch.no_grad():  # larger dt and non-trivial weights: the state matters
        for name, p in m.named_parameters():
            if name in ("dt_proj.bias", "dt_bias"):
                p.uniform_(-1.0, 1.0)
    return m


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize("split", [0, 3, 6])
def test_mixer_prefill_then_steps_equals_full(kind, split):
    m = _mixer(kind)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    full, _ = m(x)
    outs, state = [], None
    if split:
        y, state = m(x[:, :split], state=None, return_state=True)
        outs.append(y)
    for t in range(split, 11):
        y, state = m(x[:, t:t + 1], state=state, return_state=True)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_mixer_gradcheck(kind):
    torch.manual_seed(0)
    s = SSMConfig(head_dim=4, chunk_size=2, d_state=2, expand=1)
    m = (Mamba if kind == "mamba" else Mamba2)(8, s, 1e-6).double()
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t)[0], (x,), eps=1e-6, atol=1e-5)
    # and with respect to the SSM parameters (A_log, D, dt, conv), the rest held fixed
    names = [n for n, _ in m.named_parameters()
             if n in ("A_log", "D", "dt_bias", "dt_proj.bias", "conv1d.weight")]
    params = dict(m.named_parameters())
    flat = [params[n].detach().clone().requires_grad_(True) for n in names]
    x = x.detach()

    def f(*ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))[0]

    assert torch.autograd.gradcheck(f, flat, eps=1e-6, atol=1e-5)


def test_selective_scan_gradcheck():
    u, delta, A, Bm, Cm, Dp, h0 = _mamba1_inputs(torch.float64, 5)
    args = [t.requires_grad_(True) for t in (u[:1], delta[:1], A, Bm[:1], Cm[:1], Dp, h0[:1])]
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan_chunked(*a, chunk_size=3), args, eps=1e-6, atol=1e-6)
    x, dt, A, Bm, Cm, Dp, h0 = _mamba2_inputs(torch.float64, 5)
    args = [t.requires_grad_(True) for t in (x[:1], dt[:1], A, Bm[:1], Cm[:1], Dp, h0[:1])]
    assert torch.autograd.gradcheck(lambda *a: ssd_chunked(*a, chunk_size=3), args, eps=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# In the stack
# ---------------------------------------------------------------------------------------------


def tiny(arch="decoder", layers="MSAM", dtype=torch.float64, **over):
    n = len(layers.split("/")[0].rstrip("*"))
    cfg = ModelConfig(arch=arch, vocab_size=40, d_model=16, n_heads=2, n_layers=n, d_ff=32,
                      layers=layers, ssm=SSMConfig(head_dim=8, chunk_size=4, d_state=4), **over)
    torch.manual_seed(1)
    model = build_model(cfg).to(dtype).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a spread of weights, so outputs differ from token to token
        for name, p in model.named_parameters():
            if "norm" not in name and "A_log" not in name:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    return model


@pytest.mark.parametrize("layers", ["MMMM", "SSSS", "MSAM"])
def test_causal_mamba_by_perturbation(layers):
    model = tiny("decoder", layers)
    ids = torch.randint(3, 40, (1, 12))
    base = model(ids).logits
    for t in (0, 5, 11):
        ids2 = ids.clone()
        ids2[0, t] = (ids[0, t] + 1) % 40
        out = model(ids2).logits
        torch.testing.assert_close(out[:, :t], base[:, :t], atol=0, rtol=0)
        assert (out[:, t:] - base[:, t:]).abs().amax(-1).min() > 1e-6  # every later slot moves


def test_default_pattern_unchanged():
    """layers: "AAAA" builds the same parameters (names, values) and outputs as no pattern."""
    torch.manual_seed(0)
    a = build_model(ModelConfig(vocab_size=40, d_model=16, n_heads=2, d_ff=32)).eval()
    torch.manual_seed(0)
    b = build_model(ModelConfig(vocab_size=40, d_model=16, n_heads=2, d_ff=32, layers="AAAA")).eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ids = torch.randint(3, 40, (2, 9))
    assert torch.equal(a(ids).logits, b(ids).logits)


def test_pure_mamba_stack_builds_no_attention_tables():
    model = tiny("decoder", "MMSS", position="alibi")
    stack = model.decoder
    assert stack.rotary is None and stack.alibi is None and stack.rel_bias is None
    assert not stack.has_attn
    assert tiny("decoder", "MA", position="t5-relative").decoder.rel_bias is not None


def _bi_reference(block, x):
    """fwd(x) + flip(bwd(flip(x))) for one unpadded sequence x (1, L, C)."""
    yf, _ = block.ssm(x)
    yb, _ = block.ssm_bwd(x.flip(1))
    return yf + yb.flip(1)


@pytest.mark.parametrize("kind", ["M", "S"])
def test_bidirectional_layer_equals_flip_scan_flip_per_length(kind):
    model = tiny("encoder", kind * 2)
    block = model.encoder.blocks[0]
    lengths = [9, 4, 6]
    x = torch.randn(3, 9, 16, dtype=torch.float64)
    valid = torch.arange(9)[None, :] < torch.tensor(lengths)[:, None]
    x = x.masked_fill(~valid[..., None], 7.0)  # junk in the pad slots
    # with pad inputs zeroed (valid) and without: reversing each row by its own length
    # alone keeps the junk behind the real tokens of the backward scan
    for v in (valid, None):
        y = block._ssm(x, None, 0, v, torch.tensor(lengths))
        for b, L in enumerate(lengths):
            ref = _bi_reference(block, x[b:b + 1, :L])
            torch.testing.assert_close(y[b:b + 1, :L], ref, atol=1e-10, rtol=1e-10)
    # a plain flip of the padded batch is not the same (padding would lead the backward scan)
    yf, _ = block.ssm(x)
    yb, _ = block.ssm_bwd(x.flip(1))
    assert (yf + yb.flip(1) - y)[1, :4].abs().max() > 1e-6


@pytest.mark.parametrize("arch,layers", [("encoder", "MSAM"), ("encoder-decoder", "MS/SM")])
def test_right_padding_does_not_change_real_positions(arch, layers):
    model = tiny(arch, layers)
    lengths = [10, 3, 7]
    ids = torch.randint(3, 40, (3, 10))
    mask = torch.arange(10)[None, :] < torch.tensor(lengths)[:, None]
    ids = ids.masked_fill(~mask, 0)
    enc = model.encode(ids, mask)
    for b, L in enumerate(lengths):
        alone = model.encode(ids[b:b + 1, :L])
        torch.testing.assert_close(enc[b:b + 1, :L], alone, atol=1e-10, rtol=1e-10)


def test_encoder_is_bidirectional():
    model = tiny("encoder", "MM")
    ids = torch.randint(3, 40, (1, 8))
    ids2 = ids.clone()
    ids2[0, 7] = (ids[0, 7] + 1) % 40
    assert (model.encode(ids)[:, 0] - model.encode(ids2)[:, 0]).abs().max() > 1e-6


def test_prefix_lm_mamba_is_bidirectional_in_the_prefix_only():
    """Prefix-LM Mamba layer = forward scan + a backward scan restricted to the prefix: a
    prefix token reaches earlier prefix slots; a target token reaches no earlier slot."""
    model = tiny("prefix-lm", "MSM")
    ids = torch.randint(3, 40, (1, 10))
    P = torch.tensor([5])
    base = model(ids, prefix_lengths=P).logits
    ids2 = ids.clone()
    ids2[0, 3] = (ids[0, 3] + 1) % 40  # inside the prefix
    out = model(ids2, prefix_lengths=P).logits
    assert (out[:, :3] - base[:, :3]).abs().amax(-1).min() > 1e-6
    ids3 = ids.clone()
    ids3[0, 6] = (ids[0, 6] + 1) % 40  # a target
    out = model(ids3, prefix_lengths=P).logits
    torch.testing.assert_close(out[:, :6], base[:, :6], atol=0, rtol=0)


def test_reverse_by_length_is_an_involution():
    x = torch.arange(12).view(2, 6, 1)
    r = reverse_by_length(x, torch.tensor([6, 4]))
    assert r[:, :, 0].tolist() == [[5, 4, 3, 2, 1, 0], [9, 8, 7, 6, 10, 11]]
    assert torch.equal(reverse_by_length(r, torch.tensor([6, 4])), x)


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data,needle", [
    ({"layers": "MXMA"}, "model.layers: unknown layer letter 'X'"),
    ({"layers": "MMM"}, "model.layers: pattern 'MMM' has 3 layers but the stack has 4"),
    ({"ssm": {"d_state": 8}}, "model.ssm: SSM options on an attention-only model"),
    ({"ffn": "DDQD", "layers": "MMMM"}, "model.ffn: unknown layer letter 'Q'"),
    ({"layers": "SSSS", "d_model": 48}, "model.ssm.head_dim"),
    ({"layers": "MM/AA", "n_layers": 2}, "model.layers: 'ENCODER/DECODER' patterns need arch"),
    ({"layers": "MMMM", "ssm": {"d_stat": 3}}, "unknown key model.ssm.d_stat"),
])
def test_bad_patterns_are_one_line_config_errors(data, needle):
    with pytest.raises(ConfigError) as e:
        model_config_from_dict(data)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_pattern_forms():
    c = model_config_from_dict({"layers": "MMMA*", "n_layers": 6})
    assert [m for m, _ in c.layer_kinds("decoder")] == ["mamba"] * 3 + ["attention", "mamba", "mamba"]
    assert [f for _, f in c.layer_kinds("decoder")] == ["none"] * 3 + ["dense", "none", "none"]
    c = model_config_from_dict({"arch": "encoder-decoder", "layers": "MM/SA", "n_layers": 2,
                                "ffn": "DD"})
    assert c.layer_kinds("encoder") == [("mamba", "dense")] * 2
    assert c.layer_kinds("decoder") == [("mamba2", "dense"), ("attention", "dense")]
