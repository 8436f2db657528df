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
    from archlab.evaluate import embed as embed_cli
    from archlab.generate import cli as generate_cli
    from archlab.train import cli as train_cli

    cmds: list[Command] = [*info.COMMANDS, *data_cli.COMMANDS, *train_cli.COMMANDS, *generate_cli.COMMANDS,
                           *evaluate_cli.COMMANDS, *embed_cli.COMMANDS, *convert_cli.COMMANDS,
                           *compare_cli.COMMANDS]
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
        p.set_defaults(_run=run, _parser=p)
        _mark_overrides(p)
    return parser


def _mark_overrides(p: argparse.ArgumentParser) -> None:
    """Note on ``p`` (and its own subcommands) which positional list takes ``KEY=VALUE``
    overrides, so that :func:`main` can add the ones given after an option to it."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _mark_overrides(child)
        elif not action.option_strings and action.nargs == "*" and "KEY=VALUE" in str(action.metavar):
            p.set_defaults(_overrides=action.dest, _parser=p)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse with ``KEY=VALUE`` overrides allowed before or after options: argparse gives a
    positional list only the words before the first option, so the rest come back unknown
    and are appended, in order, to the subcommand's override list. Anything else unknown is
    an error of that subcommand (exit 2), as plain ``parse_args`` would give."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        dest = getattr(args, "_overrides", None)
        sub = getattr(args, "_parser", parser)
        bad = [x for x in extra if dest is None or x.startswith("-") or "=" not in x]
        if bad:
            sub.error(f"unrecognized arguments: {' '.join(bad)}")
        getattr(args, dest).extend(extra)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
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
