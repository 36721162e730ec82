"""argparse the one way every ``tongban`` command uses it: each option says its default.

:class:`HelpFormatter` appends ``(default: X)`` to an option's help, ``(required)`` to a
required one, and leaves a help that already names its default alone; a description or
epilog laid out over several lines is printed as written, a one-line one is wrapped.
:func:`command` adds a subcommand whose ``--help`` repeats the summary the parent lists.
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import Any

from .config import DEPARTMENTS

__all__ = [
    "DATA_DIR_HELP",
    "DEBUG_HELP",
    "HelpFormatter",
    "Parser",
    "adapter_url",
    "add_debug",
    "command",
    "version",
]

DATA_DIR_HELP = "data directory: DIR/keys, DIR/departments, DIR/audit.db, DIR/gateway.db"


def version() -> str:
    """The installed distribution's version."""
    try:
        return _dist_version("tongban")
    except PackageNotFoundError:  # running from a tree that was never installed
        return "unknown"


class HelpFormatter(argparse.HelpFormatter):
    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:  # laid out by hand (the top-level description, examples)
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is argparse.SUPPRESS or "(default" in text or "%(default)" in text:
            return text
        if action.required:
            return f"{text} (required)"
        if not action.option_strings:  # a positional
            return text
        if action.nargs == 0:  # a flag
            return f"{text} (default: off)" if action.default is False else text
        if action.default is None or action.default == []:
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subparsers (the same class) use :class:`HelpFormatter`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


DEBUG_HELP = "show Python tracebacks instead of one-line errors, and log at DEBUG"


def add_debug(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--debug``, on the top-level parser and (so it may follow the command) on every
    subcommand; there without a default of its own, which would override the top's."""
    if top:
        parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    else:
        parser.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help=f"{DEBUG_HELP} (default: off)",
        )


def command(sub: Any, name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand listed with ``summary``, whose own ``--help`` starts with it, and which
    takes ``--debug`` like the top-level parser."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=kwargs.pop("description", summary), **kwargs
    )
    add_debug(parser)
    return parser


def adapter_url(text: str) -> tuple[str, str]:
    """``--adapter NAME=URL`` (a department and its adapter's URL), for argparse."""
    name, sep, url = text.partition("=")
    if not sep or name not in DEPARTMENTS or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(
            f"expected NAME=URL with NAME one of {', '.join(DEPARTMENTS)}, e.g. "
            "health=http://127.0.0.1:8081"
        )
    return name, url.rstrip("/")
