"""The token-classification objective: label alignment (first / every sub-token), the loss, each
family's tagging path (the decoder causal, prefix-LM and encoder bidirectional, the
encoder-decoder's encoder alone), and the mqar answer layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from archlab import build_model
from archlab.data import Tokenizer, tokenize_examples
from archlab.data.tags import tag_examples
from archlab.errors import ConfigError
from archlab.objectives import IGNORE, Example, SpecialTokens, make_objective
from tests.helpers import tiny

SP = SpecialTokens(vocab_size=61, first_normal=10)
RNG = np.random.default_rng(0)
N_TAGS = 5
ARCHS = ("encoder", "decoder", "prefix-lm", "encoder-decoder")


def _tagged(ids: list[int], word_ids: list[int], tags: list[int], cont: list[int] | None = None) -> Example:
    return Example(ids=ids, word_ids=word_ids, tags=tags, cont_tags=cont)


def test_labels_on_the_first_sub_token_or_on_every_sub_token():
    # three words: [11 12] [13] [14 15 16]; tags B-x, O, B-y; continuations I-x, O, I-y
    ex = _tagged([11, 12, 13, 14, 15, 16], [0, 0, 1, 2, 2, 2], [1, 0, 3], [2, 0, 4])
    first = make_objective("token-classification", SP, "encoder", 32).build([ex], RNG)
    assert first["input_ids"].tolist() == [[SP.cls, 11, 12, 13, 14, 15, 16, SP.sep]]
    assert first["tag_labels"].tolist() == [[IGNORE, 1, IGNORE, 0, 3, IGNORE, IGNORE, IGNORE]]
    every = make_objective("token-classification", SP, "encoder", 32, label_on="all").build([ex], RNG)
    assert every["tag_labels"].tolist() == [[IGNORE, 1, 2, 0, 3, 4, 4, IGNORE]]
    # cut to max_len - 2 tokens: the labels are cut with them (word 2 keeps its first piece)
    short = make_objective("token-classification", SP, "encoder", 6).build([ex], RNG)
    assert short["input_ids"].tolist() == [[SP.cls, 11, 12, 13, 14, SP.sep]]
    assert short["tag_labels"].tolist() == [[IGNORE, 1, IGNORE, 0, 3, IGNORE]]
    assert make_objective("token-classification", SP, "encoder", 6).truncated(ex)


def test_real_tokenizer_multi_piece_words():
    """With a byte-level BPE that splits words, label_on first labels one position per word (its
    first piece, with the word's tag), label_on all every position, later pieces of a B- word
    with its I- tag."""
    tok = Tokenizer.train(["a b c"] * 3, 400, min_frequency=1)  # too small a corpus to merge: words split
    names = ["O", "B-person", "I-person"]
    words = ["Kathmandu", "Obama", "yes"]
    (ex,) = tokenize_examples(tag_examples([(words, ["O", "B-person", "O"], 1)], names, "f"), tok, names)
    assert len(ex.ids) > len(words)  # some word has several pieces
    for label_on in ("first", "all"):
        b = make_objective("token-classification", tok.special, "encoder", 64, label_on=label_on).build([ex], RNG)
        lab = b["tag_labels"][0, 1:-1].tolist()
        pieces = [[lab[k] for k, w in enumerate(ex.word_ids) if w == i] for i in range(len(words))]
        assert [p[0] for p in pieces] == [0, 1, 0]  # each word's first piece: its tag
        later = [x for p in pieces for x in p[1:]]
        if label_on == "first":
            assert set(later) == {IGNORE}
        else:
            assert pieces[1][1:] == [2] * (len(pieces[1]) - 1) and set(pieces[0][1:]) <= {0}


def _model(arch: str, **kw):
    return build_model(tiny(arch, n_tags=N_TAGS, **kw)).eval()


def _logits(obj, model, ids: list[int]) -> torch.Tensor:
    ex = _tagged(ids, list(range(len(ids))), [0] * len(ids))
    return obj.forward(model, obj.build([ex], RNG), classify_tokens=True).token_logits[0]  # (T, n_tags)


@pytest.mark.parametrize("arch", ARCHS)
def test_context_per_family(arch):
    """Perturbing token j changes nothing at positions before j for the decoder (causal: left
    context only) and changes earlier positions for every other family (bidirectional)."""
    model = _model(arch)
    obj = make_objective("token-classification", SP, arch, 32)
    ids = [11, 12, 13, 14, 15, 16, 17]
    j = 4  # token index; row position j + 1 (after <cls>)
    with torch.no_grad():
        a = _logits(obj, model, ids)
        b = _logits(obj, model, ids[:j] + [40] + ids[j + 1 :])
    before = (a[: j + 1] - b[: j + 1]).abs().amax().item()  # <cls> and the tokens before j
    assert (a[j + 1] - b[j + 1]).abs().amax().item() > 1e-4  # the perturbed position itself
    if arch == "decoder":
        assert before == 0.0
    else:
        assert before > 1e-4


def test_encoder_decoder_tags_from_its_encoder_alone():
    model = _model("encoder-decoder")
    obj = make_objective("token-classification", SP, "encoder-decoder", 32)
    ids = [11, 12, 13, 14]
    with torch.no_grad():
        a = _logits(obj, model, ids)
        for p in model.decoder.parameters():
            p.add_(1.0)  # the decoder's weights play no part
        b = _logits(obj, model, ids)
        want = model.tag_head(model.encode(torch.tensor([[SP.cls, *ids, SP.sep]])))[0]
    assert torch.equal(a, b) and torch.allclose(a, want)


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_is_cross_entropy_over_the_labelled_tokens(arch):
    model = _model(arch).train()
    obj = make_objective("token-classification", SP, arch, 32)
    exs = [_tagged([11, 12, 13], [0, 0, 1], [1, 3]), _tagged([14, 15, 16, 17], [0, 1, 2, 2], [0, 4, 2])]
    batch = obj.build(exs, RNG)
    torch.manual_seed(1)
    out = obj.loss(model, batch)
    torch.manual_seed(1)  # (same dropout masks)
    logits = obj.forward(model, batch, classify_tokens=True).token_logits
    y = batch["tag_labels"]
    sel = y != IGNORE
    assert out.n_tokens == int(sel.sum()) == 5  # first pieces of the 5 words
    assert float(out.loss.detach()) == pytest.approx(float(F.cross_entropy(logits[sel], y[sel]).detach()), rel=1e-5)
    assert out.n_correct == int((logits[sel].argmax(-1) == y[sel]).sum())
    out.loss.backward()
    assert model.tag_head.out.weight.grad is not None and model.tag_head.out.weight.grad.abs().sum() > 0


def test_mqar_answer_slots_are_masked_and_labelled():
    """Probe pairs: <cls> source <sep> target with every predicted target token masked and
    labelled, the given ones kept (no loss); the loss is the LM head's over the vocabulary."""
    obj = make_objective("token-classification", SP, "encoder", 64)
    ex = Example(src=[10, 20, 11, 21], tgt=[30, 11, 21, 10, 20], tgt_given=[0, 1, 3])
    b = obj.build([ex], RNG)
    assert b["input_ids"].tolist() == [[SP.cls, 10, 20, 11, 21, SP.sep, 30, 11, SP.mask, 10, SP.mask]]
    assert b["labels"].tolist() == [[IGNORE] * 8 + [21, IGNORE, 20]]
    assert "tag_labels" not in b
    assert obj.batch_length(ex) == obj.budget.batch_length(4, 5)  # batched as the generative layouts are
    model = build_model(tiny("encoder")).train()
    out = obj.loss(model, b)
    assert out.n_tokens == 2 and 0 <= out.n_correct <= 2
    with torch.no_grad():
        model.eval()
        h = model.encode(b["input_ids"], b["attention_mask"])
        want = F.cross_entropy(model.lm_logits(h)[b["labels"] != IGNORE], b["labels"][b["labels"] != IGNORE])
        assert float(obj.loss(model, b).loss) == pytest.approx(float(want), rel=1e-5)
        pred = obj.predict(model, b)
    assert (pred[b["labels"] == IGNORE] == IGNORE).all() and (pred[b["labels"] != IGNORE] >= 0).all()


def test_prefix_lm_rows_are_whole_prefixes():
    obj = make_objective("token-classification", SP, "prefix-lm", 32)
    b = obj.build([_tagged([11, 12], [0, 1], [0, 1]), _tagged([11], [0], [0])], RNG)
    assert b["prefix_lengths"].tolist() == [4, 4]


def test_option_and_data_errors():
    with pytest.raises(ConfigError, match="label_on 'last' is not valid; choose one of: first, all"):
        make_objective("token-classification", SP, "encoder", 32, label_on="last")
    with pytest.raises(ConfigError, match="needs tags data"):
        make_objective("token-classification", SP, "encoder", 32).build([Example(ids=[11, 12])], RNG)
    with pytest.raises(ConfigError, match="label_on all needs the tag set"):
        make_objective("token-classification", SP, "encoder", 32, label_on="all").build(
            [_tagged([11], [0], [1])], RNG)
    with pytest.raises(ConfigError, match="token-classification is not supported"):
        make_objective("distillation", SP, "encoder", 32, teacher=".", base="token-classification")


def test_a_model_without_a_tag_head_says_so():
    model = build_model(tiny("encoder"))
    obj = make_objective("token-classification", SP, "encoder", 32)
    with pytest.raises(ValueError, match="no token-classification head; set model.n_tags > 0"):
        obj.loss(model, obj.build([_tagged([11], [0], [1])], RNG))
