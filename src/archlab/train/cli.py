"""``archlab train CONFIG [key=value ...] [--resume] [--nproc N]``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from archlab.config import apply_overrides, load_yaml
from archlab.errors import ArchlabError, ConfigError


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="run config YAML (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. train.steps=200 model.d_model=256")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest valid checkpoint in the run directory")
    p.add_argument("--out", metavar="DIR", help="run directory (default: out_dir or runs/<name>)")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="launch N processes on this machine through torchrun (train.parallel: ddp unless "
                        "set); for several machines run torchrun yourself (README)")


def run(args: argparse.Namespace) -> int:
    """Train a model: any architecture with any objective that fits it, from a YAML config.

    Writes the run directory: config.yaml, tokenizer/, metrics.jsonl, checkpoints/, best/, model/.
    Interrupted runs continue bit-exactly with --resume."""
    from archlab.runtime import tune_malloc
    from archlab.train.config import micro_batches_per_process, run_config_from_dict
    from archlab.train.run import train_run

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out_dir={args.out}")
    raw = apply_overrides(load_yaml(args.config), overrides)
    if args.nproc is not None and "LOCAL_RANK" not in os.environ:
        if args.nproc < 1:
            raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
        parallel = (raw.get("train") or {}).get("parallel")
        if parallel == "none":
            raise ConfigError("--nproc with train.parallel=none: set train.parallel=ddp or fsdp (or leave it out)")
        if parallel is None:
            overrides.append("train.parallel=ddp")
            raw = apply_overrides(raw, ["train.parallel=ddp"])
        checked = run_config_from_dict(raw, where=args.config)  # bad input: one line here, not once per rank
        try:
            micro_batches_per_process(checked.train, args.nproc)
        except ConfigError as e:
            raise ConfigError(f"{args.config}: {e} (--nproc {args.nproc})") from None
        return _launch(args, overrides, checked.run_dir)
    cfg = run_config_from_dict(raw, where=args.config)
    model_keys = set((raw.get("model") or {}).keys()) if isinstance(raw.get("model"), dict) else set()
    tune_malloc()
    try:
        result = train_run(cfg, resume=args.resume, raw_model_keys=model_keys,
                           progress=False if args.no_progress else None)
    except RuntimeError as e:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise
        # a collective failed under torchrun: almost always another rank died (the launcher
        # names it); one line here instead of this rank's traceback
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ArchlabError(f"a collective operation failed, another rank has probably stopped ({msg})") from None
    finally:
        from archlab.train.parallel import shutdown_if_initialized

        shutdown_if_initialized()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 prints the summary
    summary = {"run_dir": str(result.run_dir), "step": result.step, "stopped": result.stopped,
               "train_time_s": round(result.train_time_s, 1), "tokens": result.tokens_seen,
               "eval": result.last_eval}
    print(json.dumps(summary))
    return 0


def _launch(args: argparse.Namespace, overrides: list[str], run_dir: Any) -> int:
    """``--nproc N``: start N copies of this command through torch.distributed's elastic
    launcher (what torchrun runs, standalone rendezvous on a free local port). If a rank dies
    the launcher stops the others; this prints one line naming it and the last checkpoint."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from archlab.train.parallel import rank_died_message

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # our one line instead
    child = ["-m", "archlab", "train", args.config, *overrides]
    child += ["--resume"] if args.resume else []
    child += ["--no-progress"] if args.no_progress else []
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=args.nproc, run_id=f"archlab-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0,
                          monitor_interval=0.2, start_method="spawn")
    env_threads = os.environ.get("OMP_NUM_THREADS")
    try:
        if env_threads is None and args.nproc > 1:  # as torchrun does: no oversubscribed cores
            os.environ["OMP_NUM_THREADS"] = "1"
        elastic_launch(config, sys.executable)(*child)
    except ChildFailedError as e:
        raise ArchlabError(f"{rank_died_message(e)}; the other ranks were stopped. "
                           + _checkpoint_note(run_dir)) from None
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    return 0


def _checkpoint_note(run_dir: Any) -> str:
    from archlab.run import RunDir
    from archlab.train.checkpoint import latest_valid_checkpoint

    ck = latest_valid_checkpoint(RunDir(run_dir).checkpoints, report=False)
    if ck is None:
        return f"{run_dir} has no checkpoint yet"
    return f"Last checkpoint: {ck} (intact); continue with --resume (any --nproc)"


COMMANDS = [("train", _add, run)]
