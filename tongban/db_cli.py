"""``tongban db``: the gateway host's database migrations (tongban.migrations).

    tongban db upgrade [--data-dir DIR]    every store to the code's revision
    tongban db current [--data-dir DIR]    each store's revision, and the code's

The stores are the configuration's (``gateway_db_url``, ``audit_url``; default the SQLite
files of the data directory). One line per store on stdout; a store that cannot be
migrated (the database is away, it is at a revision this code does not know, it holds
tables that are not the baseline's) is one line on stderr, the others are still done,
and the exit code is 1. A gateway never migrates: it refuses to start on a store that is
not at the code's revision.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tongban.primitives.errors import TongbanError

from .boundary import describe, display_url, scrub
from .config import Settings
from .parsing import DATA_DIR_HELP, command

__all__ = ["add_db"]


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(data_dir=args.data_dir)


def _failed(store: Any, exc: Exception) -> None:
    sentence = exc.detail if isinstance(exc, TongbanError) else describe(exc)[1]
    print(f"tongban: {store.name}: {scrub(sentence)}", file=sys.stderr)


def _upgrade(args: argparse.Namespace) -> int:
    from tongban import migrations

    code = 0
    for store in migrations.stores(_settings(args)):
        if store.url.startswith("sqlite:///"):  # a new data directory: its folder first
            Path(store.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            done = migrations.upgrade(store.url, store.chain, name=display_url(store.url))
        except Exception as exc:
            _failed(store, exc)
            code = 1
            continue
        if done.adopted:
            what = f"adopted (tables made before migrations, stamped {done.before})"
        elif done.before == done.after:
            what = "already current"
        else:
            what = f"upgraded from {done.before or 'empty'}"
        print(f"{store.name}: {display_url(store.url)} at {done.after}, {what}")
    return code


def _current(args: argparse.Namespace) -> int:
    from tongban import migrations

    code = 0
    for store in migrations.stores(_settings(args)):
        needed = migrations.head(store.chain)
        try:
            at = migrations.current(store.url, store.chain, name=display_url(store.url))
        except Exception as exc:
            _failed(store, exc)
            code = 1
            continue
        state = "current" if at == needed else "run `tongban db upgrade`"
        shown = display_url(store.url)
        print(f"{store.name}: {shown} at {at or 'none'}, code needs {needed}: {state}")
    return code


def add_db(sub: Any) -> None:
    db = command(sub, "db", "the gateway host's database migrations (Alembic)")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    up = command(
        db_sub, "upgrade", "migrate every store of the configuration to the code's revision"
    )
    cur = command(db_sub, "current", "show each store's revision and the one the code needs")
    for parser, func in ((up, _upgrade), (cur, _current)):
        parser.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            metavar="DIR",
            help=f"{DATA_DIR_HELP} (default: the configuration's data_dir)",
        )
        parser.set_defaults(func=func)
