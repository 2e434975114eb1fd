"""The ``tvp`` command.

Each sub-command lives in a module of this package exposing ``register(subparsers)``,
which adds its parser and sets ``func(args) -> int``. Exit codes: 0 ok, 1 data error,
2 usage error. User errors print one line; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__
from ..errors import TvpError

# Sub-command modules, in the order `tvp --help` lists them.
COMMAND_MODULES = ["prompt_cmds", "tasks_cmd", "shapeworld_cmd", "zoo_cmd"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line + exit 2, like every usage error
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tvp", description="Transferable visual prompts for multimodal LLMs.")
    parser.add_argument("--version", action="version", version=f"tvprompt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
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
