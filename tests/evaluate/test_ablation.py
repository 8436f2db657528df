"""Source ablation: a seeded derangement of the test sources (no example keeps its own source,
repeated texts included), scored against the original references; an untrained model scores
the same either way, a model that reads its input loses its score. Every test that runs the
ablation checks what was decoded: each source moved to another example (an ablation that
swaps nothing, or only some, fails them; checked below by patching the swap out)."""

from __future__ import annotations

import itertools
import random

import pytest

from archlab.data import TextExample, Tokenizer
from archlab.errors import ArchlabError
from archlab.evaluate import ablation, runner
from archlab.evaluate.ablation import ablated_sources, derangement, source_ablation
from archlab.evaluate.runner import DecodeOptions, score_task
from archlab.model.transformer import build_model
from tests.helpers import tiny

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


def _copy_examples(n: int, seed: int = 0) -> list[TextExample]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 7)))
        out.append(TextExample(source=s, target=s))
    return out


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([ex.source for ex in _copy_examples(200, seed=1)], 300, n_sentinels=0,
                           min_frequency=1)


def test_derangement_is_a_permutation_without_fixed_points():
    for n in (2, 3, 5, 17, 64):
        for seed in range(30):
            p = derangement(n, seed)
            assert sorted(p) == list(range(n))
            assert all(p[i] != i for i in range(n)), (n, seed, p)


def test_derangement_is_seeded():
    assert derangement(40, seed=3) == derangement(40, seed=3)
    assert derangement(40, seed=3) != derangement(40, seed=4)
    # not a fixed rotation or other structured map: different seeds give many permutations
    assert len({tuple(derangement(6, s)) for s in range(200)}) > 100


def test_derangement_needs_two_examples():
    with pytest.raises(ArchlabError, match="at least 2"):
        derangement(1)


def test_repeated_source_texts_are_not_kept():
    # two positions share a text: a plain index derangement would hand some of them their own
    # text back (seed 0 does, for this list); the repair must not
    sources = ["a", "a", "b", "c", "d", "a"]
    kept = 0
    for seed in range(50):
        plain = [sources[p] for p in derangement(len(sources), seed)]
        kept += sum(x == y for x, y in zip(plain, sources))
        got = ablated_sources(sources, seed)
        assert sorted(got) == sorted(sources)
        assert all(x != y for x, y in zip(got, sources)), (seed, got)
    assert kept > 0  # the case the repair exists for does occur


def _copying_decode(calls):
    """Stands in for runner.decode: a perfect copy model (output = the source tokens)."""
    def decode(model, tok, sources, opts, *args, **kwargs):
        calls.append([list(s) for s in sources])
        return [list(s) for s in sources], 1.0, sum(len(s) for s in sources)
    return decode


def test_a_model_that_copies_its_input_loses_its_score(tok, monkeypatch):
    calls: list[list[list[int]]] = []
    monkeypatch.setattr(runner, "decode", _copying_decode(calls))
    examples = _copy_examples(24)
    opts = DecodeOptions(num_beams=1, max_new_tokens=16)
    normal = score_task(_Stub(), tok, examples, "pair", opts, objective="seq2seq")
    abl = source_ablation(_Stub(), tok, examples, opts, objective="seq2seq", seed=0)
    assert normal["bleu"] == pytest.approx(100.0) and normal["chrf"] == pytest.approx(100.0)
    assert abl["bleu"] < 25.0 and abl["chrf"] < 60.0, abl
    # the ablation decoded every test source, each at another example's position
    _assert_every_source_moved(calls[-1], [tok.encode(ex.source) for ex in examples])


def _assert_every_source_moved(decoded: list[list[int]], original: list[list[int]]) -> None:
    """``decoded`` holds the same sources as ``original``, none at its own example."""
    assert len(decoded) == len(original)
    assert sorted(map(tuple, decoded)) == sorted(map(tuple, original))
    kept = [i for i, (d, o) in enumerate(zip(decoded, original)) if d == o]
    assert not kept, f"examples {kept} kept their own source"


def _ablation_decodes(tok, monkeypatch, n: int = 24, **opts) -> tuple[list[list[int]], list[list[int]]]:
    """What source_ablation decoded for n test examples (copying decode), and their own sources."""
    calls: list[list[list[int]]] = []
    monkeypatch.setattr(runner, "decode", _copying_decode(calls))
    examples = _copy_examples(n)
    source_ablation(_Stub(), tok, examples, DecodeOptions(num_beams=1, **opts), objective="seq2seq", seed=5)
    k = opts.get("test_examples") or n
    return calls[-1], [tok.encode(ex.source) for ex in examples[:k]]


@pytest.mark.parametrize("swap", ["identity", "one pair", "all but one"])
def test_an_ablation_that_swaps_nothing_or_not_all_is_caught(tok, monkeypatch, swap):
    """The check the ablation tests rely on fails when the swap is patched out, wholly or partly."""
    def patched(sources, seed=0):
        out = list(sources)
        if swap == "one pair":
            out[0], out[1] = out[1], out[0]
        elif swap == "all but one":  # a rotation of all but the last position
            out[:-1] = out[1:-1] + out[:1]
        return out

    decoded, original = _ablation_decodes(tok, monkeypatch)
    _assert_every_source_moved(decoded, original)  # the real swap passes
    monkeypatch.setattr(ablation, "ablated_sources", patched)
    decoded, original = _ablation_decodes(tok, monkeypatch)
    with pytest.raises(AssertionError, match="kept their own source"):
        _assert_every_source_moved(decoded, original)


def test_every_source_moves_whenever_the_texts_allow_it():
    """Every multiset of texts in which no text fills more than half the positions (so that a
    derangement of the texts exists) gets one: all 2..7-long lists over 3 texts, 3 seeds each."""
    n_checked = 0
    for n in range(2, 8):
        for texts in itertools.product("abc", repeat=n):
            if 2 * max(texts.count(t) for t in set(texts)) > n:
                continue
            for seed in range(3):
                got = ablated_sources(list(texts), seed)
                assert sorted(got) == sorted(texts)
                assert all(g != t for g, t in zip(got, texts)), (texts, seed, got)
                n_checked += 1
    assert n_checked > 1000


def test_ablation_scores_the_test_subset(tok, monkeypatch):
    decoded, original = _ablation_decodes(tok, monkeypatch, test_examples=10)
    _assert_every_source_moved(decoded, original)  # the first 10, each moved within them


class _Stub:
    """A model object for score_task's checks (the decoding itself is patched)."""

    class cfg:  # noqa: N801
        arch = "encoder-decoder"

    def eval(self):
        return self


@pytest.mark.parametrize("arch", ["encoder-decoder", "decoder"])
def test_untrained_model_scores_the_same_with_swapped_sources(tok, arch, monkeypatch):
    sp = tok.special
    # untied, large random weights: outputs vary with the source (tied 0.02-scale weights
    # repeat the start token and score an empty 0.0 whatever the source, a vacuous check)
    model = build_model(tiny(arch, vocab_size=tok.vocab_size, pad_token_id=sp.pad, bos_token_id=sp.bos,
                             eos_token_id=sp.eos, tie_embeddings=False, init_std=0.5)).eval()
    examples = _copy_examples(40, seed=2)
    opts = DecodeOptions(num_beams=1, max_new_tokens=10)
    outs, _, _ = runner.decode(model, tok, [tok.encode(ex.source) for ex in examples], opts)
    assert len({tuple(o) for o in outs}) > 30  # the outputs do depend on the input
    normal = score_task(model, tok, examples, "pair", opts, objective="seq2seq")
    real, seen = runner.decode, []

    def spy(model, tok, sources, *a, **k):
        res = real(model, tok, sources, *a, **k)
        seen.append(([list(s) for s in sources], res[0]))
        return res

    monkeypatch.setattr(runner, "decode", spy)
    abl = source_ablation(model, tok, examples, opts, objective="seq2seq", seed=0)
    # equal scores must come from decoding swapped sources, not from decoding the same ones
    sources, swapped_outs = seen[-1]
    _assert_every_source_moved(sources, [tok.encode(ex.source) for ex in examples])
    assert sum(a != b for a, b in zip(swapped_outs, outs)) > 30  # so the outputs per example changed
    # the untrained model's chrF (about 4-5) is noise; with swapped sources it is the same
    # noise: across ablation seeds 0-2 it moved by up to 1.6 chrF points
    assert normal["chrf"] > 1.0
    assert abs(abl["chrf"] - normal["chrf"]) < 2.5, (normal["chrf"], abl)
    assert abs(abl["bleu"] - normal["bleu"]) < 1.0, (normal["bleu"], abl)


def test_label_examples_are_refused(tok):
    with pytest.raises(ArchlabError, match="pair task"):
        source_ablation(_Stub(), tok, [TextExample(text="x", label=0)] * 3, DecodeOptions(), objective="seq2seq")
