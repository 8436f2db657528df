"""``archlab compare [CONFIG.yaml] [key=value ...] [--preset NAME] [--out DIR]``."""

from __future__ import annotations

import argparse
import json

from archlab.errors import ConfigError


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs="*", metavar="CONFIG.yaml | KEY=VALUE",
                   help="optional YAML merged over the preset, then dotted overrides "
                        "(e.g. train.steps=500 seeds=[0,1,2] budget.match=params)")
    p.add_argument("--preset", default=None,
                   help="demo (default: en-de translation sized for a 2-core CPU, ~24 min), "
                        "sweep (tuned per entry at each of three budgets, 3 seeds at the largest; 2-core CPU, see README), "
                        "ssm (transformers vs Mamba-2 and hybrid decoders; 2-core CPU, see README), "
                        "moe (dense vs mixture-of-experts; 2-core CPU, see README), "
                        "recall (MQAR: attention vs Mamba-1 vs Mamba-2 vs hybrid at two widths and two lengths), "
                        "copying (selective copying, induction heads, string copying, with prefix-LM and "
                        "encoder-decoder), "
                        "smoke (~2 min end-to-end check), t5-table2 (the T5 paper's grid; for GPUs)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/compare-<name>); "
                   "running again with the same DIR resumes")
    p.add_argument("--executor", choices=("local", "ray"), default=None,
                   help="where the jobs run: local (this machine; default) or ray (each job a Ray task on a "
                        "cluster; pip install archlab[ray]); same as executor=...")
    p.add_argument("--ray-address", metavar="auto|local|HOST:PORT", default=None,
                   help="with --executor ray: the cluster to join (auto: the one `ray start` began here; local: "
                        "a new one on this machine; default: RAY_ADDRESS, else the one `ray start` began, else "
                        "a new one); same as ray.address=...")


def run(args: argparse.Namespace) -> int:
    """Budget-matched head-to-head of architectures on one task, with a report.

    Sizes every entry (architecture x objective x optional pretraining) to the same parameter
    or FLOP budget, trains them with the same tokenizer, data order, steps and seeds, decodes
    and scores the same held-out test examples, and writes results.json, results.csv,
    report.md and report.html (tables, plots, sample outputs, verdict) to the output directory.
    An interrupted compare picks up where it stopped."""
    from archlab.compare.config import load_compare_config
    from archlab.compare.runner import compare
    from archlab.runtime import tune_malloc

    configs = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if len(configs) > 1:
        raise ConfigError(f"give at most one CONFIG.yaml, got {len(configs)}: {', '.join(configs)}")
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if args.executor:
        overrides.append(f"executor={args.executor}")
    if args.ray_address:  # (JSON-quoted: a string, whatever YAML would read into HOST:PORT)
        overrides.append(f"ray.address={json.dumps(args.ray_address)}")
    cfg = load_compare_config(configs[0] if configs else None, overrides, args.preset)
    tune_malloc()
    out = compare(cfg)
    print(f"report: {out / 'report.html'}")
    print((out / "report.md").read_text().split("## Results")[0].strip())
    return 0


COMMANDS = [("compare", _add, run)]
