"""Mixture-of-experts feed-forward: one expert equals the dense MLP (forward and gradients);
the grouped computation equals a per-token reference loop, through the CPU loop and through
``torch._grouped_mm`` (the CUDA path, forced on CPU, calls counted); the two expert paths give
the same outputs and gradients and drop the same entries with dropout; permuting tokens
permutes outputs; the balancing loss equals transformers' ``load_balancing_loss_func``;
z-loss by hand; the sigmoid-bias router's bias moves selection only; capacity drops counted
exactly, per sequence (an example's output does not depend on its batch-mates), in training
only (evaluation is dropless: cached decoding equals teacher forcing); padding is not routed;
bad options are one-line ConfigErrors."""

from __future__ import annotations

import math

import pytest
import torch

from archlab import build_model
from archlab.config import ModelConfig, MoEConfig, model_config_from_dict
from archlab.errors import ConfigError
from archlab.model import moe as moe_module
from archlab.model.layers import MLP
from archlab.model.moe import MoE, collect_health, start_health, update_balancing_bias

C = 16


def _grouped_mm_reference(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """torch._grouped_mm's 2-D x 3-D form in plain PyTorch: rows offs[g-1]:offs[g] of a
    (M, K) times b[g] (K, N) -> (M, N)."""
    out, start = [], 0
    for g, end in enumerate(offs.tolist()):
        out.append(a[start:end] @ b[g])
        start = end
    return torch.cat(out)


def _cpu_grouped_mm_works() -> bool:
    try:
        a, b = torch.randn(6, 16), torch.randn(2, 24, 16).transpose(-2, -1)
        offs = torch.tensor([2, 6], dtype=torch.int32)
        return torch.allclose(torch._grouped_mm(a, b, offs=offs), _grouped_mm_reference(a, b, offs), atol=1e-5)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@pytest.fixture
def grouped_mm(monkeypatch):
    """Sends fp32 MoE computations through the CUDA path's ``torch._grouped_mm`` on CPU (the
    CPU kernel where this torch build has one, else the plain-PyTorch reference) and records
    each call's (rows, groups)."""
    calls = _Calls()
    kernel = torch._grouped_mm if _cpu_grouped_mm_works() else _grouped_mm_reference

    def spy(a, b, offs=None):  # noqa: ANN001, ANN202
        calls.append((a.shape[0], b.shape[0]))
        return kernel(a, b, offs=offs)

    monkeypatch.setattr(moe_module, "_use_grouped_mm", lambda x: calls.on and x.dtype == torch.float32)
    monkeypatch.setattr(torch, "_grouped_mm", spy, raising=False)
    return calls


class _Calls(list):
    on = True  # False: the loop path, as on CPU


def _cfg(activation="swiglu", bias=False, **moe):
    return ModelConfig(vocab_size=32, d_model=C, n_heads=2, n_layers=1, d_ff=24,
                       activation=activation, bias=bias, ffn="E", moe=MoEConfig(**moe))


def _moe(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    m = MoE(_cfg(**kw))
    m.reset_parameters(0.3, 0.3)
    if m.b_in is not None:
        torch.nn.init.normal_(m.b_in, 0, 0.1)
        torch.nn.init.normal_(m.b_out, 0, 0.1)
    return m.to(dtype)


@pytest.mark.parametrize("activation,bias", [("swiglu", False), ("gelu", True), ("reglu", True)])
def test_one_expert_equals_dense_mlp_forward_and_grads(activation, bias):
    cfg = _cfg(activation, bias, n_experts=1, top_k=1)
    torch.manual_seed(0)
    mlp = MLP(cfg).double()
    moe = MoE(cfg).double()
    with torch.no_grad():
        moe.w_in[0].copy_(mlp.w_in.weight)
        moe.w_out[0].copy_(mlp.w_out.weight)
        if bias:
            moe.b_in[0].copy_(mlp.w_in.bias)
            moe.b_out[0].copy_(mlp.w_out.bias)
    x = torch.randn(3, 5, C, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(3, 5, C, dtype=torch.float64)
    y_mlp, y_moe = mlp(x1), moe(x2)
    torch.testing.assert_close(y_moe, y_mlp, rtol=1e-12, atol=1e-12)
    y_mlp.backward(g)
    y_moe.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(moe.w_in.grad[0], mlp.w_in.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(moe.w_out.grad[0], mlp.w_out.weight.grad, rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(moe.b_in.grad[0], mlp.w_in.bias.grad, rtol=1e-12, atol=1e-12)


def _reference(m: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token: route, run each chosen expert's FFN, sum weighted by the gates."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        logits = x[t] @ m.router.weight.t()
        if m.router_kind == "sigmoid-bias":
            s = torch.sigmoid(logits)
            idx = torch.topk(s + m.expert_bias, m.top_k).indices
            w = s[idx] / s[idx].sum()
        else:
            p = torch.softmax(logits, -1)
            w, idx = torch.topk(p, m.top_k)
            if m.router_kind == "topk-softmax":
                w = w / w.sum()
        for e, we in zip(idx.tolist(), w):
            h = m.w_in[e] @ x[t] + (m.b_in[e] if m.b_in is not None else 0)
            if m.gated:
                a, b = h.chunk(2)
                h = m.act(a) * b
            else:
                h = m.act(h)
            out[t] += we * (m.w_out[e] @ h + (m.b_out[e] if m.b_out is not None else 0))
        if m.shared is not None:
            out[t] += m.shared(x[t][None])[0]
    return out


KINDS = [dict(n_experts=4, top_k=2), dict(n_experts=5, top_k=1, router="switch"),
         dict(n_experts=6, top_k=3, router="sigmoid-bias"), dict(n_experts=4, top_k=2, n_shared_experts=1),
         dict(n_experts=4, top_k=2, activation="gelu", bias=True)]
KIND_IDS = ["topk", "switch", "sigmoid", "shared", "bias"]


@pytest.mark.parametrize("path", ["loop", "grouped_mm"])
@pytest.mark.parametrize("kw", KINDS, ids=KIND_IDS)
def test_grouped_equals_per_token_loop_and_permutes(kw, path, request):
    # the loop path in fp64; the CUDA path's torch._grouped_mm (fp32 / bf16 only) in fp32
    calls = request.getfixturevalue("grouped_mm") if path == "grouped_mm" else None
    dtype = torch.float32 if calls is not None else torch.float64
    tol = dict(rtol=1e-5, atol=1e-5) if calls is not None else dict(rtol=1e-10, atol=1e-10)
    m = _moe(dtype=dtype, **kw)
    if m.expert_bias is not None:
        m.expert_bias.copy_(torch.randn(m.n_experts, dtype=dtype))
    x = torch.randn(2, 9, C, dtype=dtype)
    y = m(x)
    if calls is not None:  # the grouped kernel ran: both products, one group per expert
        assert calls == [(18 * m.top_k, m.n_experts)] * 2
    ref = _reference(m, x.reshape(-1, C)).view_as(x)
    torch.testing.assert_close(y, ref, **tol)
    perm = torch.randperm(18)
    yp = m(x.reshape(-1, C)[perm][None])[0]
    torch.testing.assert_close(yp, y.reshape(-1, C)[perm], **tol)
    # several experts were used (the grouping is exercised, not one group)
    m.start_health()
    m(x)
    assert int((m.health["counts"] > 0).sum()) >= 3


def test_balance_loss_equals_transformers_and_z_loss_by_hand():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    m = _moe(n_experts=6, top_k=2, dtype=torch.float32)
    x = torch.randn(3, 7, C)
    valid = torch.ones(3, 7, dtype=torch.bool)
    valid[1, 4:] = False
    valid[2, :2] = False
    for mask in (None, valid):
        m(x, mask)
        logits = m.router(x).reshape(-1, 6)
        hf = load_balancing_loss_func((logits,), 6, 2, attention_mask=mask.long() if mask is not None else None)
        torch.testing.assert_close(m.aux["balance"], hf, rtol=1e-6, atol=1e-6)
        rows = logits if mask is None else logits[mask.reshape(-1)]
        z = sum(math.log(sum(math.exp(v) for v in r)) ** 2 for r in rows.tolist()) / len(rows)
        assert abs(float(m.aux["z"].detach()) - z) < 1e-5
    # an unbalanced router gives a larger loss than the uniform value k
    with torch.no_grad():
        m.router.weight.zero_()
        m.router.weight[0, 0] = 5.0
    x[..., 0] = 3.0
    m(x)
    assert float(m.aux["balance"].detach()) > 3.0


def test_bias_changes_choice_not_gates_and_moves_toward_equal_load():
    m = _moe(n_experts=4, top_k=2, router="sigmoid-bias")
    x = torch.randn(40, C, dtype=torch.float64)
    logits, _, gates0, idx0 = m.route(x)
    m.expert_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 10.0], dtype=torch.float64))
    _, _, gates1, idx1 = m.route(x)
    assert bool((idx1 == 3).any(-1).all())  # the bias made expert 3 chosen by every token
    assert not torch.equal(idx0, idx1)
    s = torch.sigmoid(logits)
    torch.testing.assert_close(gates1, s.gather(-1, idx1) / s.gather(-1, idx1).sum(-1, keepdim=True))
    same = (idx0 == idx1).all(-1)
    assert bool(same.any())
    torch.testing.assert_close(gates1[same], gates0[same], rtol=0, atol=0)  # unbiased gate values
    # update: overloaded experts go down, underloaded go up, re-centred; not a parameter
    m.expert_bias.zero_()
    m.train()
    m(x[None])
    load = m.pending_load.clone()
    assert load.sum() == 80 and not bool((load == load.mean()).all())
    m.update_bias()
    expect = 1e-3 * torch.sign(load.mean() - load)
    torch.testing.assert_close(m.expert_bias, expect - expect.mean())
    assert float(m.pending_load.sum()) == 0
    assert "expert_bias" not in dict(m.named_parameters())


def test_bias_update_runs_through_the_model_hook():
    cfg = ModelConfig(vocab_size=32, d_model=C, n_heads=2, n_layers=2, d_ff=24, ffn="DE",
                      moe=MoEConfig(n_experts=4, top_k=1, router="sigmoid-bias", bias_update_rate=0.01))
    model = build_model(cfg).train()
    model(torch.randint(0, 32, (2, 12)))
    update_balancing_bias(model)
    b = model.decoder.blocks[1].mlp.expert_bias
    assert float(b.abs().sum()) > 0 and abs(float(b.sum())) < 1e-6
    assert "decoder.blocks.1.mlp.expert_bias" in model.state_dict()


def test_capacity_drops_counted_exactly():
    m = _moe(n_experts=4, top_k=1, router="switch", capacity_factor=1.0)
    with torch.no_grad():  # every token prefers expert 0, then expert 1
        m.router.weight.zero_()
        m.router.weight[0, 0] = 1.0
        m.router.weight[1, 0] = 0.5
    x = torch.randn(12, C, dtype=torch.float64)
    x[:, 0] = x[:, 0].abs() + 1.0
    m.start_health()
    y = m(x[None])[0]
    h = m.health
    cap = m.capacity(12)
    assert cap == 3
    assert int(h["dropped"]) == 12 - 3 and h["counts"].tolist() == [12, 0, 0, 0]
    assert bool((y[3:] == 0).all()) and bool((y[:3] != 0).all())  # token order within expert 0
    health = collect_health(torch.nn.ModuleList([m]))
    layer = next(iter(health["layers"].values()))
    assert layer["dropped_fraction"] == 9 / 12 and layer["dead_experts"] == 3
    assert layer["max_violation"] == 3.0 and layer["tokens_per_expert"] == [12, 0, 0, 0]
    # top-2: first choices of all tokens have priority over second choices (GShard). Tokens
    # 0-5 choose experts (1, 0), tokens 6-11 choose (0, 1); capacity 6 keeps every first
    # choice and drops every second one (token order alone would keep tokens 0-5 twice)
    m2 = _moe(n_experts=4, top_k=2, capacity_factor=1.0)  # cap = ceil(12 * 2 / 4) = 6
    with torch.no_grad():
        m2.router.weight.zero_()
        m2.router.weight[0, 0], m2.router.weight[1, 0] = 1.0, -1.0
        m2.router.weight[2:, 1] = -10.0
    x2 = torch.randn(12, C, dtype=torch.float64)
    x2[:, 0] = torch.cat([-torch.rand(6) - 0.5, torch.rand(6) + 0.5])
    x2[:, 1] = 1.0
    m2.start_health()
    y2 = m2(x2[None])[0]
    assert int(m2.health["dropped"]) == 12 and m2.health["counts"].tolist() == [12, 12, 0, 0]
    _, _, gates, idx = m2.route(x2)
    assert idx[:6, 0].tolist() == [1] * 6 and idx[6:, 0].tolist() == [0] * 6
    m1 = _moe(n_experts=4, top_k=1)  # the same experts, first choice only
    m1.load_state_dict(m2.state_dict())
    torch.testing.assert_close(y2, m1(x2[None])[0] * gates[:, :1], rtol=1e-12, atol=1e-12)
    # a capacity nothing reaches gives the dropless result
    m3 = _moe(n_experts=4, top_k=2, capacity_factor=4.0)
    m4 = _moe(n_experts=4, top_k=2)
    xr = torch.randn(2, 6, C, dtype=torch.float64)
    torch.testing.assert_close(m3(xr), m4(xr), rtol=0, atol=0)


def test_padding_is_not_routed():
    m = _moe(n_experts=4, top_k=2)
    x = torch.randn(2, 6, C, dtype=torch.float64)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[0, 4:] = False
    m.start_health()
    y = m(x, valid)
    assert int(m.health["tokens"]) == 10 and int(m.health["counts"].sum()) == 20
    assert bool((y[0, 4:] == 0).all())
    # real tokens as if the pads were not there at all
    torch.testing.assert_close(y[1], m(x[1:])[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y[0, :4], m(x[:1, :4])[0], rtol=1e-12, atol=1e-12)
    # pads take no capacity: each sequence's capacity is from its own real tokens (4 and 6),
    # so the batch drops what the two sequences drop alone, and gives their outputs
    mc = _moe(n_experts=4, top_k=2, capacity_factor=0.5)
    mc.start_health()
    yc = mc(x, valid)
    dropped = int(mc.health["dropped"])
    alone = []
    for xs in (x[:1, :4], x[1:]):
        mc.start_health()
        alone.append(mc(xs)[0])
        dropped -= int(mc.health["dropped"])
    assert dropped == 0 and int(mc.health["dropped"]) > 0
    torch.testing.assert_close(yc[0, :4], alone[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(yc[1], alone[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", KINDS, ids=KIND_IDS)
def test_grouped_mm_path_equals_loop_path_forward_and_grads(kw, grouped_mm):
    """The CUDA path (torch._grouped_mm on stacked weights, bias by repeat_interleave) and the
    CPU loop give the same outputs and gradients for every parameter and the input, with
    padding and with a capacity that drops (training mode)."""
    ref = _moe(dtype=torch.float32, capacity_factor=0.75, **kw)
    fast = _moe(dtype=torch.float32, capacity_factor=0.75, **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 8, C)
    valid = torch.ones(3, 8, dtype=torch.bool)
    valid[0, 5:] = False
    g = torch.randn(3, 8, C)
    outs = {}
    for name, m in (("loop", ref), ("grouped", fast)):
        xi = x.clone().requires_grad_()
        m.start_health()
        before, grouped_mm.on = len(grouped_mm), m is fast
        y = m(xi, valid)
        assert (len(grouped_mm) > before) == (m is fast)  # each module took its own path
        (y * g).sum().backward()
        outs[name] = (y, xi.grad, {n: p.grad for n, p in m.named_parameters()}, m.health["dropped"])
    (y0, gx0, gp0, d0), (y1, gx1, gp1, d1) = outs["loop"], outs["grouped"]
    assert float(d0) > 0 and float(d0) == float(d1)  # the capacity dropped, alike
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx1, gx0, rtol=1e-5, atol=1e-5)
    assert sorted(gp0) == sorted(gp1)
    for n in gp0:
        assert gp0[n] is not None and float(gp0[n].abs().sum()) > 0, n
        torch.testing.assert_close(gp1[n], gp0[n], rtol=1e-5, atol=1e-5, msg=n)


def test_expert_dropout_is_the_same_on_both_paths(grouped_mm):
    """With dropout in training, the grouped path drops what the loop path drops from the same
    generator state (one mask over the grouped rows); the dropout is real: the outputs differ
    from the dropless ones and from another draw, and about p of the hidden units are zero."""
    cfg = _cfg(n_experts=4, top_k=2).replace(dropout=0.3)
    torch.manual_seed(0)
    loop, fast = MoE(cfg), MoE(cfg)
    loop.reset_parameters(0.3, 0.3)
    fast.load_state_dict(loop.state_dict())
    x = torch.randn(2, 16, C)
    torch.manual_seed(5)
    grouped_mm.on = False
    y_loop = loop(x)
    n, grouped_mm.on = len(grouped_mm), True
    assert n == 0
    torch.manual_seed(5)
    y_fast = fast(x)
    assert len(grouped_mm) == n + 2  # the grouped kernel ran, the loop did not
    torch.testing.assert_close(y_fast, y_loop, rtol=1e-5, atol=1e-5)
    torch.manual_seed(6)
    assert (fast(x) - y_fast).abs().max() > 1e-2  # another draw drops other units
    with torch.no_grad():
        y_eval = fast.eval()(x)
    assert (y_eval - y_fast).abs().max() > 1e-2
    # the mask itself: about 30 % zeros, the rest 1 / 0.7
    fast.train()
    mask = fast._dropout_mask(torch.zeros(4000, C))
    assert mask.shape == (4000, fast.d_ff)
    assert abs(float((mask == 0).float().mean()) - 0.3) < 0.01
    torch.testing.assert_close(mask[mask != 0], torch.full_like(mask[mask != 0], 1 / 0.7))


def _skewed(m: MoE) -> MoE:
    """A router that sends most tokens to expert 0, so that a capacity drops."""
    with torch.no_grad():
        m.router.weight[0] += 0.8 * m.router.weight[0].sign()
    return m


def test_capacity_is_per_sequence_an_example_does_not_depend_on_its_batch():
    m = _skewed(_moe(n_experts=4, top_k=2, capacity_factor=1.0))
    a = torch.randn(1, 6, C, dtype=torch.float64)
    m.start_health()
    y_a = m(a)[0]
    assert int(m.health["dropped"]) > 0  # the capacity binds on a alone
    for b_len in (9, 3):  # a longer and a shorter batch-mate, padding the shorter one
        b = torch.randn(1, b_len, C, dtype=torch.float64)
        T = max(6, b_len)
        x = torch.zeros(2, T, C, dtype=torch.float64)
        x[0, :6], x[1, :b_len] = a[0], b[0]
        valid = torch.zeros(2, T, dtype=torch.bool)
        valid[0, :6], valid[1, :b_len] = True, True
        y = m(x, valid)
        torch.testing.assert_close(y[0, :6], y_a, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(y[1, :b_len], m(b)[0], rtol=1e-12, atol=1e-12)
    # without padding: each row is its own sequence
    x = torch.cat([a, torch.randn(2, 6, C, dtype=torch.float64)])
    torch.testing.assert_close(m(x)[0], y_a, rtol=1e-12, atol=1e-12)
    # through a model: one example's logits alone and beside another (right padding)
    cfg = ModelConfig(vocab_size=32, d_model=C, n_heads=2, n_layers=2, d_ff=24, ffn="E*", dropout=0.0,
                      moe=MoEConfig(n_experts=4, top_k=1, router="switch", capacity_factor=0.5))
    torch.manual_seed(1)
    model = build_model(cfg).double().train()
    ids = torch.randint(0, 32, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, 7:] = 0
    start_health(model)
    both = model(ids, mask).logits
    assert collect_health(model)["dropped_fraction"] > 0  # the capacity binds
    torch.testing.assert_close(both[0, :7], model(ids[:1, :7]).logits[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(both[1], model(ids[1:]).logits[0], rtol=1e-10, atol=1e-10)


def test_capacity_applies_in_training_only_and_eval_counts_what_it_would_drop():
    """Evaluation is dropless (capacity is a training-time device; NLLB-MoE / fairseq evaluate
    at capacity fraction 1.0): eval outputs equal a dropless module's, while expert health
    counts exactly what training's capacity drops on the same batch."""
    m = _skewed(_moe(n_experts=4, top_k=2, capacity_factor=1.0))
    free = _moe(n_experts=4, top_k=2)
    free.load_state_dict(m.state_dict())
    x = torch.randn(3, 8, C, dtype=torch.float64)
    m.start_health()
    y_train = m(x)
    dropped = int(m.health["dropped"])
    assert dropped > 0
    m.eval()
    m.start_health()
    y_eval = m(x)
    assert int(m.health["dropped"]) == dropped
    torch.testing.assert_close(y_eval, free(x), rtol=0, atol=0)
    assert (y_eval - y_train).abs().max() > 1e-3


def test_capacity_model_cached_decoding_equals_teacher_forcing_in_eval():
    """With a capacity that drops in training, the evaluated model's cached one-token steps
    equal its full forward. (In training they cannot: per-sequence capacity looks at the whole
    sequence, a decoding step at one token; the training forward differs, shown below.)"""
    cfg = ModelConfig(vocab_size=32, d_model=C, n_heads=2, n_layers=2, d_ff=24, ffn="E*", dropout=0.0,
                      moe=MoEConfig(n_experts=4, top_k=2, capacity_factor=0.5))
    torch.manual_seed(2)
    model = build_model(cfg).double().eval()
    ids = torch.randint(0, 32, (2, 12))
    full = model.decode(ids)
    cache = model.new_cache(2, 16)
    steps = [model.decode(ids[:, :4], cache=cache)]
    for t in range(4, 12):
        steps.append(model.decode(ids[:, t:t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)
    assert (model.train().decode(ids) - full).abs().max() > 1e-4  # training drops


def test_model_families_return_aux_losses_and_all_experts_get_grads():
    for arch in ("decoder", "encoder", "prefix-lm", "encoder-decoder"):
        cfg = ModelConfig(arch=arch, vocab_size=32, d_model=C, n_heads=2, n_layers=2, d_ff=24,
                          ffn="DE", moe=MoEConfig(n_experts=4, top_k=2))
        model = build_model(cfg)
        x = torch.randint(0, 32, (2, 9))
        kw = {"decoder_input_ids": x} if arch == "encoder-decoder" else {}
        out = model(x, **kw)
        assert set(out.aux_losses) == {"balance", "z"}
        (out.logits.square().mean() + out.aux_losses["balance"]).backward()
        for name, p in model.named_parameters():
            if ".mlp.w_in" in name:
                assert p.grad is not None and bool((p.grad.flatten(1).abs().sum(1) > 0).all()), name


@pytest.mark.parametrize("data,needle", [
    ({"ffn": "E", "moe": {"n_experts": 4, "top_k": 5}}, "model.moe.top_k: must be in [1, n_experts=4]"),
    ({"ffn": "E", "moe": {"n_experts": 0}}, "model.moe.n_experts: must be >= 1"),
    ({"ffn": "E", "moe": {"capacity_factor": 0}}, "model.moe.capacity_factor: must be > 0"),
    ({"ffn": "E", "moe": {"capacity_factor": -1.5}}, "model.moe.capacity_factor: must be > 0"),
    ({"moe": {"n_experts": 4}}, "model.moe: MoE options on a model without MoE layers"),
    ({"ffn": "D", "moe": {"n_experts": 4}}, "model.moe: MoE options on a model without MoE layers"),
    ({"ffn": "E", "moe": {"router": "hash"}}, "model.moe.router: 'hash' is not valid"),
    ({"ffn": "E", "moe": {"router": "switch", "top_k": 2}}, "model.moe.top_k: the switch router is top-1"),
    ({"ffn": "E", "moe": {"top_kk": 2}}, "unknown key model.moe.top_kk"),
    ({"ffn": "X"}, "model.ffn: unknown layer letter 'X'"),
])
def test_bad_moe_options_are_one_line_config_errors(data, needle):
    base = {"vocab_size": 32, "d_model": C, "n_heads": 2, "n_layers": 1, "d_ff": 24}
    with pytest.raises(ConfigError) as e:
        model_config_from_dict({**base, **data})
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kw", KINDS, ids=KIND_IDS)
def test_cpu_training_steps_take_grouped_mm_and_equal_the_loop(kw, monkeypatch):
    """The CPU default (CPU_TRAIN_EXPERTS): a training forward + backward runs the experts
    through torch._grouped_mm (what F.grouped_mm calls) and gives the loop's outputs and
    gradients to 1e-5, with padding and a dropping capacity; without autograd (evaluation,
    decoding) and under CPU autocast the loop runs."""
    from archlab.model.moe import cpu_train_experts

    assert moe_module.CPU_TRAIN_EXPERTS == "grouped_mm"
    calls: list[int] = []
    real = torch._grouped_mm

    def spy(a, b, offs=None):  # noqa: ANN001, ANN202
        calls.append(a.shape[0])
        return real(a, b, offs=offs)

    monkeypatch.setattr(torch, "_grouped_mm", spy)
    ref = _moe(dtype=torch.float32, capacity_factor=0.75, **kw)
    x = torch.randn(3, 8, C)
    valid = torch.ones(3, 8, dtype=torch.bool)
    valid[1, 6:] = False
    outs = {}
    for kind in ("loop", "grouped_mm"):
        m = _moe(dtype=torch.float32, capacity_factor=0.75, **kw)
        m.load_state_dict(ref.state_dict())
        xi = x.clone().requires_grad_()
        n = len(calls)
        with cpu_train_experts(kind):
            y = m(xi, valid)
            y.sum().backward()  # an expanded (stride-0) output gradient, as from a plain sum
        assert (len(calls) > n) == (kind == "grouped_mm"), kind
        outs[kind] = (y, xi.grad, {k: p.grad for k, p in m.named_parameters()})
    (y0, gx0, gp0), (y1, gx1, gp1) = outs["loop"], outs["grouped_mm"]
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx1, gx0, rtol=1e-5, atol=1e-5)
    for k in gp0:
        assert float(gp0[k].abs().sum()) > 0, k
        torch.testing.assert_close(gp1[k], gp0[k], rtol=1e-5, atol=1e-5, msg=k)
    n = len(calls)
    with torch.no_grad():
        ref(x, valid)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=True):
        assert not moe_module._use_grouped_mm(x)
    assert len(calls) == n


@pytest.mark.parametrize("arch", ["decoder", "encoder-decoder"])
def test_moe_model_trains_under_cpu_bf16_autocast(arch):
    # the experts' products come out bf16 under autocast while the residual stream is fp32:
    # the combine must still run (it raised "index_add_(): self (Float) and source (BFloat16)")
    # and give the fp32 forward's logits to bf16 precision, with gradients on every expert
    cfg = ModelConfig(arch=arch, vocab_size=32, d_model=C, n_heads=2, n_layers=2, d_ff=24, ffn="E*",
                      moe=MoEConfig(n_experts=4, top_k=2), max_seq_len=16)
    torch.manual_seed(0)
    model = build_model(cfg)
    ids = torch.randint(0, 32, (2, 8))
    kw = {"decoder_input_ids": ids} if arch == "encoder-decoder" else {}
    ref = model(ids, **kw).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, **kw).logits
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)
    out.float().square().mean().backward()
    experts = [p for n, p in model.named_parameters() if "w_in" in n]
    assert experts and all(p.grad is not None and p.grad.abs().sum() > 0 for p in experts)
