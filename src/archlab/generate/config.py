"""Decoding options (one dataclass, the ``generate`` section of YAML and the CLI flags).

:class:`GenerationConfig`'s field defaults are the one place decoding defaults are set:
evaluate's ``DecodeOptions``, compare's ``DecodeConfig``, the trainer's ``EvalConfig`` and the
``archlab generate`` / ``archlab evaluate`` flags read theirs through :func:`decoding_default`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from archlab.errors import ConfigError

STRATEGIES = ("greedy", "sample", "beam")
LAYOUTS = ("seq2seq", "lm", "raw")
BACKENDS = ("auto", "eager", "cpu-blocked", "compiled")  # see archlab.generate.backends


@dataclass
class GenerationConfig:
    """How to decode.

    ``prompt_layout`` says how an input becomes the model's prompt, matching the objective
    the model was trained with (``archlab.objectives``):

    - ``seq2seq`` (seq2seq, prefix-LM, span-corruption, denoising objectives): an
      encoder-decoder reads ``source <eos>`` and starts the decoder with its start token; a
      decoder-only / prefix-LM model reads ``<bos> source <sep>`` (the prefix-LM attends to it
      bidirectionally);
    - ``lm`` (causal-LM objective): the input is the start of the text, ``<bos> text``, to be
      continued (an encoder-decoder reads an empty source, ``<eos>``);
    - ``raw``: the ids are given to the model as they are (a converted Hugging Face model
      with its own tokenizer conventions); an encoder-decoder's decoder starts with its start
      token, a prefix-LM reads the whole prompt as its bidirectional prefix.
    """

    strategy: str = "greedy"  # greedy | sample | beam
    max_new_tokens: int = 128
    min_new_tokens: int = 0  # EOS is forbidden before this many new tokens
    # beam search (Sutskever et al. 2014; length penalty of Wu et al. 2016, as in fairseq/HF:
    # score = sum log p / length ** length_penalty, length counting the EOS)
    num_beams: int = 4  # the beam size when strategy is beam (and evaluate's / compare's default)
    num_return_sequences: int = 1  # n-best (beam) or independent samples
    length_penalty: float = 1.0
    early_stopping: bool = False  # True: stop a source once num_beams hypotheses ended
    # sampling (Holtzman et al. 2020 for top-p; Fan et al. 2018 for top-k)
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    seed: int | None = None  # a fixed seed makes sampling reproducible
    prompt_layout: str = "seq2seq"  # seq2seq | lm | raw
    max_source_len: int | None = None  # seq2seq: cut sources to the run's train.max_source_len
    use_cache: bool = True  # False: recompute the whole sequence each step (reference path)
    eos_token_id: int | None = None  # None: the tokenizer's (or model config's) EOS
    # how the weight products run (archlab.generate.backends): auto = cpu-blocked for a float32
    # model on CPU with more than one thread (measured faster there), else eager
    backend: str = "auto"  # auto | eager | cpu-blocked

    def validate(self) -> GenerationConfig:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"generate.{key}: {msg}")

        if self.strategy not in STRATEGIES:
            raise bad("strategy", f"{self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.prompt_layout not in LAYOUTS:
            raise bad("prompt_layout", f"{self.prompt_layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.max_source_len is not None and self.max_source_len < 1:
            raise bad("max_source_len", f"must be >= 1 or null, got {self.max_source_len}")
        if self.backend not in BACKENDS:
            raise bad("backend", f"{self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.max_new_tokens < 1:
            raise bad("max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise bad("min_new_tokens", f"must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if self.num_beams < 1:
            raise bad("num_beams", f"must be >= 1, got {self.num_beams}")
        if self.num_return_sequences < 1:
            raise bad("num_return_sequences", f"must be >= 1, got {self.num_return_sequences}")
        if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
            raise bad("num_return_sequences", f"{self.num_return_sequences} > num_beams={self.num_beams}")
        if self.strategy == "greedy" and self.num_return_sequences != 1:
            raise bad("num_return_sequences", "greedy decoding returns one sequence; use beam or sample")
        if self.temperature <= 0:
            raise bad("temperature", f"must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise bad("top_k", f"must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", f"must be in (0, 1], got {self.top_p}")
        return self


def decoding_default(name: str) -> Any:
    """The default of ``GenerationConfig.<name>``, read when called (so every place that takes
    its default from here follows a change of GenerationConfig)."""
    for f in dataclasses.fields(GenerationConfig):
        if f.name == name:
            return f.default
    raise KeyError(f"GenerationConfig has no field {name!r}")


def default_from_generation(name: str) -> Callable[[], Any]:
    """A dataclass ``default_factory`` giving ``GenerationConfig.<name>``'s default."""
    return lambda: decoding_default(name)
