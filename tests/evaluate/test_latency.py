"""Batch-1 latency timing: models take turns example by example (so machine-speed drift falls on
all of them), each example's fastest repeat counts, and the result is a mean in milliseconds."""

from __future__ import annotations

import math
from types import SimpleNamespace

import archlab.generate as gen
from archlab.evaluate import runner
from archlab.evaluate.runner import DecodeOptions, latency_ms_interleaved


def test_models_take_turns_and_the_fastest_repeat_counts(monkeypatch):
    calls = []
    clock = {"now": 0.0}

    def fake_generate(model, inputs, cfg, special=None):
        calls.append((model, inputs[0][0]))
        # "a" takes 2 s, except one hiccup of 10 s on its first timed decode; "b" takes 3 s
        hiccup = model == "a" and len(calls) == 3
        clock["now"] += 10.0 if hiccup else (2.0 if model == "a" else 3.0)

    monkeypatch.setattr(gen, "generate", fake_generate)
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock["now"])
    tok = SimpleNamespace(special=None)
    out = latency_ms_interleaved({"a": "a", "b": "b"}, tok, [[1], [2]], DecodeOptions(num_beams=1), repeats=2)
    assert calls[:2] == [("a", 1), ("b", 1)]  # one warm-up each
    # then, per repeat: example 1 by a, b; example 2 by a, b
    assert calls[2:] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)] * 2
    assert out == {"a": 2000.0, "b": 3000.0}  # the hiccup is dropped for a faster repeat


def test_no_sources_give_nan():
    out = latency_ms_interleaved({"m": None}, SimpleNamespace(special=None), [], DecodeOptions())
    assert math.isnan(out["m"])
