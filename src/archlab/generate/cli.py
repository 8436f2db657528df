"""``archlab generate RUN_DIR (--prompt TEXT | --input FILE) [decoding options]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from archlab.errors import ArchlabError
from archlab.generate.config import BACKENDS, LAYOUTS, STRATEGIES, GenerationConfig, decoding_default


def add_decoding_args(p: argparse.ArgumentParser) -> None:
    """The decoding flags; their defaults are GenerationConfig's (read when the parser is made)."""
    d = decoding_default
    g = p.add_argument_group("decoding")
    g.add_argument("--strategy", choices=STRATEGIES,
                   help=f"default: beam if --num-beams > 1, else {d('strategy')}")
    g.add_argument("--num-beams", type=int,
                   help=f"beam size (default: 1 = greedy; {d('num_beams')} with --strategy beam)")
    g.add_argument("--num-return-sequences", type=int, default=d("num_return_sequences"),
                   help="n-best / samples per input")
    g.add_argument("--max-new-tokens", type=int, default=d("max_new_tokens"), help="default %(default)s")
    g.add_argument("--min-new-tokens", type=int, default=d("min_new_tokens"))
    g.add_argument("--length-penalty", type=float, default=d("length_penalty"))
    g.add_argument("--early-stopping", action="store_true", default=d("early_stopping"),
                   help="beam: stop at num_beams finished hypotheses")
    g.add_argument("--temperature", type=float, default=d("temperature"))
    g.add_argument("--top-k", type=int, default=d("top_k"))
    g.add_argument("--top-p", type=float, default=d("top_p"))
    g.add_argument("--seed", type=int, default=d("seed"), help="seed for sampling (reproducible outputs)")
    g.add_argument("--backend", choices=BACKENDS, default=d("backend"),
                   help="how the weight products run (default %(default)s: cpu-blocked for a float32 "
                        "model on CPU with several threads, else eager)")


def _apply_generation_overrides(args: argparse.Namespace) -> None:
    """``KEY=VALUE`` overrides of the decoding flags by their GenerationConfig names
    (``num_beams=4``); unknown keys are a one-line error naming the valid ones."""
    from dataclasses import fields

    from archlab.config import parse_override
    from archlab.errors import ConfigError

    names = sorted(f.name for f in fields(GenerationConfig) if hasattr(args, f.name))
    defaults = GenerationConfig()
    for text in getattr(args, "overrides", None) or []:
        path, value = parse_override(text)
        key = ".".join(path)
        if key not in names:
            raise ConfigError(f"override {text!r}: unknown decoding setting {key}; choose one of: "
                              f"{', '.join(names)}")
        default = getattr(defaults, key)
        want = int if default is None else type(default)  # (seed: int or null)
        ok = (value is None and default is None) or (isinstance(value, want) and not (want is int and isinstance(value, bool))) or \
            (want is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"override {text!r}: {key} must be {want.__name__}, got {value!r}")
        setattr(args, key, float(value) if want is float else value)


def generation_config(args: argparse.Namespace, layout: str) -> GenerationConfig:
    _apply_generation_overrides(args)
    beams = args.num_beams
    strategy = args.strategy or ("beam" if beams is not None and beams > 1 else decoding_default("strategy"))
    if beams is None:
        beams = decoding_default("num_beams") if strategy == "beam" else 1
    return GenerationConfig(
        strategy=strategy, num_beams=beams, num_return_sequences=args.num_return_sequences,
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
        length_penalty=args.length_penalty, early_stopping=args.early_stopping,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        prompt_layout=layout, backend=args.backend).validate()


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (archlab train), model directory, "
                   "or a GGUF checkpoint (.gguf file or model name such as smollm2-135m)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="decoding settings by their GenerationConfig names, e.g. num_beams=4 top_p=0.9 "
                        "(over the flags)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one input text")
    src.add_argument("--input", metavar="FILE", help="inputs, one example a line (batched)")
    p.add_argument("--output", metavar="FILE", help="write outputs here (default: stdout)")
    p.add_argument("--format", choices=("text", "jsonl"), default="text",
                   help="text: one output a line (n-best: n lines per input); jsonl: input, outputs, scores")
    p.add_argument("--layout", choices=LAYOUTS,
                   help="prompt layout (default: from the run's objective: causal-lm -> lm, else seq2seq; "
                        "raw for a bare model directory)")
    p.add_argument("--which", default="auto", choices=("auto", "best", "final", "latest"),
                   help="which weights of a run directory (default: best, else final)")
    from archlab.evaluate.runner import DecodeOptions

    p.add_argument("--batch-size", type=int, default=DecodeOptions().batch_size, help="default %(default)s")
    add_decoding_args(p)


def default_layout(config: object | None) -> str:
    """The run's layout (``objectives.layout.layout_for_objective``, shared with evaluate)."""
    from archlab.objectives.layout import layout_for_objective

    return layout_for_objective(None if config is None else config.objective.base_name)


def run(args: argparse.Namespace) -> int:
    """Generate text from a trained decoder, prefix-LM or encoder-decoder model.

    Greedy, sampling (temperature, top-k, top-p, seed) or beam search (length penalty, early
    stopping, n-best), batched, with a static KV cache."""
    from tqdm import tqdm

    from archlab.generate.api import generate
    from archlab.run import load_run

    if args.batch_size < 1:
        raise ArchlabError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise ArchlabError(f"--input {path}: no such file")
        try:
            texts = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ArchlabError(f"--input {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    else:
        texts = [args.prompt]
    from archlab.convert import resolve_checkpoint

    loaded = load_run(resolve_checkpoint(args.run_dir), args.which)
    tok = loaded.tokenizer
    if tok is None:
        raise ArchlabError(f"{loaded.model_path}: no tokenizer saved with the model")
    gcfg = generation_config(args, args.layout or default_layout(loaded.config))
    if loaded.config is not None:  # cut sources to the run's source budget, as in training
        gcfg.max_source_len = loaded.config.train.max_source_len
    n = gcfg.num_return_sequences
    lines: list[str] = []
    bar = tqdm(total=len(texts), unit="ex", desc="generate",
               disable=not (args.input and sys.stderr.isatty()))
    for i in range(0, len(texts), args.batch_size):
        chunk = texts[i : i + args.batch_size]
        res = generate(loaded.model, [tok.encode(t) for t in chunk], gcfg, special=tok.special)
        for j, text in enumerate(chunk):
            outs = [tok.decode(s) for s in res.sequences[j * n : (j + 1) * n]]
            if args.format == "jsonl":
                lines.append(json.dumps({"input": text, "outputs": outs,
                                         "scores": res.scores[j * n : (j + 1) * n]}, ensure_ascii=False))
            else:
                lines += [o.replace("\n", " ") for o in outs]
        bar.update(len(chunk))
    bar.close()
    text = "".join(line + "\n" for line in lines)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


COMMANDS = [("generate", _add, run)]
