"""One default for each decoding option, in one place: GenerationConfig's field defaults.
Every other path to a decoding call (evaluate's DecodeOptions and flags, compare's DecodeConfig,
the trainer's EvalConfig, the generate flags) resolves to it, and follows it when it changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from archlab.generate import config as gconfig


def resolved() -> dict[str, dict[str, Any]]:
    """{option: {path: the value that path decodes with when the user sets nothing}}."""
    from archlab.cli import build_parser
    from archlab.compare.config import DecodeConfig
    from archlab.evaluate.cli import decode_options
    from archlab.evaluate.runner import DecodeOptions, _gen_config
    from archlab.generate.cli import generation_config
    from archlab.train.config import EvalConfig, RunConfig

    parser = build_parser()  # flag defaults are read when the parser is made
    evaluate_flags = decode_options(parser.parse_args(["evaluate", "runs/x"]))
    generate_flags = generation_config(parser.parse_args(["generate", "runs/x", "--prompt", "a"]), "lm")
    generate_beam = generation_config(
        parser.parse_args(["generate", "runs/x", "--prompt", "a", "--strategy", "beam"]), "lm")
    out: dict[str, dict[str, Any]] = {}
    for name in ("max_new_tokens", "num_beams", "length_penalty"):
        paths = {
            "GenerationConfig()": getattr(gconfig.GenerationConfig(), name),
            "DecodeOptions()": getattr(DecodeOptions(), name),
            "evaluate decoding": getattr(_gen_config(DecodeOptions(), "seq2seq"), name),
            "archlab evaluate flags": getattr(evaluate_flags, name),
            "compare DecodeConfig()": getattr(DecodeConfig(), name),
            "archlab generate flags": getattr(generate_beam if name == "num_beams" else generate_flags, name),
        }
        if name == "max_new_tokens":  # the trainer's periodic decoding is greedy by design
            paths["EvalConfig()"] = EvalConfig().max_new_tokens
            paths["RunConfig().eval"] = RunConfig().eval.max_new_tokens
        out[name] = paths
    return out


def test_every_path_resolves_to_the_generation_config_default():
    for name, paths in resolved().items():
        one = gconfig.decoding_default(name)
        assert getattr(gconfig.GenerationConfig(), name) == one
        assert paths == {p: one for p in paths}, name


def test_every_path_follows_a_change_of_the_one_default(monkeypatch):
    @dataclass
    class Changed(gconfig.GenerationConfig):
        max_new_tokens: int = 7
        num_beams: int = 3
        length_penalty: float = 0.5

    before = resolved()
    monkeypatch.setattr(gconfig, "GenerationConfig", Changed)
    after = resolved()
    for name, value in (("max_new_tokens", 7), ("num_beams", 3), ("length_penalty", 0.5)):
        assert all(v != value for v in before[name].values())  # the change is a change
        assert after[name] == {p: value for p in after[name]}, name


def test_unknown_option_is_a_key_error():
    with pytest.raises(KeyError, match="no field 'beams'"):
        gconfig.decoding_default("beams")
