"""``tongban backup`` and ``tongban restore`` (tongban.backup; docs/backups.md).

    tongban backup --data-dir DIR --out FILE [--passphrase-file FILE]
    tongban restore --from FILE --data-dir NEW [--config FILE] [--passphrase-file FILE]
                    [--force] [--witness-check [--adapter NAME=URL ...]]

The passphrase comes from ``--passphrase-file`` or ``TONGBAN_BACKUP_PASSPHRASE``, never from
the command line. Both print one JSON summary on stdout; a refusal is one ``tongban: …``
line on stderr (tongban.boundary) and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Settings
from .parsing import DATA_DIR_HELP, adapter_url, command

if TYPE_CHECKING:
    from .backup import Backup
    from .tls import TLSFiles

__all__ = ["add_backup"]

_UNLOCK_HELP = (
    "a file whose first line is the passphrase (default: TONGBAN_BACKUP_PASSPHRASE; never "
    "on the command line)"
)


def _console() -> Any:
    """A progress display on stderr when it is a terminal; none in pipes and tests."""
    from rich.console import Console

    return Console(stderr=True) if sys.stderr.isatty() else None


def _backup(args: argparse.Namespace) -> int:
    from .backup import create_backup, read_passphrase

    settings = Settings.from_env(data_dir=args.data_dir)
    passphrase = read_passphrase(args.passphrase_file)
    summary = create_backup(settings, args.out, passphrase, console=_console())
    print(json.dumps(summary.to_json(), indent=2))
    return 0


def _gateway_tls(settings: Settings, backup: Backup, tmp: Path) -> TLSFiles | None:
    """The gateway's client certificate for mutual TLS to the witnesses: the target's PKI
    if it has one, else the backup's (written to ``tmp``, private, for the check only)."""
    from .pki import files
    from .wiring import party_tls

    found = party_tls(settings, "gateway")
    if found is not None:
        return found
    wanted = files(Path("pki"), "gateway")
    names = [p.as_posix() for p in (wanted.cert, wanted.key, wanted.ca)]
    if not all(n in backup.files for n in names):
        return None  # plain HTTP (loopback adapters without a PKI)
    for name in names:
        target = tmp / name
        target.parent.mkdir(mode=0o700, exist_ok=True)
        target.write_bytes(backup.files[name][1])
        target.chmod(0o600)
    return files(tmp / "pki", "gateway")


def _restore(args: argparse.Namespace) -> int:
    from tongban.adapters.client import HttpTransport, witnessed
    from tongban.audit.verify import ask_witnesses

    from .backup import read_passphrase, restore_backup
    from .boundary import UsageError

    settings = Settings.from_env(config=args.restore_config, data_dir=args.data_dir)
    passphrase = read_passphrase(args.passphrase_file)
    ask = None
    if args.witness_check:
        urls = dict(args.adapter) or dict(settings.adapter_urls)
        if not urls:
            raise UsageError(
                "--witness-check needs the witnesses' URLs: --adapter NAME=URL, or "
                "TONGBAN_ADAPTER_URL_<DEPARTMENT> / adapter_urls in the configuration"
            )

        def ask(backup: Backup) -> tuple[dict[str, str], dict[str, str]]:
            with tempfile.TemporaryDirectory(prefix="tongban-restore-") as tmp:
                transport = HttpTransport(urls, tls=_gateway_tls(settings, backup, Path(tmp)))
                try:
                    return ask_witnesses(
                        sorted(urls),
                        lambda name: witnessed(transport, name, settings.adapter_timeout),
                    )
                finally:
                    transport.close()

    summary = restore_backup(
        args.source,
        settings,
        passphrase,
        force=args.force,
        witnessed=ask,
        console=_console(),
    )
    print(json.dumps(summary.to_json(), indent=2))
    return 0


def add_backup(sub: Any) -> None:
    backup = command(
        sub,
        "backup",
        "a consistent snapshot of the gateway and audit databases and the keys, while the "
        "gateway serves (keys and rows sealed with a passphrase)",
        allow_abbrev=False,  # --passphrase must never pass for --passphrase-file
    )
    backup.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"{DATA_DIR_HELP} (default: the configuration's data_dir)",
    )
    backup.add_argument("--out", type=Path, required=True, metavar="FILE", help="a new file")
    backup.add_argument("--passphrase-file", type=Path, metavar="FILE", help=_UNLOCK_HELP)
    backup.set_defaults(func=_backup)

    restore = command(
        sub,
        "restore",
        "verify a backup, then restore it into a fresh data directory and databases",
        allow_abbrev=False,
    )
    restore.add_argument(
        "--from", dest="source", type=Path, required=True, metavar="FILE", help="the backup"
    )
    restore.add_argument(
        "--data-dir", type=Path, required=True, metavar="NEW", help="the data directory to make"
    )
    restore.add_argument(
        "--config",
        dest="restore_config",
        type=Path,
        metavar="FILE",
        help="the restored deployment's configuration (its gateway_db_url and audit_url; "
        "default: SQLite files in NEW)",
    )
    restore.add_argument("--passphrase-file", type=Path, metavar="FILE", help=_UNLOCK_HELP)
    restore.add_argument(
        "--force",
        action="store_true",
        help="replace what the target holds (a stopped deployment; never a database another "
        "process has open); the witness check against its audit store still applies",
    )
    restore.add_argument(
        "--witness-check",
        action="store_true",
        help="ask each witness what it cosigned last and refuse a backup older than that",
    )
    restore.add_argument(
        "--adapter",
        action="append",
        type=adapter_url,
        default=[],
        metavar="NAME=URL",
        help="a witness to ask with --witness-check (repeatable; default: the "
        "configuration's adapter URLs)",
    )
    restore.set_defaults(func=_restore)
