"""The decoding path of ``archlab.model.layers.linear``: the row-blocked bmm equals F.linear,
is taken only where it should be, and follows parameter changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archlab.model.layers import FEW_ROWS, Linear, decode_blocks, linear


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("n_out", [8, 9, 384, 1153])  # divisible by the blocks or not
@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (2, 4), (8,)])  # leading dims: 1 to 8 rows
@pytest.mark.parametrize("bias", [True, False])
def test_blocked_linear_equals_f_linear(two_threads, n_out, shape, bias):
    g = torch.Generator().manual_seed(n_out)
    w = torch.randn(n_out, 48, generator=g)
    b = torch.randn(n_out, generator=g) if bias else None
    x = torch.randn(*shape, 48, generator=g)
    m = Linear(48, n_out, bias=bias)
    with torch.no_grad():
        m.weight.copy_(w)
        if bias:
            m.bias.copy_(b)
    with torch.inference_mode():
        assert decode_blocks(x, w) == 2  # the split path is the one under test
        ref = F.linear(x, w, b)
        torch.testing.assert_close(linear(x, w, b), ref)
        torch.testing.assert_close(m(x), ref)


def test_blocked_path_only_for_few_rows_in_inference(two_threads):
    w = torch.randn(16, 8)
    few, many = torch.randn(FEW_ROWS, 8), torch.randn(FEW_ROWS + 1, 8)
    assert decode_blocks(few, w) == 0  # grad mode (training, ordinary forwards): F.linear
    with torch.no_grad():
        assert decode_blocks(few, w) == 0
    with torch.inference_mode():
        assert decode_blocks(few, w) == 2
        assert decode_blocks(many, w) == 0
        assert decode_blocks(few.t().contiguous().t(), w) == 0  # non-contiguous input
        assert decode_blocks(few.double(), w) == 0  # mixed dtypes
        torch.set_num_threads(1)
        assert decode_blocks(few, w) == 0


def test_linear_module_follows_parameter_changes(two_threads):
    m = Linear(8, 6)
    x = torch.randn(1, 8)
    with torch.inference_mode():
        m(x)  # makes the blocked views
    with torch.no_grad():
        m.weight.mul_(2.0)  # in place: the views see it
    with torch.inference_mode():
        torch.testing.assert_close(m(x), F.linear(x, m.weight, m.bias))
    m.double()  # parameters replaced: the views are remade
    with torch.inference_mode():
        out = m(x.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, F.linear(x.double(), m.weight, m.bias))


@pytest.mark.parametrize("n_out", [8, 9])  # divisible by the blocks (kept views) or not
@pytest.mark.parametrize("bias", [True, False])
def test_decode_views_equal_f_linear_and_are_dropped_on_exit(two_threads, n_out, bias):
    from archlab.model import layers
    from archlab.model.layers import decode_views

    m = Linear(48, n_out, bias=bias)
    one, few = torch.randn(1, 1, 48), torch.randn(3, 48)
    with torch.inference_mode(), decode_views():
        for _ in range(2):  # the second call reuses the kept views
            torch.testing.assert_close(m(one), F.linear(one, m.weight, m.bias))
            torch.testing.assert_close(m(few), F.linear(few, m.weight, m.bias))
        kept = layers._STATE.views
        with decode_views():  # nested: the outer context's views stay in use
            assert layers._STATE.views is kept
        assert layers._STATE.views is kept
        assert len(kept) == 1
    assert layers._STATE.views is None


def test_decode_views_keep_one_plan_per_weight_and_bias(two_threads):
    """A tied weight can meet two biases (an LM head with and without its bias)."""
    from archlab.model.layers import decode_views

    w, b = torch.randn(16, 8), torch.randn(16)
    x = torch.randn(1, 8)
    with torch.inference_mode(), decode_views():
        torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b))
        torch.testing.assert_close(linear(x, w), F.linear(x, w))
        torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b))
        w.mul_(2.0)  # in place: the kept views share the storage
        torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b))


def test_decode_views_are_per_thread():
    """One thread's generate call neither sees nor ends another thread's kept views."""
    import threading

    from archlab.model import layers
    from archlab.model.layers import decode_views

    seen = []
    with decode_views():
        t = threading.Thread(target=lambda: seen.append(layers._STATE.views))
        t.start()
        t.join()
        assert layers._STATE.views is not None
    assert seen == [None]
    assert layers._STATE.views is None
