"""The compiled decoding step (``generate.backend: compiled``): fixed-shape steps over a
StaticKVCache equal the ordinary cached path (tokens; logits in fp64) for every generative
family and position scheme, batched with left padding, greedy and beam; compiled with
torch.compile it traces one graph for all steps; what it does not support is refused."""

from __future__ import annotations

import pytest
import torch

from archlab.errors import ArchlabError
from archlab.generate import GenerationConfig, backends, generate
from tests.generate.test_generate import ARCHS, INPUTS, SP, peaky_model


@pytest.fixture
def uncompiled(monkeypatch):
    """The static path without torch.compile (the compiled function is the same Python)."""
    monkeypatch.setattr(backends, "compiled_step", lambda device: backends._static_step)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("position", ["rope", "learned", "t5-relative", "alibi"])
def test_static_steps_equal_the_cached_path(arch, position, uncompiled):
    model = peaky_model(arch, position).double()
    cfg = GenerationConfig(max_new_tokens=10)
    ref = generate(model, INPUTS, cfg, special=SP, output_logits=True, backend="eager")
    got = generate(model, INPUTS, cfg, special=SP, output_logits=True, backend="compiled")
    assert got.sequences == ref.sequences
    assert len(set(map(tuple, ref.sequences))) > 1  # the check is not vacuous
    for a, b in zip(got.logits, ref.logits):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("arch", ARCHS)
def test_static_beam_search_equals_the_cached_path(arch, uncompiled):
    model = peaky_model(arch).double()
    cfg = GenerationConfig(strategy="beam", num_beams=3, max_new_tokens=8, num_return_sequences=2)
    ref = generate(model, INPUTS, cfg, special=SP, backend="eager")
    got = generate(model, INPUTS, cfg, special=SP, backend="compiled")
    assert got.sequences == ref.sequences
    assert got.scores == pytest.approx(ref.scores, rel=1e-9)


def test_a_static_step_reads_unwritten_slots_as_masked(uncompiled):
    """A slot not yet written must not be attended: garbage planted in the free slots of the
    cache changes nothing (the mask, not zeros, keeps it out)."""
    from archlab.model.attention import StaticKVCache

    model = peaky_model("decoder").double()
    real_init = StaticKVCache.__init__

    def planted(self, *a, **k):
        real_init(self, *a, **k)
        self.k.normal_(0, 50.0)
        self.v.normal_(0, 50.0)

    ref = generate(model, INPUTS, GenerationConfig(max_new_tokens=6), special=SP, backend="eager")
    StaticKVCache.__init__ = planted
    try:
        got = generate(model, INPUTS, GenerationConfig(max_new_tokens=6), special=SP, backend="compiled")
    finally:
        StaticKVCache.__init__ = real_init
    assert got.sequences == ref.sequences


@pytest.mark.slow
def test_torch_compile_traces_one_graph_for_every_step():
    torch._dynamo.reset()
    backends._COMPILED.clear()
    from torch._dynamo.utils import counters

    counters.clear()
    model = peaky_model("decoder")
    cfg = GenerationConfig(max_new_tokens=12)
    ref = generate(model, INPUTS, cfg, special=SP, backend="eager")
    got = generate(model, INPUTS, cfg, special=SP, backend="compiled")
    assert got.sequences == ref.sequences
    first = counters["stats"]["unique_graphs"]
    assert first == 1, dict(counters["stats"])  # one graph for the 11 steps, no recompilation
    again = generate(model, INPUTS[::-1], cfg, special=SP, backend="compiled")  # same shapes
    assert again.sequences == generate(model, INPUTS[::-1], cfg, special=SP, backend="eager").sequences
    assert counters["stats"]["unique_graphs"] == first  # and no new one for another call


def test_unsupported_layers_are_refused_in_one_line():
    for over, what in (({"layers": "MA"}, "Mamba layers"), ({"ffn": "E*"}, "mixture-of-experts layers"),
                       ({"attn_window": 4}, "a sliding attention window")):
        model = peaky_model("decoder", **over)
        with pytest.raises(ArchlabError, match=f"generate.backend=compiled: the fixed-shape decoding step "
                                               f"does not support {what} yet"):
            generate(model, INPUTS, GenerationConfig(max_new_tokens=3), special=SP, backend="compiled")
