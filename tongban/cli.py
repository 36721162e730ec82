"""The ``tongban`` command line: thin commands over the cores (see ``build_parser``).

Every command runs through :func:`tongban.boundary.run_command`: an expected failure is
one ``tongban: <sentence>`` line on stderr and a non-zero exit (2: something missing,
1: failed); ``tongban --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tongban.primitives.errors import InvalidIdNumber
from tongban.primitives.idnumber import parse

from .admin_cli import add_admin
from .backup_cli import add_backup
from .boundary import (
    MissingPrerequisite,
    UsageError,
    configure_logging,
    missing_sqlite_file,
    run_command,
)
from .config import DEPARTMENTS, Settings
from .db_cli import add_db
from .department_cli import add_department
from .federation_cli import add_federation
from .init_cli import add_init
from .keys_cli import add_keys
from .parsing import DATA_DIR_HELP, Parser, adapter_url, add_debug, command, version
from .pki_cli import add_pki

__all__ = ["DESCRIPTION", "build_parser", "main"]

DESCRIPTION = """\
tongban 通办: privacy-preserving data sharing between government departments.
Departments keep their records; other systems get signed yes/no answers, checked
against policy and consent and recorded in a tamper-evident SM3 Merkle audit log.
Analysts get Paillier-encrypted statistics and federated models."""

EPILOG = """\
first run, step by step:
  tongban generate --population 1000 --seed 7 --out data --truth data/truth.jsonl
  tongban keys init --data-dir data
  tongban adapter serve --department health --port 8081 --data-dir data
    (or a department's own database: tongban department check health.toml, then
     tongban adapter serve --department-file health.toml --port 8081 --data-dir data)
  tongban gateway serve --port 8080 --data-dir data --adapter health=http://127.0.0.1:8081
or everything at once: tongban demo --data-dir demo-data"""


def _id_check(args: argparse.Namespace) -> int:
    try:
        number = parse(args.number)
    except InvalidIdNumber as exc:
        print(f"invalid: {exc.detail.removeprefix('id_number: ')}", file=sys.stderr)
        return 1
    fields = {
        "valid": True,
        "region": number.region,
        "region_name": number.region_name,
        "province": number.province,
        "birth_date": number.birth_date.isoformat(),
        "sex": number.sex,
        "sequence": f"{number.sequence:03d}",
        "check": number.check,
        "masked": number.masked(),
    }
    print(json.dumps(fields, ensure_ascii=False, indent=2))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from tongban.adapters.synthetic.generate import generate

    console = Console(stderr=True)
    result = generate(
        args.out,
        args.population,
        args.seed,
        truth=args.truth,
        workers=args.workers,
        console=console,
    )
    table = Table(title=f"validation report — {args.population:,} citizens, seed {args.seed}")
    for col in ("department", "received", "loaded", "quarantined", "errors by kind"):
        table.add_column(col)
    for name in DEPARTMENTS:
        report = result.reports[name]
        received = sum(t["received"] for t in report["tables"])
        loaded = sum(t["loaded"] for t in report["tables"])
        errors = ", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "-"
        table.add_row(name, f"{received:,}", f"{loaded:,}", f"{received - loaded:,}", errors)
    console.print(table)
    console.print(f"done in {result.seconds['total']:.1f} s → {args.out}")
    return 0


def _adapter_serve(args: argparse.Namespace) -> int:
    from tongban.adapters.protocol import AdapterCore

    from .serve import check_can_listen, serve
    from .wiring import build_adapter, build_file_adapter

    core: AdapterCore
    if args.department_file is not None:
        from tongban.adapters.deptfile import load_department_file

        # A file the adapter would refuse is refused before anything starts, in one line.
        dept = load_department_file(args.department_file)
        if args.store_url and not dept.managed:
            raise UsageError(
                f'{args.department_file}: --store-url is for source = "managed"; this file '
                "names its own source"
            )
        check_can_listen(args.host, args.port, dept.name)
        stores = {dept.name: args.store_url} if args.store_url else None
        settings = Settings.from_env(data_dir=args.data_dir, store_urls=stores)
        core, witness = build_file_adapter(settings, dept)
    else:
        check_can_listen(args.host, args.port, args.department)
        stores = {args.department: args.store_url} if args.store_url else None
        settings = Settings.from_env(data_dir=args.data_dir, store_urls=stores)
        core, witness = build_adapter(settings, args.department)
    try:
        app, tls = _adapter_transport(settings, core, witness, args)
        serve(app, args.host, args.port, core.name, tls=tls)
    finally:
        core.evaluator.dispose()
    return 0


def _adapter_transport(
    settings: Settings, core: Any, witness: Any, args: argparse.Namespace
) -> tuple[Any, Any]:
    """The adapter's app and server TLS context: mutual TLS 1.3 with the department's
    certificate of the data directory's PKI, only the gateway's client certificate
    accepted; plain HTTP only on loopback without a PKI (or with --insecure-http)."""
    from tongban.adapters.service import create_app
    from tongban.primitives.metrics_auth import ensure_metrics_token

    from .exposure import check_public_binding
    from .pki import status_source
    from .tls import server_context
    from .wiring import party_tls

    found = party_tls(settings, core.name)
    metrics = ensure_metrics_token(settings.keys_dir)
    check_public_binding(
        args.host, tls=found is not None, insecure_http=args.insecure_http, name=core.name
    )
    if found is None:
        logging.getLogger("tongban").warning(
            "%s: no certificate in %s: serving plain HTTP on loopback (run `tongban pki "
            "init` and `tongban pki issue %s`)",
            core.name,
            settings.data_dir / "pki",
            core.name,
        )
        return create_app(core, witness, metrics=metrics), None
    context = server_context(found.cert, found.key, found.ca, pinned_client="gateway")
    app = create_app(core, witness, tls_status=status_source(found.cert), metrics=metrics)
    return app, context


def _gateway_serve(args: argparse.Namespace) -> int:
    from tongban.gateway.app import create_app

    from .exposure import check_public_binding, public_server_context
    from .serve import check_can_listen, serve
    from .wiring import build_gateway

    check_can_listen(args.host, args.port, "gateway")  # before the gateway starts its log
    if (args.certfile is None) != (args.keyfile is None):
        raise UsageError("--certfile and --keyfile go together")
    check_public_binding(
        args.host, tls=args.certfile is not None, insecure_http=args.insecure_http, name="gateway"
    )
    tls = public_server_context(args.certfile, args.keyfile) if args.certfile else None
    settings = Settings.from_env(data_dir=args.data_dir)
    if args.adapter:
        settings = settings.with_(adapter_urls={**settings.adapter_urls, **dict(args.adapter)})
    if args.department_file:
        files = (*settings.department_files, *args.department_file)
        settings = settings.with_(department_files=files)
    gateway = build_gateway(settings)
    try:
        serve(create_app(gateway), args.host, args.port, "gateway", tls=tls)
    finally:
        gateway.close()
    return 0


def _start_hint(data_dir: Path) -> str:
    data_dir = data_dir.absolute()
    return (
        f"start the gateway on it once (`tongban gateway serve --data-dir {data_dir}` or "
        f"`tongban demo --data-dir {data_dir}`)"
    )


def _witness_urls(args: argparse.Namespace, settings: Settings) -> dict[str, str]:
    """Where to ask the witnesses: ``--adapter``, else TONGBAN_ADAPTER_URL_*, else the
    adapters a demo in the same data directory listed."""
    if args.adapter:
        return dict(args.adapter)
    if settings.adapter_urls:
        return dict(settings.adapter_urls)
    demo = settings.data_dir / "demo.json"
    try:
        listed = json.loads(demo.read_text(encoding="utf-8")).get("adapters", {})
    except (OSError, ValueError):
        return {}
    return (
        {k: v for k, v in listed.items() if isinstance(v, str)} if isinstance(listed, dict) else {}
    )


def _audit_verify(args: argparse.Namespace) -> int:
    from tongban.adapters.client import HttpTransport, witnessed
    from tongban.audit.verify import AuditLogMissing, ask_witnesses, verify_store

    from .keys import KeyRing
    from .wiring import party_tls

    settings = Settings.from_env(data_dir=args.data_dir)
    url = settings.audit_store_url()
    absent = missing_sqlite_file(url)
    if absent is not None:
        raise MissingPrerequisite(f"no audit log at {absent}: {_start_hint(settings.data_dir)}")
    keys = KeyRing(settings.keys_dir)
    keys.require(public=["gateway"])
    witnesses = {d: keys.public(d) for d in DEPARTMENTS if not keys.missing(public=[d])}
    notes: dict[str, str] = {}
    unreachable: dict[str, str] = {}
    urls = {} if args.offline else _witness_urls(args, settings)
    asked = sorted(set(urls) & set(witnesses))
    if asked:
        # The witnesses' own memory of the log: the one thing a cut tail cannot take along.
        transport = HttpTransport(
            {name: urls[name] for name in asked}, tls=party_tls(settings, "gateway")
        )
        try:
            notes, unreachable = ask_witnesses(
                asked, lambda name: witnessed(transport, name, settings.adapter_timeout)
            )
        finally:
            transport.close()
    try:
        report = verify_store(
            url,
            gateway=(settings.gateway_issuer, keys.public("gateway")),
            witnesses=witnesses,
            # Checkpoints must name the log's stored origin, or the one configured.
            origin=settings.log_origin,
            witnessed=notes,
        )
    except AuditLogMissing as exc:
        raise MissingPrerequisite(f"{exc.detail}: {_start_hint(settings.data_dir)}") from None
    summary = {
        "ok": report.ok,
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "cosignatures": report.cosignatures,
        "witnessed": report.witnessed,
        "witnesses_unreachable": unreachable,
        "first_bad_index": report.first_bad_index,
        "cause": report.cause,
        "findings": [f.problem for f in report.findings],
    }
    if report.more:
        summary["more_findings"] = report.more
    if not asked:
        summary["warning"] = (
            "no witness was asked (--offline, or no adapter URL known): a log cut together "
            "with its checkpoints is not detectable offline"
        )
    print(json.dumps(summary, indent=2))
    return 0 if report.ok else 1


def _citizen_token(args: argparse.Namespace) -> int:
    """DEMO ONLY: mint a citizen token with the demo's local identity-provider key. A real
    deployment accepts ID tokens from its OpenID Connect provider instead. Refuses,
    creating nothing, when the data directory has no identity-provider key, and when the
    gateway does not trust the demo IdP: its configuration names an OpenID Connect
    provider, or neither it (``citizen_idp_demo``) nor ``tongban demo`` (``DIR/demo.json``)
    enabled the demo IdP."""
    from tongban.gateway.oauth import mint_citizen_token

    from .keys import KeyRing

    settings = Settings.from_env(data_dir=args.data_dir)
    try:
        number = parse(args.id_number).number
    except InvalidIdNumber as exc:
        print(f"invalid: {exc.detail.removeprefix('id_number: ')}", file=sys.stderr)
        return 1
    if settings.citizen_idp_jwks_url is not None:
        raise UsageError(
            f"the gateway's citizen identity provider is {settings.citizen_idp_issuer}, not the "
            "demo's: citizen-token mints demo tokens, which that gateway refuses"
        )
    keys = KeyRing(settings.keys_dir)
    if keys.missing(private=["idp"]):
        data_dir = settings.data_dir.resolve()
        raise MissingPrerequisite(
            f"no demo identity-provider key in {data_dir / 'keys'}: pass --data-dir with the "
            f"directory `tongban demo` uses, or run `tongban keys init --data-dir {data_dir}`"
        )
    demo = settings.data_dir / "demo.json"
    doc = json.loads(demo.read_text()) if demo.exists() else {}
    if not (settings.citizen_idp_demo or doc.get("citizen_idp") == "demo"):
        raise UsageError(
            f"no gateway of {settings.data_dir.resolve()} trusts the demo identity provider: "
            "citizen-token is for `tongban demo` (or a gateway run with "
            "TONGBAN_CITIZEN_IDP_DEMO=true), not a production login"
        )
    idp = keys.private("idp")
    audience = doc.get("gateway", settings.public_url)
    print(
        mint_citizen_token(
            idp, number, issuer=settings.idp_issuer, audience=audience, lifetime=args.lifetime
        )
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        args.data_dir,
        args.port,
        args.population,
        args.seed,
        host=args.host,
        department_files=args.department_file,
        https=args.https,
    )


def _stats_run(args: argparse.Namespace) -> int:
    from .stats import statistic_from_dir, write_result

    result = statistic_from_dir(
        args.data_dir, args.name, args.param, gateway=args.gateway, epsilon=args.epsilon
    )
    write_result(result, args.format)
    return 0


def _add_stats(sub: Any) -> None:
    stats = command(sub, "stats", "encrypted cross-department statistics (as the analyst)")
    stats_sub = stats.add_subparsers(dest="stats_command", required=True, metavar="COMMAND")
    s_run = command(
        stats_sub,
        "run",
        "run a statistic as the demo's analyst: make a Paillier key, submit, decrypt, print",
    )
    s_run.add_argument("name", help="a registered statistic, e.g. births_by_district_year")
    s_run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the statistic, e.g. year=2024; repeat for several",
    )
    s_run.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help=DATA_DIR_HELP)
    s_run.add_argument(
        "--gateway",
        metavar="URL",
        help="the gateway (default: the demo's, from DIR/demo.json, else TONGBAN_PUBLIC_URL)",
    )
    s_run.add_argument("--format", choices=("table", "csv"), default="table", help="output")
    s_run.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="differential privacy: each department adds its share of discrete Laplace "
        "noise; the total has scale sensitivity/epsilon and epsilon is charged to the "
        "analyst's budget (default: no noise)",
    )
    s_run.set_defaults(func=_stats_run)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tongban", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument(
        "--version", action="version", version=f"tongban {version()}", help="print the version"
    )
    add_debug(parser, top=True)
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a TOML configuration file (as TONGBAN_CONFIG; TONGBAN_* variables and flags "
        "override it)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_id_and_generate(sub)
    _add_servers(sub)
    _add_citizen_and_audit(sub)
    _add_stats(sub)
    add_init(sub)
    add_keys(sub)
    add_admin(sub)
    add_db(sub)
    add_backup(sub)
    add_pki(sub)
    add_department(sub)
    add_federation(sub)
    _add_demo(sub)
    return parser


def _add_id_and_generate(sub: Any) -> None:
    id_cmd = command(sub, "id", "GB 11643 citizen ID number utilities")
    id_sub = id_cmd.add_subparsers(dest="id_command", required=True, metavar="COMMAND")
    check = command(id_sub, "check", "validate and parse an ID number (exit 1 if invalid)")
    check.add_argument("number", help="an 18-digit ID number, e.g. 11010519491231002X")
    check.set_defaults(func=_id_check)

    gen = command(sub, "generate", "generate a synthetic population into department stores")
    gen.add_argument("--population", type=int, required=True, help="number of citizens")
    gen.add_argument("--seed", type=int, required=True, help="random seed (same seed, same data)")
    gen.add_argument(
        "--out", type=Path, required=True, help="data directory to write (DIR/departments/...)"
    )
    gen.add_argument(
        "--truth",
        type=Path,
        metavar="FILE",
        help="also write ground truth as JSON lines here (default: not written)",
    )
    gen.add_argument(
        "--workers", type=int, default=None, help="loader processes (default: one per core)"
    )
    gen.set_defaults(func=_generate)


def _add_servers(sub: Any) -> None:
    adapter = command(sub, "adapter", "a department adapter")
    adapter_sub = adapter.add_subparsers(dest="adapter_command", required=True, metavar="COMMAND")
    a_serve = command(
        adapter_sub, "serve", "serve a department's predicates over HTTP (needs keys and data)"
    )
    which = a_serve.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--department",
        choices=DEPARTMENTS,
        help="a built-in department, over the store `tongban generate` fills",
    )
    which.add_argument(
        "--department-file",
        type=Path,
        metavar="FILE",
        help="a department file (docs/departments.md): its predicates, answered from the "
        "database it names; keys still come from DIR/keys",
    )
    a_serve.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    a_serve.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help=DATA_DIR_HELP)
    a_serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    a_serve.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow plain HTTP on an address other than loopback when the data directory "
        "has no certificate for the department (default: refused)",
    )
    a_serve.add_argument(
        "--store-url",
        metavar="URL",
        help="SQLAlchemy URL of the managed department store (default: DIR/departments/NAME.db)",
    )
    a_serve.set_defaults(func=_adapter_serve)

    gateway = command(sub, "gateway", "the verification gateway")
    gateway_sub = gateway.add_subparsers(dest="gateway_command", required=True, metavar="COMMAND")
    g_serve = command(gateway_sub, "serve", "serve the gateway over HTTP (needs keys)")
    g_serve.add_argument("--port", type=int, default=8080, help="TCP port to listen on")
    g_serve.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help=DATA_DIR_HELP)
    g_serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    g_serve.add_argument(
        "--certfile", type=Path, metavar="FILE", help="serve HTTPS with this certificate (PEM)"
    )
    g_serve.add_argument("--keyfile", type=Path, metavar="FILE", help="its private key (PEM)")
    g_serve.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow plain HTTP on an address other than loopback (behind a TLS proxy)",
    )
    g_serve.add_argument(
        "--adapter",
        action="append",
        type=adapter_url,
        default=[],
        metavar="NAME=URL",
        help="a department adapter to connect, e.g. health=http://127.0.0.1:8081; repeat "
        "for several (default: those in TONGBAN_ADAPTER_URL_<NAME>)",
    )
    g_serve.add_argument(
        "--department-file",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="the department file its adapter serves, replacing the built-in department of "
        "its name: claims are checked against its predicates; repeat for several (default: "
        "those in TONGBAN_DEPARTMENT_FILES)",
    )
    g_serve.set_defaults(func=_gateway_serve)


def _add_citizen_and_audit(sub: Any) -> None:
    citizen = command(
        sub, "citizen-token", "DEMO ONLY: mint a citizen token with the demo identity provider"
    )
    citizen.add_argument("id_number", help="the citizen's ID number")
    citizen.add_argument(
        "--data-dir",
        type=Path,
        default=Path("demo-data"),
        help="data directory holding the demo identity-provider key, DIR/keys/idp.key",
    )
    citizen.add_argument("--lifetime", type=int, default=600, help="token lifetime, seconds")
    citizen.set_defaults(func=_citizen_token)

    audit_cmd = command(sub, "audit", "the audit log")
    audit_sub = audit_cmd.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = command(
        audit_sub, "verify", "recompute and check the whole audit log (exit 1: first bad index)"
    )
    verify.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help=DATA_DIR_HELP)
    verify.add_argument(
        "--adapter",
        action="append",
        type=adapter_url,
        default=[],
        metavar="NAME=URL",
        help="a witness to ask what it last cosigned (repeatable; default: "
        "TONGBAN_ADAPTER_URL_*, else the adapters in DIR/demo.json)",
    )
    verify.add_argument(
        "--offline", action="store_true", help="ask no witness (a cut tail then goes unseen)"
    )
    verify.set_defaults(func=_audit_verify)


def _add_demo(sub: Any) -> None:
    demo = command(sub, "demo", "generate data if needed, then run the gateway with five adapters")
    demo.add_argument(
        "--data-dir", type=Path, default=Path("demo-data"), metavar="DIR", help=DATA_DIR_HELP
    )
    demo.add_argument("--port", type=int, default=8080, help="the gateway's port")
    demo.add_argument("--population", type=int, default=10_000, help="synthetic citizens")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the population")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on")
    demo.add_argument(
        "--department-file",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="serve this department from its file instead of the generated store; its name "
        "must be a built-in department's; repeat for several",
    )
    demo.add_argument(
        "--https",
        action="store_true",
        help="serve the gateway's public side over HTTPS too, with the gateway's certificate "
        "of DIR/pki (clients verify it with the CA that demo.json names under ca, e.g. "
        "TONGBAN_CA_FILE)",
    )
    demo.set_defaults(func=_demo)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(debug=args.debug)
    if args.config is not None:  # every Settings.from_env of this process reads it
        os.environ["TONGBAN_CONFIG"] = str(args.config.resolve())
    for unknown in Settings.unknown_variables():  # a typo would otherwise pass silently
        logging.getLogger("tongban").warning("%s is not a setting; ignored", unknown)
    return run_command(lambda: args.func(args), debug=args.debug)
