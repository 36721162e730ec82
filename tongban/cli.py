"""``tongban``: the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tongban.primitives.errors import InvalidIdNumber
from tongban.primitives.idnumber import parse

from .config import DEPARTMENTS, Settings
from .federation_cli import add_federation
from .keys_cli import add_keys

__all__ = ["main"]


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
    from tongban.adapters.service import create_app

    from .serve import serve
    from .wiring import build_adapter

    stores = {args.department: args.store_url} if args.store_url else None
    settings = Settings.from_env(data_dir=args.data_dir, store_urls=stores)
    core, witness = build_adapter(settings, args.department)
    serve(create_app(core, witness), args.host, args.port, args.department)
    return 0


def _gateway_serve(args: argparse.Namespace) -> int:
    from tongban.gateway.app import create_app

    from .serve import serve
    from .wiring import build_gateway

    settings = Settings.from_env(data_dir=args.data_dir)
    gateway = build_gateway(settings)
    try:
        serve(create_app(gateway), args.host, args.port, "gateway")
    finally:
        gateway.close()
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from tongban.audit.verify import verify_store

    from .keys import KeyRing

    settings = Settings.from_env(data_dir=args.data_dir)
    keys = KeyRing(settings.keys_dir)
    witnesses = {}
    for dept in DEPARTMENTS:
        try:
            witnesses[dept] = keys.public(dept)
        except FileNotFoundError:
            continue
    demo = settings.data_dir / "demo.json"
    origin = None
    if demo.exists():  # the log's name comes from the gateway's URL
        origin = settings.with_(public_url=json.loads(demo.read_text())["gateway"]).origin
    report = verify_store(
        settings.audit_store_url(),
        gateway=(settings.gateway_issuer, keys.public("gateway")),
        witnesses=witnesses,
        origin=origin,
    )
    summary = {
        "ok": report.ok,
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "cosignatures": report.cosignatures,
        "first_bad_index": report.first_bad_index,
        "findings": [f.problem for f in report.findings],
    }
    print(json.dumps(summary, indent=2))
    return 0 if report.ok else 1


def _citizen_token(args: argparse.Namespace) -> int:
    """DEMO ONLY: mint a citizen token with the demo's local identity-provider key. A real
    deployment accepts tokens from the province's identity provider instead."""
    from tongban.gateway.oauth import mint_citizen_token

    from .keys import KeyRing

    settings = Settings.from_env(data_dir=args.data_dir)
    try:
        number = parse(args.id_number).number
    except InvalidIdNumber as exc:
        print(f"invalid: {exc.detail.removeprefix('id_number: ')}", file=sys.stderr)
        return 1
    idp = KeyRing(settings.keys_dir).ensure("idp")
    demo = settings.data_dir / "demo.json"
    audience = json.loads(demo.read_text())["gateway"] if demo.exists() else settings.public_url
    print(
        mint_citizen_token(
            idp, number, issuer=settings.idp_issuer, audience=audience, lifetime=args.lifetime
        )
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.data_dir, args.port, args.population, args.seed, host=args.host)


def _stats_run(args: argparse.Namespace) -> int:
    from .stats import run_from_demo

    return run_from_demo(args.data_dir, args.name, args.param, args.format, epsilon=args.epsilon)


def _add_stats(sub: Any) -> None:
    stats = sub.add_parser("stats", help="encrypted cross-department statistics (analyst)")
    stats_sub = stats.add_subparsers(dest="stats_command", required=True)
    s_run = stats_sub.add_parser(
        "run", help="run a statistic as the demo's analyst: key, submit, decrypt, print"
    )
    s_run.add_argument("name", help="a registered statistic, e.g. births_by_district_year")
    s_run.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="e.g. year=2024"
    )
    s_run.add_argument("--data-dir", type=Path, required=True)
    s_run.add_argument("--format", choices=("table", "csv"), default="table")
    s_run.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="differential privacy: each department adds its share of discrete Laplace "
        "noise; the total has scale sensitivity/epsilon and epsilon is charged to the "
        "analyst's budget",
    )
    s_run.set_defaults(func=_stats_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tongban", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    id_cmd = sub.add_parser("id", help="GB 11643 ID number utilities")
    id_sub = id_cmd.add_subparsers(dest="id_command", required=True)
    check = id_sub.add_parser("check", help="validate and parse an ID number")
    check.add_argument("number")
    check.set_defaults(func=_id_check)

    gen = sub.add_parser("generate", help="generate a synthetic population into department stores")
    gen.add_argument("--population", type=int, required=True)
    gen.add_argument("--seed", type=int, required=True)
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--truth", type=Path)
    gen.add_argument("--workers", type=int, default=None)
    gen.set_defaults(func=_generate)

    adapter = sub.add_parser("adapter", help="department adapter")
    adapter_sub = adapter.add_subparsers(dest="adapter_command", required=True)
    a_serve = adapter_sub.add_parser("serve", help="serve a department's predicates over HTTP")
    a_serve.add_argument("--department", choices=DEPARTMENTS, required=True)
    a_serve.add_argument("--port", type=int, required=True)
    a_serve.add_argument("--data-dir", type=Path, required=True)
    a_serve.add_argument("--host", default="127.0.0.1")
    a_serve.add_argument("--store-url", help="SQLAlchemy URL (default: DIR/departments/NAME.db)")
    a_serve.set_defaults(func=_adapter_serve)

    gateway = sub.add_parser("gateway", help="the verification gateway")
    gateway_sub = gateway.add_subparsers(dest="gateway_command", required=True)
    g_serve = gateway_sub.add_parser("serve", help="serve the gateway over HTTP")
    g_serve.add_argument("--port", type=int, default=8080)
    g_serve.add_argument("--data-dir", type=Path, required=True)
    g_serve.add_argument("--host", default="127.0.0.1")
    g_serve.set_defaults(func=_gateway_serve)

    citizen = sub.add_parser(
        "citizen-token", help="DEMO ONLY: mint a citizen token with the demo identity provider"
    )
    citizen.add_argument("id_number")
    citizen.add_argument("--data-dir", type=Path, default=Path("demo-data"))
    citizen.add_argument("--lifetime", type=int, default=600)
    citizen.set_defaults(func=_citizen_token)

    audit_cmd = sub.add_parser("audit", help="the audit log")
    audit_sub = audit_cmd.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="recompute and check the whole audit log")
    verify.add_argument("--data-dir", type=Path, required=True)
    verify.set_defaults(func=_audit_verify)

    _add_stats(sub)
    add_keys(sub)
    add_federation(sub)

    demo = sub.add_parser("demo", help="generate data and run the gateway with five adapters")
    demo.add_argument("--data-dir", type=Path, default=Path("demo-data"))
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--population", type=int, default=10_000)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--host", default="127.0.0.1")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # httpx logs every request URL at INFO; keep operators' logs to what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    return int(args.func(args))
