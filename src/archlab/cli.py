"""The ``archlab`` command. Each subcommand lives next to the code it drives."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from archlab.errors import ArchlabError

# Subcommands register themselves here: name -> (add_arguments, run). Later modules add
# train / generate / evaluate / convert / compare.
Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _commands() -> list[Command]:
    from archlab import info
    from archlab.compare import cli as compare_cli
    from archlab.convert import cli as convert_cli
    from archlab.data import cli as data_cli
    from archlab.evaluate import cli as evaluate_cli
    from archlab.generate import cli as generate_cli
    from archlab.train import cli as train_cli

    cmds: list[Command] = [*info.COMMANDS, *data_cli.COMMANDS, *train_cli.COMMANDS, *generate_cli.COMMANDS,
                           *evaluate_cli.COMMANDS, *convert_cli.COMMANDS, *compare_cli.COMMANDS]
    return cmds


def build_parser() -> argparse.ArgumentParser:
    from archlab import __version__

    parser = argparse.ArgumentParser(
        prog="archlab",
        description="Build, train, generate from, evaluate and compare every transformer family "
        "(encoder, decoder, prefix-LM, encoder-decoder).",
    )
    parser.add_argument("--version", action="version", version=f"archlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, add_args, run in _commands():
        help_text = (run.__doc__ or "").strip().splitlines()[0] if run.__doc__ else None
        p = sub.add_parser(name, help=help_text, description=(run.__doc__ or "").strip())
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except ArchlabError as e:
        rank = os.environ.get("RANK") if "LOCAL_RANK" in os.environ else None  # under torchrun
        where = f" [rank {rank}]" if rank not in (None, "0") else ""
        print(f"archlab {args.command}{where}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"archlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
