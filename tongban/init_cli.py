"""``tongban init``: a gateway host's data directory, set up for production.

    tongban init --data-dir DIR [--config FILE] [--public-url URL] [--no-pki] [--force-config]

What a gateway host needs and nothing else, each thing made only when absent (a second run
changes nothing and says so):

* ``DIR`` (mode 0700) and in ``DIR/keys`` the gateway's keys: its three SM2 signing keys
  (``gateway``, ``gateway-answers``, ``gateway-tokens``), its P-256 key for ES256 answers,
  and the symmetric secrets it reads (``pseudonym``, ``pairwise``, ``client-pepper``, the
  audit vault's first key) and the operator's metrics token. Never the demo identity
  provider's key, never a department's private key (that lives on the department's host),
  never a demo requester (``tongban keys init`` and ``tongban demo`` are for the demo);
* the deployment PKI in ``DIR/pki`` (tongban/pki.py): the CA and the gateway's certificate,
  unless ``--no-pki``;
* a configuration file, ``FILE`` (default ``DIR/gateway.toml``, mode 0600): every setting of
  :class:`tongban.config.Settings`, in the model's order, with the description the model's
  source gives it, commented out at its default; ``data_dir``, ``public_url`` and any
  setting given by a ``TONGBAN_*`` variable are written out. An existing file is read, not
  replaced (``--force-config`` replaces it, keeping ``FILE.bak``); one that is not valid is
  refused in one line naming the key;
* the databases of that configuration migrated to the code's revision (``tongban db
  upgrade``), one line per store.

A server database that cannot be reached is refused before anything is written. What was
created and what existed goes to stderr as lines for people and to stdout as JSON (paths
and names, never key material).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import io
import json
import os
import shutil
import sys
import textwrap
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tongban.primitives.errors import TongbanError

from .boundary import CommandFailed, UsageError, describe, display_url, scrub
from .config import Settings
from .parsing import DATA_DIR_HELP, command

__all__ = [
    "CONFIG_NAME",
    "GATEWAY_SECRETS",
    "GATEWAY_SIGNING_KEYS",
    "FieldNotes",
    "Report",
    "add_init",
    "describe_fields",
    "render_config",
]

CONFIG_NAME = "gateway.toml"
#: The SM2 keys the gateway signs with (tongban/wiring.py, ``build_gateway``).
GATEWAY_SIGNING_KEYS = ("gateway", "gateway-answers", "gateway-tokens")
#: The 32-byte secrets ``build_gateway`` reads with ``KeyRing.secret``.
GATEWAY_SECRETS = ("pseudonym", "pairwise", "client-pepper")
_MAPS = ("store_urls", "adapter_urls")

#: Descriptions of the settings whose source in tongban/config.py carries no comment of
#: their own (most of those sit under a comment describing their group). Every setting
#: must be described one way or the other (tests/test_init.py).
_DESCRIPTIONS = {
    "data_dir": "The data directory: keys/ (SM2 keys, secrets), pki/, default SQLite stores.",
    "adapter_timeout": "Seconds before a department counts as silent.",
    "gateway_issuer": "The gateway's name in signed requests and checkpoints.",
    "public_url": "The gateway's public URL: issuer and audience of its tokens, the log's origin.",
    "checkpoint_interval": "Seconds between checkpoint rounds.",
    "citizen_idp_demo": "Trust the demo identity provider (`tongban demo` only, never here).",
    "citizen_idp_audience": "The gateway's client id at the provider (the ID tokens' aud).",
    "citizen_idp_algorithms": "The algorithms the provider signs with (SM2, ES256).",
    "citizen_idp_subject_claim": "The ID token claim holding the GB 11643 ID number.",
    "citizen_idp_jwks_ttl": "Seconds the provider's JWK Set is cached.",
    "citizen_idp_timeout": "Seconds a fetch of the JWK Set may take.",
    "citizen_idp_jwks_url": "The provider's JWK Set (https://).",
    "stats_require_dp": "Refuse statistics jobs without differential-privacy noise.",
    "rate_requester_per_second": "Its refill, checks per second.",
    "rate_subject_per_second": "Its refill, per second.",
}


# -- the configuration file, from the model ---------------------------------------------


@dataclass(frozen=True)
class FieldNotes:
    """The comments of one setting in the model's source."""

    block: tuple[str, ...]  # the comment lines just above it
    trailing: str | None  # the comment on its own line


def describe_fields() -> dict[str, FieldNotes]:
    """Each field of :class:`Settings` with the comments its source gives it."""
    source = textwrap.dedent(inspect.getsource(Settings))
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, alone on its line)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            alone = not tok.line[: tok.start[1]].strip()
            comments[tok.start[0]] = (tok.string.lstrip("#").strip(), alone)
    tree = ast.parse(source).body[0]
    assert isinstance(tree, ast.ClassDef)
    out: dict[str, FieldNotes] = {}
    previous_end = tree.lineno
    for node in tree.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        end = node.end_lineno or node.lineno
        block = tuple(
            text
            for line, (text, alone) in sorted(comments.items())
            if alone and previous_end < line < node.lineno
        )
        trailing = next(
            (text for line, (text, alone) in comments.items()
             if not alone and node.lineno <= line <= end),
            None,
        )  # fmt: skip
        out[node.target.id] = FieldNotes(block, trailing)
        previous_end = end
    return {name: out.get(name, FieldNotes((), None)) for name in Settings.model_fields}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _written(settings: Settings) -> set[str]:
    """The settings written out: the data directory, the public URL, and any that differ
    from their default (a ``TONGBAN_*`` variable or the old file gave them)."""
    defaults = Settings.model_validate({})
    out = {"data_dir", "public_url"}
    return out | {n for n in Settings.model_fields if getattr(settings, n) != getattr(defaults, n)}


def render_config(settings: Settings, *, version: str = "") -> str:
    """The commented configuration file that loads as ``settings``."""
    notes = describe_fields()
    written = _written(settings)
    lines = [
        f"# tongban gateway configuration, written by `tongban init`{version}.",
        "# Every setting of tongban/config.py is here, under its own name, commented out at its",
        "# default; TONGBAN_<SETTING> variables override this file, and flags override both.",
        "# Use it with TONGBAN_CONFIG=FILE or `tongban --config FILE COMMAND`.",
        "# This file may hold database passwords: keep it readable by the gateway's user only.",
    ]

    def comments(name: str) -> list[str]:
        note = notes[name]
        text = [*note.block]
        if note.trailing:
            text.append(note.trailing)
        if not text and name in _DESCRIPTIONS:
            text.append(_DESCRIPTIONS[name])
        return [f"# {t}".rstrip() for t in text]

    for name in Settings.model_fields:
        if name in _MAPS:
            continue
        value = getattr(settings, name)
        lines += ["", *comments(name)]
        if name in written and value is not None:
            lines.append(f"{name} = {_toml(value)}")
        default = Settings.model_fields[name].get_default(call_default_factory=True)
        if name in written and value != default:
            shown = "unset" if default is None else _toml(default)
            lines.append(f"# (default: {shown})")
        elif name not in written:
            # An unset setting has no TOML form: the line shows it, without a value.
            lines.append(f"# {name} =" if default is None else f"# {name} = {_toml(default)}")
    for name in _MAPS:  # TOML tables come after every top-level key
        value = dict(getattr(settings, name))
        lines += ["", *comments(name)]
        if value:
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml(v)}" for k, v in sorted(value.items())]
        else:
            lines.append(f"# [{name}]")
            example = "https://health.internal:8443" if name == "adapter_urls" else None
            example = example or "postgresql+psycopg://tongban@db.internal/health"
            lines.append(f"#   health = {_toml(example)}")
    return "\n".join(lines) + "\n"


# -- the steps ---------------------------------------------------------------------------


@dataclass
class Report:
    """What ``tongban init`` did: names and paths only."""

    data_dir: Path
    config: Path
    data_dir_created: bool = False
    config_state: str = "existing"  # "created", "replaced"
    backup: Path | None = None
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    pki: dict[str, str] = field(default_factory=dict)
    databases: dict[str, dict[str, str]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    department_keys_missing: list[str] = field(default_factory=list)

    def note(self, name: str, made: bool) -> None:
        (self.created if made else self.existing).append(name)

    def to_json(self, next_steps: list[str]) -> dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "data_dir_created": self.data_dir_created,
            "config": {
                "path": str(self.config),
                "state": self.config_state,
                **({"backup": str(self.backup)} if self.backup else {}),
            },
            "keys": {"created": self.created, "existing": self.existing},
            "pki": self.pki or None,
            "databases": self.databases,
            "failed": self.failed,
            "department_keys_missing": self.department_keys_missing,
            "next_steps": next_steps,
        }


def _env_without_config() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "TONGBAN_CONFIG"}


def _settings(args: argparse.Namespace, path: Path) -> tuple[Settings, bool]:
    """The settings init works with, and whether they come from an existing file (which a
    refusal names: ``FILE: KEY: not a setting``)."""
    data_dir = args.data_dir.absolute()
    env = _env_without_config()
    if path.exists() and not args.force_config:
        settings = Settings.from_env(env, config=path)
        if settings.data_dir.absolute() != data_dir:
            raise UsageError(
                f"{path}: data_dir = {settings.data_dir} is not --data-dir {data_dir}: pass "
                "that directory, another --config, or --force-config"
            )
        if args.public_url is not None and settings.public_url != args.public_url:
            raise UsageError(
                f"{path}: public_url = {settings.public_url} is not --public-url "
                f"{args.public_url}: edit the file, or pass --force-config"
            )
        return settings.with_(data_dir=data_dir), True
    return Settings.from_env(env, data_dir=data_dir, public_url=args.public_url), False


def _probe_databases(settings: Settings) -> None:
    """Refuse, before anything is written, when a server database cannot be reached."""
    from tongban import migrations

    for store in migrations.stores(settings):
        if not store.url.startswith("sqlite"):
            migrations.current(store.url, store.chain, name=store.shown)


def _make_dir(path: Path) -> bool:
    """``path`` (mode 0700 when made here); whether it was made."""
    try:
        if path.is_dir():
            return False
        path.mkdir(mode=0o700, parents=True)
        os.chmod(path, 0o700)  # whatever the umask
        return True
    except OSError as exc:
        raise CommandFailed(
            f"{path}: cannot create the directory ({exc.strerror or type(exc).__name__})"
        ) from None


def _ensure_keys(settings: Settings, report: Report) -> None:
    from tongban.audit.vault import VaultKeys
    from tongban.primitives.metrics_auth import TOKEN_FILE, ensure_metrics_token

    from .keys import KeyRing

    keys_dir = settings.keys_dir
    _make_dir(keys_dir)
    ring = KeyRing(keys_dir)
    for party in GATEWAY_SIGNING_KEYS:
        made = not (keys_dir / f"{party}.key").exists()
        ring.ensure(party)
        report.note(f"{party}.key", made)
    made = not (keys_dir / "gateway.p256.pem").exists()
    ring.p256("gateway")
    report.note("gateway.p256.pem", made)
    for name in GATEWAY_SECRETS:
        made = not (keys_dir / f"{name}.secret").exists()
        ring.secret(name, 32)
        report.note(f"{name}.secret", made)
    before = {p.name for p in keys_dir.iterdir()}
    VaultKeys(keys_dir)  # makes the vault's first key, vault.secret, when it has none
    report.note(
        "vault.secret", "vault.secret" not in before and (keys_dir / "vault.secret").exists()
    )
    made = not (keys_dir / TOKEN_FILE).exists()
    ensure_metrics_token(keys_dir)
    report.note(TOKEN_FILE, made)
    report.department_keys_missing = ring.missing(public=sorted(settings.adapter_urls))


def _ensure_pki(settings: Settings, report: Report) -> None:
    from . import pki

    where = pki.pki_dir(settings.data_dir)
    ca = pki.init(where)
    report.pki["ca"] = "created" if ca.created else "existing"
    extra: list[str] = []
    host = urlsplit(settings.public_url).hostname
    if host:
        with contextlib.suppress(UsageError):  # a single label (localhost): loopback names
            pki._general_name(host)
            extra.append(host)
    gateway = pki.issue(where, "gateway", extra_names=extra)
    report.pki["gateway"] = "created" if gateway.created else "existing"


def _ensure_config(settings: Settings, path: Path, from_file: bool, report: Report) -> None:
    from .parsing import version

    if from_file:
        report.config_state = "existing"
        return
    text = render_config(settings, version=f" (tongban {version()})")
    existed = path.exists()
    if existed and path.read_text(encoding="utf-8", errors="replace") == text:
        report.config_state = "existing"
        return
    _make_dir(path.parent)
    try:
        if existed:
            backup = path.with_name(path.name + ".bak")
            shutil.copy2(path, backup)
            report.backup = backup
        from .pki import write_atomic

        write_atomic(path, text.encode("utf-8"), private=True)
    except OSError as exc:
        raise CommandFailed(
            f"{path}: cannot write ({exc.strerror or type(exc).__name__})"
        ) from None
    report.config_state = "replaced" if existed else "created"
    # What was written must read back as what init used (it is generated from the model).
    if Settings.from_env(_env_without_config(), config=path) != settings:
        raise CommandFailed(f"{path}: does not read back as the settings init used (a bug)")


def _migrate(settings: Settings, report: Report) -> None:
    from tongban import migrations

    for store in migrations.stores(settings):
        shown = display_url(store.url)
        if store.url.startswith("sqlite:///"):
            Path(store.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            done = migrations.upgrade(store.url, store.chain, name=shown)
        except Exception as exc:
            sentence = exc.detail if isinstance(exc, TongbanError) else describe(exc)[1]
            report.failed[store.name] = scrub(sentence)
            print(f"tongban: {store.name}: {scrub(sentence)}", file=sys.stderr)
            continue
        if done.adopted:
            state = f"adopted (tables made before migrations, stamped {done.before})"
        elif done.before == done.after:
            state = "already current"
        else:
            state = f"upgraded from {done.before or 'empty'}"
        report.databases[store.name] = {"url": shown, "revision": done.after, "state": state}
        print(f"{store.name}: {shown} at {done.after}, {state}", file=sys.stderr)


def _next_steps(settings: Settings, report: Report) -> list[str]:
    cfg = report.config
    steps = []
    if not settings.adapter_urls:
        steps.append(
            f"edit {cfg}: [adapter_urls] (each department's adapter), gateway_db_url and "
            "audit_url (PostgreSQL, for several workers), then run `tongban init` again"
        )
    for dept in report.department_keys_missing:
        steps.append(
            f"copy {dept}'s public key (its host's DIR/keys/{dept}.jwk.json) to "
            f"{settings.keys_dir / f'{dept}.jwk.json'}"
        )
    if report.pki:
        steps.append(
            f"tongban pki issue DEPARTMENT --data-dir {settings.data_dir} (then copy "
            "DIR/pki/ca.pem, DEPARTMENT.pem and DEPARTMENT.key to the department's host)"
        )
    steps += [
        f"tongban --config {cfg} admin clients add CLIENT_ID --name NAME --scopes checks "
        f"--data-dir {settings.data_dir}",
        f"TONGBAN_CONFIG={cfg} gunicorn -c python:tongban.gunicorn_conf -b 0.0.0.0:8080 "
        "'tongban.wsgi:gateway()'",
    ]
    return steps


def _init(args: argparse.Namespace) -> int:
    data_dir = args.data_dir.absolute()
    given = args.init_config or (
        Path(os.environ["TONGBAN_CONFIG"]) if os.environ.get("TONGBAN_CONFIG") else None
    )
    path = (given or data_dir / CONFIG_NAME).absolute()
    settings, from_file = _settings(args, path)  # a file that is not valid: one line
    _probe_databases(settings)  # a database that is away: one line, nothing written
    report = Report(data_dir, path, data_dir_created=_make_dir(data_dir))
    _ensure_keys(settings, report)
    if args.pki:
        _ensure_pki(settings, report)
    _ensure_config(settings, path, from_file, report)
    _migrate(settings, report)

    err = sys.stderr
    if report.data_dir_created:
        print(f"created {data_dir} (mode 0700)", file=err)
    if report.created:
        print(f"created: {', '.join(report.created)}", file=err)
    if report.existing:
        print(f"existing (unchanged): {', '.join(report.existing)}", file=err)
    for name, state in report.pki.items():
        print(f"pki: {name} {state}", file=err)
    backup = f" (the old one kept as {report.backup})" if report.backup else ""
    print(f"configuration: {path} {report.config_state}{backup}", file=err)
    new_pki = any(s == "created" for s in report.pki.values())
    if not report.created and not new_pki and report.config_state == "existing":
        print("nothing to do: everything already existed", file=err)
    steps = _next_steps(settings, report)
    print("next steps:", file=err)
    for step in steps:
        print(f"  {step}", file=err)
    print(json.dumps(report.to_json(steps), indent=2))
    return 1 if report.failed else 0


def add_init(sub: Any) -> None:
    init = command(
        sub,
        "init",
        "set up a gateway host for production: keys, PKI, a commented configuration file, "
        "the database migrations; idempotent (no demo requesters)",
    )
    init.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help=DATA_DIR_HELP)
    init.add_argument(
        "--config",
        dest="init_config",
        type=Path,
        metavar="FILE",
        help=f"the configuration file to write, or to read if it exists (default: "
        f"TONGBAN_CONFIG, else DIR/{CONFIG_NAME})",
    )
    init.add_argument(
        "--public-url",
        metavar="URL",
        help="the gateway's public URL, written into a new configuration file (default: "
        "TONGBAN_PUBLIC_URL, else the default setting)",
    )
    init.add_argument(
        "--pki",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="create the deployment CA and the gateway's certificate in DIR/pki (default: yes)",
    )
    init.add_argument(
        "--force-config",
        action="store_true",
        help="write the configuration file even if one exists (the old one kept as FILE.bak)",
    )
    init.set_defaults(func=_init)
