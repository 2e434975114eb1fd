"""`tvp completion SHELL`: a shell completion script for every command and flag (needs shtab)."""

from __future__ import annotations

import argparse

ORDER = 95
SHELLS = ("bash", "zsh", "tcsh")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("completion", help="print a shell completion script (bash, zsh, tcsh)",
                       description="Print a completion script, e.g. `tvp completion bash > ~/.local/share/"
                                   "bash-completion/completions/tvp` or `eval \"$(tvp completion bash)\"`.")
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(func=cmd_completion)


def cmd_completion(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from . import build_parser

    try:
        import shtab
    except ImportError:
        raise UsageError("shell completion needs shtab: pip install 'tvprompt[completion]'") from None
    print(shtab.complete(build_parser(), shell=args.shell))
    return 0
