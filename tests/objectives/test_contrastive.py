"""The contrastive objective: InfoNCE with in-batch negatives equals the hand-computed loss,
and each family pools its own hidden states (causal last-token pooling ignores padding)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from archlab import build_model
from archlab.errors import ConfigError
from archlab.model.transformer import ModelOutput
from archlab.objectives import Contrastive, Example, SpecialTokens, make_objective
from archlab.train.parallel import may_leave_parameters_unused
from tests.helpers import tiny

SP = SpecialTokens(vocab_size=61, first_normal=10)
RNG = np.random.default_rng(0)


def _text(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(SP.first_normal, 61, n).tolist()


class FixedHidden(torch.nn.Module):
    """A stand-in model returning given hidden states (B, T, C), to compute the loss by hand."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, input_ids, attention_mask=None, **kw):  # noqa: ANN001, ANN003
        assert input_ids.shape == self.hidden.shape[:2]
        return ModelOutput(None, self.hidden * self.w)


def _hand_infonce(q: list[list[float]], p: list[list[float]], tau: float, symmetric: bool) -> float:
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    q, p = [unit(v) for v in q], [unit(v) for v in p]
    s = [[sum(a * b for a, b in zip(qi, pj)) / tau for pj in p] for qi in q]

    def ce(rows):
        return sum(-rows[i][i] + math.log(sum(math.exp(x) for x in rows[i])) for i in range(len(rows))) / len(rows)

    if not symmetric:
        return ce(s)
    return 0.5 * (ce(s) + ce([list(col) for col in zip(*s)]))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_loss_equals_hand_computed_infonce(symmetric, tau):
    """Two pairs of 1-token texts (<cls> x <sep>, mean pooling over 3 slots): the loss is
    CE(cos(q_i, p_j) / tau, i) computed here with plain floats."""
    obj = make_objective("contrastive", SP, "encoder", 16, temperature=tau, symmetric=symmetric)
    exs = [Example(src=[11], tgt=[12]), Example(src=[13], tgt=[14])]
    batch = obj.build(exs, RNG)
    assert batch["input_ids"].tolist() == [[5, 11, 4], [5, 13, 4], [5, 12, 4], [5, 14, 4]]  # queries, then positives
    # hidden states per slot; the mean over the three slots is the embedding
    h = torch.tensor([[[3.0, 0.0], [0.0, 0.0], [0.0, 0.0]],    # q0 mean (1, 0)
                      [[0.0, 1.5], [0.0, 1.5], [0.0, 0.0]],    # q1 mean (0, 1)
                      [[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]],    # p0 mean (1, 1)
                      [[-3.0, 3.0], [0.0, 3.0], [0.0, 0.0]]])  # p1 mean (-1, 2)
    model = FixedHidden(h).train()
    out = obj.loss(model, batch)
    want = _hand_infonce([[1, 0], [0, 1]], [[1, 1], [-1, 2]], tau, symmetric)
    assert float(out.loss.detach()) == pytest.approx(want, rel=1e-6)
    assert out.n_tokens == 2 and out.n_correct == 2  # q0 -> p0 (cos 0.71 > -0.45), q1 -> p1 (0.89 > 0.71)
    out.loss.backward()
    assert model.w.grad is not None


def test_symmetric_differs_when_the_matrix_is_not_symmetric():
    base = _hand_infonce([[1, 0], [0, 1]], [[1, 1], [-1, 2]], 0.05, False)
    sym = _hand_infonce([[1, 0], [0, 1]], [[1, 1], [-1, 2]], 0.05, True)
    assert abs(base - sym) > 1e-3  # the symmetric test above checks a different number


def _embed(model, obj, texts):
    b = obj.text_batch(texts)
    with torch.no_grad():
        return obj.embed(model.eval(), b)[0]


@pytest.mark.parametrize("arch", ["decoder", "prefix-lm", "encoder", "encoder-decoder"])
def test_embedding_does_not_depend_on_padding(arch):
    """A text embedded alone equals the same text right-padded beside a longer one (every
    family; for a decoder this is last-token pooling skipping the padding)."""
    model = build_model(tiny(arch, vocab_size=61))
    obj = make_objective("contrastive", SP, arch, 32)
    short, long = _text(4, 1), _text(11, 2)
    alone = _embed(model, obj, [short])
    padded = _embed(model, obj, [short, long])
    assert obj.text_batch([short, long])["attention_mask"][0].sum() < 13  # the short row is padded
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)


def test_decoder_pools_the_last_real_token():
    """Decoder: the state at <sep>, the last real slot (not the last slot of the padded row)."""
    model = build_model(tiny("decoder", vocab_size=61)).eval()
    obj = make_objective("contrastive", SP, "decoder", 32)
    assert obj.pooling == "last"
    b = obj.text_batch([_text(3, 3), _text(9, 4)])
    with torch.no_grad():
        h = model.decode(b["input_ids"], b["attention_mask"])
        emb = obj.embed(model, b)[0]
    want = torch.nn.functional.normalize(torch.stack([h[0, 4], h[1, 10]]), dim=-1)  # <sep> of each row
    torch.testing.assert_close(emb, want)
    wrong = torch.nn.functional.normalize(h[0, -1], dim=-1)  # a pad slot of the short row
    assert not torch.allclose(emb[0], wrong, atol=1e-3)


def test_encoder_and_encoder_decoder_mean_pool_the_encoder():
    """Encoder and encoder-decoder: the mean of the encoder's states over real tokens; the
    encoder-decoder's decoder never runs (no gradient reaches it)."""
    for arch in ("encoder", "encoder-decoder"):
        model = build_model(tiny(arch, vocab_size=61))
        obj = make_objective("contrastive", SP, arch, 32)
        assert obj.pooling == "mean"
        b = obj.text_batch([_text(3, 5), _text(7, 6)])
        with torch.no_grad():
            h = model.eval().encode(b["input_ids"], b["attention_mask"])
            emb = obj.embed(model, b)[0]
        m = b["attention_mask"].unsqueeze(-1).float()
        torch.testing.assert_close(emb, torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
        model.train()
        obj.loss(model, obj.build([Example(src=_text(3, 7), tgt=_text(5, 8)),
                                   Example(src=_text(4, 9), tgt=_text(2, 10))], RNG)).loss.backward()
        assert model.embed_tokens.weight.grad is not None
        if arch == "encoder-decoder":
            assert all(p.grad is None for p in model.decoder.parameters())


def test_prefix_lm_reads_the_text_bidirectionally():
    """Prefix-LM: the whole text is the prefix, so its first token sees the last one (a
    decoder's does not), and the embedding is the mean over the prefix."""
    model = build_model(tiny("prefix-lm", vocab_size=61)).eval()
    obj = make_objective("contrastive", SP, "prefix-lm", 32)
    a, b_ = _text(6, 11), _text(6, 11)
    b_[-1] = (b_[-1] + 1 - SP.first_normal) % (61 - SP.first_normal) + SP.first_normal  # change the last token
    ba, bb = obj.text_batch([a]), obj.text_batch([b_])
    with torch.no_grad():
        ha = model.decode(ba["input_ids"], ba["attention_mask"], prefix_lengths=ba["prefix_lengths"])
        hb = model.decode(bb["input_ids"], bb["attention_mask"], prefix_lengths=bb["prefix_lengths"])
        causal = model.decode(ba["input_ids"], ba["attention_mask"])
        emb = obj.embed(model, ba)[0]
    assert not torch.allclose(ha[0, 0], hb[0, 0])  # the first slot saw the change
    assert not torch.allclose(ha[0, 0], causal[0, 0])  # and it is not the causal reading
    torch.testing.assert_close(emb[0], torch.nn.functional.normalize(ha[0].mean(0), dim=-1))


def test_options_and_lengths():
    with pytest.raises(ConfigError, match="temperature"):
        make_objective("contrastive", SP, "encoder", 32, temperature=0)
    with pytest.raises(ConfigError, match="pooling 'cls'.*auto, mean, last, first"):
        make_objective("contrastive", SP, "encoder", 32, pooling="cls")
    with pytest.raises(ConfigError, match="symmetric"):
        make_objective("contrastive", SP, "encoder", 32, symmetric="yes")
    obj = make_objective("contrastive", SP, "decoder", 32, pooling="mean", max_source_len=4, max_target_len=6)
    assert isinstance(obj, Contrastive) and obj.pooling == "mean" and obj.context == 8
    ex = Example(src=_text(9, 1), tgt=_text(3, 2))
    assert obj.truncated(ex) and not obj.truncated(Example(src=_text(4, 1), tgt=_text(6, 2)))
    assert obj.batch_length(ex) == 2 * (4 + 2)  # two rows of the longer side as cut, with specials
    b = obj.build([ex], RNG)
    assert b["input_ids"].shape == (2, 6) and b["class_labels"].tolist() == [0]
    assert may_leave_parameters_unused(build_model(tiny("decoder")), "contrastive")


def test_distillation_refuses_a_contrastive_base():
    with pytest.raises(ConfigError, match="base: contrastive is not supported"):
        make_objective("distillation", SP, "encoder", 32, teacher="some-dir", base="contrastive")
