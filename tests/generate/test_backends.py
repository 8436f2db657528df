"""Decoding backends (archlab.generate.backends): the row-blocked product equals F.linear and is
taken only where it should be; it is applied to a model only inside a call, per thread, follows
in-place parameter changes, and leaves the model plain (nn.Linear, no graph breaks under
torch.compile) outside the call."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archlab import build_model
from archlab.errors import ArchlabError, ConfigError
from archlab.generate import GenerationConfig, generate
from archlab.generate import backends as B
from archlab.generate.backends import (
    FEW_ROWS,
    blocked_linear,
    cpu_blocked,
    decode_blocks,
    resolve_backend,
)
from tests.helpers import tiny


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class BmmCount:
    """Counts torch.bmm / torch.baddbmm calls per thread: the blocked path's only products
    (the model itself multiplies with F.linear and SDPA)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[int, int] = {}
        for name in ("bmm", "baddbmm"):
            real = getattr(torch, name)

            def counted(*a, _real=real, **k):
                tid = threading.get_ident()
                self.calls[tid] = self.calls.get(tid, 0) + 1
                return _real(*a, **k)

            monkeypatch.setattr(torch, name, counted)

    def here(self) -> int:
        return self.calls.get(threading.get_ident(), 0)


def _plain(model: nn.Module) -> None:
    """The model carries none of the backend's instance attributes and only plain nn.Linear."""
    for m in model.modules():
        assert "forward" not in vars(m)
    assert "lm_logits" not in vars(model)
    assert B._APPLIED == {}


@pytest.mark.parametrize("n_out", [8, 9, 384, 1153])  # divisible by the blocks or not
@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (2, 4), (8,)])  # leading dims: 1 to 8 rows
@pytest.mark.parametrize("bias", [True, False])
def test_blocked_linear_equals_f_linear(two_threads, n_out, shape, bias):
    g = torch.Generator().manual_seed(n_out)
    m = nn.Linear(48, n_out, bias=bias)
    with torch.no_grad():
        m.weight.copy_(torch.randn(n_out, 48, generator=g))
        if bias:
            m.bias.copy_(torch.randn(n_out, generator=g))
    x = torch.randn(*shape, 48, generator=g)
    ref = F.linear(x, m.weight, m.bias)
    assert decode_blocks(x, m.weight) == 2  # the split path is the one under test
    torch.testing.assert_close(blocked_linear(x, m.weight, m.bias), ref)
    with torch.inference_mode(), cpu_blocked(m):
        assert "forward" in vars(m)
        torch.testing.assert_close(m(x), ref)
    _plain(m)


def test_blocked_path_only_for_few_rows(two_threads):
    w = torch.randn(16, 8)
    few, many = torch.randn(FEW_ROWS, 8), torch.randn(FEW_ROWS + 1, 8)
    assert decode_blocks(few, w) == 2
    assert decode_blocks(many, w) == 0
    assert decode_blocks(few.t().contiguous().t(), w) == 0  # non-contiguous input
    assert decode_blocks(few.double(), w) == 0  # mixed dtypes
    assert decode_blocks(few, w.t().contiguous().t()) == 0  # non-contiguous weight
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert decode_blocks(few, w) == 0
    torch.set_num_threads(1)
    assert decode_blocks(few, w) == 0


def test_kept_views_follow_in_place_changes_and_are_remade_per_call(two_threads, monkeypatch):
    """Inside a call the one-row product reuses the views made on entry: an in-place change
    must show through them; a replaced parameter (m.double()) must be picked up by the next
    call, never served from the previous call's views."""
    count = BmmCount(monkeypatch)
    m = nn.Linear(8, 6)
    x = torch.randn(1, 8)
    with torch.inference_mode(), cpu_blocked(m):
        before = count.here()
        torch.testing.assert_close(m(x), F.linear(x, m.weight, m.bias))
        with torch.no_grad():
            m.weight.mul_(2.0)
            m.bias.add_(1.0)
        torch.testing.assert_close(m(x), F.linear(x, m.weight, m.bias))
        assert count.here() - before == 2  # both through the kept blocked views
    m.double()  # parameters replaced between calls
    with torch.inference_mode(), cpu_blocked(m):
        out = m(x.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, F.linear(x.double(), m.weight, m.bias))
    _plain(m)


def test_tied_lm_head_with_and_without_bias(two_threads):
    """The tied vocabulary projection (no module of its own) takes the blocked path through
    the model's lm_logits, with the bias when the model has one."""
    for lm_head_bias in (False, True):
        model = build_model(tiny("decoder", vocab_size=64, tie_embeddings=True,
                                 lm_head_bias=lm_head_bias)).eval()
        if model.lm_bias is not None:
            with torch.no_grad():
                model.lm_bias.normal_()
        h = torch.randn(1, 32)
        ref = model.lm_logits(h)
        with torch.inference_mode(), cpu_blocked(model):
            assert "lm_logits" in vars(model)
            torch.testing.assert_close(model.lm_logits(h), ref)
            model.embed_tokens.weight.mul_(2.0)  # in place: the kept views share the storage
            torch.testing.assert_close(model.lm_logits(h), F.linear(h, *model.lm_head_weight()))
        _plain(model)


def test_blocked_path_is_per_thread_and_the_model_is_restored_after_the_last_call(two_threads,
                                                                                  monkeypatch):
    """Another thread using the model meanwhile multiplies with F.linear; a second call on the
    model that ends first does not undo the first call's backend."""
    count = BmmCount(monkeypatch)
    model = build_model(tiny("decoder")).eval()
    x = torch.randint(0, 61, (1, 1))
    seen = {}

    def other_thread() -> None:
        with torch.inference_mode():
            seen["active"] = B.blocked_active()
            seen["logits"] = model(x).logits
        seen["bmm"] = count.here()

    with torch.inference_mode():
        ref = model(x).logits
        with cpu_blocked(model):
            t = threading.Thread(target=other_thread)
            t.start()
            t.join()
            with cpu_blocked(model):  # a second (nested) call on the same model
                pass
            assert "lm_logits" in vars(model)  # still applied: the first call runs on
            n = count.here()
            torch.testing.assert_close(model(x).logits, ref)
            assert count.here() > n
    assert seen["active"] is False and seen["bmm"] == 0
    torch.testing.assert_close(seen["logits"], ref)
    _plain(model)


def test_resolve_backend():
    model = build_model(tiny("decoder"))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert resolve_backend(model, "auto") == "cpu-blocked"
        assert resolve_backend(model.double(), "auto") == "eager"  # measured for float32 only
        assert resolve_backend(model, "cpu-blocked") == "cpu-blocked"
        torch.set_num_threads(1)
        assert resolve_backend(model.float(), "auto") == "eager"  # nothing to split over
    finally:
        torch.set_num_threads(before)
    assert resolve_backend(model, "eager") == "eager"
    with pytest.raises(ArchlabError, match="cpu-blocked: the model is on meta"):
        resolve_backend(model.to("meta"), "cpu-blocked")
    with pytest.raises(ConfigError, match="generate.backend: 'gpu' is not one of"):
        GenerationConfig(backend="gpu").validate()


@pytest.mark.parametrize("arch", ["decoder", "encoder-decoder"])
def test_generate_selects_the_backend_and_both_give_the_same_tokens(two_threads, monkeypatch, arch):
    count = BmmCount(monkeypatch)
    model = build_model(tiny(arch, vocab_size=64))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    cfg = GenerationConfig(max_new_tokens=6, prompt_layout="raw")
    eager = generate(model, [[5, 6, 7]], cfg, backend="eager")
    assert count.here() == 0
    blocked = generate(model, [[5, 6, 7]], cfg)  # auto: float32 on CPU with 2 threads
    assert count.here() > 0
    assert blocked.sequences == eager.sequences
    _plain(model)


@pytest.mark.parametrize("mode", ["grad", "inference"])
@pytest.mark.parametrize("arch", ["decoder", "encoder-decoder"])
def test_core_model_compiles_without_graph_breaks(arch, mode):
    """The core model is plain PyTorch: dynamo traces a whole forward as one graph (the
    blocked path inside every Linear cost 1-2 breaks per layer)."""
    torch._dynamo.reset()
    model = build_model(tiny(arch)).eval()
    ids = torch.randint(0, 61, (2, 8))
    kw = {"decoder_input_ids": ids} if arch == "encoder-decoder" else {}
    ctx = torch.inference_mode() if mode == "inference" else torch.enable_grad()
    with ctx:
        explained = torch._dynamo.explain(model)(ids, **kw)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
