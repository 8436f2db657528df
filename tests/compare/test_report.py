"""The verdict's inference-cost line: a clear latency winner is named with its margin,
latencies within LATENCY_TIE are reported as no clear difference, and classification is not
described as decoding."""

from __future__ import annotations

from archlab.compare.report import LATENCY_TIE, verdict


def _agg(entry: str, ms: float) -> dict:
    return {"entry": entry, "seeds": [0], "latency_ms_per_example": ms, "num_beams": 4,
            "kv_cache_bytes_per_example": 1000.0, "train_flops_per_example": 1.0, "train_time_s": 1.0}


def _latency_line(agg: list[dict], kind: str = "pair") -> str:
    return next(line for line in verdict(agg, kind, []) if line.startswith("Inference cost"))


def test_clear_latency_winner_is_named_with_its_margin():
    line = _latency_line([_agg("decoder", 30.0), _agg("encoder-decoder", 36.0)])
    assert "**decoder** has the lowest decoding latency (30.0 ms" in line
    assert "20% below encoder-decoder" in line


def test_close_latencies_are_no_clear_difference():
    close = 30.0 * (1 + LATENCY_TIE / 2)
    line = _latency_line([_agg("prefix-lm", close), _agg("decoder", 30.0)])
    assert "**decoder**" in line
    assert f"prefix-lm is within {LATENCY_TIE / 2:.0%} of it: not a clear difference" in line


def test_classification_is_not_called_decoding():
    line = _latency_line([_agg("encoder", 0.5), _agg("decoder", 0.9)], kind="label")
    assert "**encoder** classifies fastest (0.50 ms per example, batched)" in line
    assert "beam" not in line and "KV cache" not in line

