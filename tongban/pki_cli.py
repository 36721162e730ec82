"""``tongban pki``: the deployment's private CA and its certificates (tongban/pki.py).

    tongban pki init  --data-dir DIR
    tongban pki issue NAME --data-dir DIR [--days N] [--san NAME_OR_IP ...] [--renew]
    tongban pki show  --data-dir DIR

``init`` and ``issue`` are idempotent and print JSON (paths, names, the end of validity;
never key material); ``show`` prints a table of every certificate with its expiry, marking
those within 30 days of it. Files live in ``DIR/pki`` (docs/transport.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import pki
from .boundary import MissingPrerequisite
from .parsing import DATA_DIR_HELP, command

__all__ = ["add_pki"]

_STYLE = {"ok": "green", "expires soon": "yellow", "expired": "bold red", "other CA": "red"}


def _init(args: argparse.Namespace) -> int:
    print(json.dumps(pki.init(pki.pki_dir(args.data_dir)).summary(), indent=2))
    return 0


def _issue(args: argparse.Namespace) -> int:
    issued = pki.issue(
        pki.pki_dir(args.data_dir),
        args.name,
        days=args.days,
        extra_names=args.san,
        renew=args.renew,
    )
    print(json.dumps(issued.summary(), indent=2))
    return 0


def _show(args: argparse.Namespace) -> int:
    where = pki.pki_dir(args.data_dir)
    ca = where / "ca.pem"
    if not ca.exists():
        raise MissingPrerequisite(
            f"no CA in {where.absolute()}: run `tongban pki init --data-dir "
            f"{args.data_dir.absolute()}`"
        )
    table = Table(title=f"certificates in {where.absolute()}")
    for column in ("name", "subject", "names", "not after (UTC)", "days left", "state"):
        table.add_column(column)
    rows: list[tuple[str, pki.CertificateStatus]] = [("ca", pki.status(ca))]
    rows += [(name, pki.status(where / f"{name}.pem", ca_path=ca)) for name in pki.names(where)]
    for name, st in rows:
        style = _STYLE.get(st.state, "")
        table.add_row(
            name,
            st.subject,
            ", ".join(st.names) or "-",
            st.not_after.strftime("%Y-%m-%d %H:%M"),
            f"{st.seconds_left / 86400:.0f}",
            f"[{style}]{st.state}[/]" if style else st.state,
        )
    Console(width=max(100, Console().width)).print(table)
    return 0


def add_pki(sub: Any) -> None:
    cmd = command(sub, "pki", "the deployment's private CA: mutual TLS certificates")
    pki_sub = cmd.add_subparsers(dest="pki_command", required=True, metavar="COMMAND")

    init = command(pki_sub, "init", "create the CA in DIR/pki (ECDSA P-256); idempotent")
    init.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help=DATA_DIR_HELP)
    init.set_defaults(func=_init)

    issue = command(
        pki_sub,
        "issue",
        "issue NAME's certificate (server and client) from the CA; idempotent, renews one "
        "within 30 days of its end",
    )
    issue.add_argument("name", help="the party: gateway, a department, a SuperNode")
    issue.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help=DATA_DIR_HELP)
    issue.add_argument(
        "--days", type=int, default=pki.DEFAULT_DAYS, help="validity of a new certificate"
    )
    issue.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME_OR_IP",
        help="another DNS name or IP address for the certificate (besides NAME, localhost, "
        "127.0.0.1 and ::1); repeat for several",
    )
    issue.add_argument(
        "--renew", action="store_true", help="issue a new key and certificate even if current"
    )
    issue.set_defaults(func=_issue)

    show = command(pki_sub, "show", "list the certificates of DIR/pki with their expiry")
    show.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help=DATA_DIR_HELP)
    show.set_defaults(func=_show)
