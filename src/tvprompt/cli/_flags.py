"""Old flag names kept working, with a warning naming the new one (one flag name per meaning)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

log = logging.getLogger("tvprompt.cli")


class _Deprecated(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kw: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        log.warning("%s is deprecated; use %s", option_string, self.new)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def deprecated_alias(parser: argparse.ArgumentParser | Any, old: str, new: str, dest: str, **kw: Any) -> None:
    """Accept ``old`` as a hidden alias of ``new`` (same ``dest``); using it logs a deprecation warning."""
    parser.add_argument(old, dest=dest, action=_Deprecated, new=new, help=argparse.SUPPRESS, **kw)
