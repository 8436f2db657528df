"""``archlab evaluate RUN_DIR [--split test]``: task metrics of a trained run, to eval.json."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from archlab.errors import ArchlabError

if TYPE_CHECKING:
    from archlab.evaluate.runner import DecodeOptions


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory made by archlab train")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="changes to the run's data section, e.g. data.max_source_chars=200 (evaluate the "
                        "trained model on other data of its task; recorded in the report)")
    p.add_argument("--split", default="test", choices=("test", "valid", "train"))
    p.add_argument("--which", default="auto", choices=("auto", "best", "final", "latest"),
                   help="which weights (default: best, else final)")
    p.add_argument("--max-examples", type=int, help="score only the first N examples of the split")
    from archlab.evaluate.runner import DecodeOptions

    d = DecodeOptions()  # the defaults (decoding ones from GenerationConfig)
    p.add_argument("--num-beams", type=int, default=d.num_beams,
                   help="beam size for generation tasks (1: greedy; default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="default %(default)s")
    p.add_argument("--length-penalty", type=float, default=d.length_penalty, help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    p.add_argument("--latency-examples", type=int, default=d.latency_examples,
                   help="also time this many examples one at a time (latency per example)")
    p.add_argument("--out", metavar="FILE", help="where to write the report (default: RUN_DIR/eval.json)")
    p.add_argument("--outputs", metavar="FILE", help="also write the decoded outputs, one a line")
    p.add_argument("--no-progress", action="store_true")


def decode_options(args: argparse.Namespace) -> DecodeOptions:
    """The DecodeOptions the flags ask for (checked)."""
    from archlab.evaluate.runner import DecodeOptions

    for name in ("num_beams", "max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise ArchlabError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_examples is not None and args.max_examples < 1:
        raise ArchlabError(f"--max-examples must be >= 1, got {args.max_examples}")
    return DecodeOptions(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                         length_penalty=args.length_penalty, batch_size=args.batch_size,
                         latency_examples=args.latency_examples, test_examples=args.max_examples)


def run(args: argparse.Namespace) -> int:
    """Evaluate a trained run on held-out data and write eval.json.

    Translation/summarization: BLEU and chrF (sacrebleu, with signatures), ROUGE-1/2/L,
    length ratio, repetition, decoding speed. Classification: accuracy and macro-F1. Language
    modelling: loss, perplexity and bits per byte."""
    from archlab.evaluate.runner import evaluate_run

    opts = decode_options(args)
    report = evaluate_run(args.run_dir, split=args.split, which=args.which, opts=opts, out=args.out,
                          outputs=args.outputs, progress=False if args.no_progress else None,
                          data_overrides=list(args.overrides))
    shown = {k: v for k, v in report.items() if k not in ("samples", "decode")}
    print(json.dumps(shown, indent=1))
    return 0


COMMANDS = [("evaluate", _add, run)]
