"""``archlab generate RUN_DIR (--prompt TEXT | --input FILE) [decoding options]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from archlab.errors import ArchlabError
from archlab.generate.config import LAYOUTS, STRATEGIES, GenerationConfig


def add_decoding_args(p: argparse.ArgumentParser) -> None:
    d = GenerationConfig()
    g = p.add_argument_group("decoding")
    g.add_argument("--strategy", choices=STRATEGIES, help="default: beam if --num-beams > 1, else greedy")
    g.add_argument("--num-beams", type=int, default=1, help="beam size (default 1)")
    g.add_argument("--num-return-sequences", type=int, default=1, help="n-best / samples per input")
    g.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    g.add_argument("--min-new-tokens", type=int, default=0)
    g.add_argument("--length-penalty", type=float, default=d.length_penalty)
    g.add_argument("--early-stopping", action="store_true", help="beam: stop at num_beams finished hypotheses")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, help="seed for sampling (reproducible outputs)")


def generation_config(args: argparse.Namespace, layout: str) -> GenerationConfig:
    strategy = args.strategy or ("beam" if args.num_beams > 1 else "greedy")
    return GenerationConfig(
        strategy=strategy, num_beams=args.num_beams, num_return_sequences=args.num_return_sequences,
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
        length_penalty=args.length_penalty, early_stopping=args.early_stopping,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        prompt_layout=layout).validate()


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (archlab train) or model directory")
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
    p.add_argument("--batch-size", type=int, default=16)
    add_decoding_args(p)


def default_layout(config: object | None) -> str:
    if config is None:
        return "raw"
    return "lm" if config.objective.base_name == "causal-lm" else "seq2seq"


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
    loaded = load_run(args.run_dir, args.which)
    tok = loaded.tokenizer
    if tok is None:
        raise ArchlabError(f"{loaded.model_path}: no tokenizer saved with the model")
    gcfg = generation_config(args, args.layout or default_layout(loaded.config))
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
