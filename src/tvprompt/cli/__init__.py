"""The ``tvp`` command.

Each sub-command lives in a module of this package exposing ``register(subparsers)``,
which adds its parser and sets ``func(args) -> int``; modules are found automatically and listed
in the order of their ``ORDER`` constant. Exit codes: 0 ok, 1 data error,
2 usage error. User errors print one line; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from .. import __version__
from ..errors import TvpError


def command_modules() -> list[str]:
    """Every module of this package that defines ``register``, ordered by its ``ORDER`` (default 50)."""
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    modules = [importlib.import_module(f"{__name__}.{n}") for n in names]
    return [m.__name__ for m in sorted((m for m in modules if hasattr(m, "register")),
                                        key=lambda m: (getattr(m, "ORDER", 50), m.__name__))]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line + exit 2, like every usage error
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tvp", description="Transferable visual prompts for multimodal LLMs.")
    parser.add_argument("--version", action="version", version=f"tvprompt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="tvprompt logs at DEBUG level (other libraries: warnings)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in command_modules():
        importlib.import_module(name).register(sub)
    return parser


def setup_logging(verbose: bool = False) -> None:
    """tvprompt's own logger at INFO (DEBUG with ``-v``); every other library only says WARNING and up,
    so ``-v`` shows tvprompt's details, not a flood from PIL, httpx or matplotlib."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("tvprompt").setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except TvpError as e:
        if args.debug:
            raise
        print(f"tvp {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"tvp {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tvp ... | head`: the reader went away; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
