"""``archlab train CONFIG [key=value ...] [--resume]``."""

from __future__ import annotations

import argparse
import json

from archlab.config import apply_overrides, load_yaml


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="run config YAML (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. train.steps=200 model.d_model=256")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest valid checkpoint in the run directory")
    p.add_argument("--out", metavar="DIR", help="run directory (default: out_dir or runs/<name>)")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")


def run(args: argparse.Namespace) -> int:
    """Train a model: any architecture with any objective that fits it, from a YAML config.

    Writes the run directory: config.yaml, tokenizer/, metrics.jsonl, checkpoints/, best/, model/.
    Interrupted runs continue bit-exactly with --resume."""
    from archlab.runtime import tune_malloc
    from archlab.train.config import run_config_from_dict
    from archlab.train.run import train_run

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out_dir={args.out}")
    raw = apply_overrides(load_yaml(args.config), overrides)
    cfg = run_config_from_dict(raw, where=args.config)
    model_keys = set((raw.get("model") or {}).keys()) if isinstance(raw.get("model"), dict) else set()
    tune_malloc()
    result = train_run(cfg, resume=args.resume, raw_model_keys=model_keys,
                       progress=False if args.no_progress else None)
    summary = {"run_dir": str(result.run_dir), "step": result.step, "stopped": result.stopped,
               "train_time_s": round(result.train_time_s, 1), "tokens": result.tokens_seen,
               "eval": result.last_eval}
    print(json.dumps(summary))
    return 0


COMMANDS = [("train", _add, run)]
