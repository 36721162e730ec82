"""``tongban-client``: checks and offline verification from the command line.

Output is JSON on stdout. Any failure is one line on stderr, ``tongban-client: error: ...``,
and a non-zero exit code: 1 the gateway refused or could not be reached, 2 a usage error,
3 something did not verify (an answer, a checkpoint, a proof). Never a traceback.

The client secret comes from ``TONGBAN_CLIENT_SECRET`` (never a flag: flags show in
``ps`` and shell history); ``--url`` and ``--client-id`` default to ``TONGBAN_URL`` and
``TONGBAN_CLIENT_ID``. ``--id-number -`` reads the ID number from standard input, for the
same reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import httpx

from . import __version__
from ._http import REQUEST_ERRORS, is_loopback, json_body, tls_verify
from .checkpoint import Checkpoint
from .client import Client
from .errors import (
    Problem,
    ProtocolError,
    TongbanClientError,
    TransportError,
    VerificationError,
    scrub,
)
from .jose import verify_answer

__all__ = ["main"]

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNVERIFIED = 3
_MAX_INPUT = 8 * 1024 * 1024


class UsageError(Exception):
    """Bad arguments or environment: exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _connection(parser: argparse.ArgumentParser, *, credentials: bool) -> None:
    group = parser.add_argument_group("gateway")
    group.add_argument(
        "--url", default=os.environ.get("TONGBAN_URL"), help="the gateway (env TONGBAN_URL)"
    )
    group.add_argument("--ca", metavar="FILE", help="CA bundle for the gateway's certificate")
    group.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    if not credentials:
        return
    group.add_argument(
        "--client-id",
        default=os.environ.get("TONGBAN_CLIENT_ID"),
        help="your client id (env TONGBAN_CLIENT_ID); the secret is read from "
        "TONGBAN_CLIENT_SECRET",
    )
    group.add_argument(
        "--private-key",
        metavar="FILE",
        help="authenticate with private_key_jwt and this SM2 or P-256 key instead of a secret",
    )
    group.add_argument("--key-id", metavar="KID", help="the kid registered for --private-key")


def _pinning(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("checkpoint keys")
    group.add_argument(
        "--pinned-key",
        required=True,
        metavar="FILE",
        help="the gateway's SM2 public key (JWK, one-key JWK Set or PEM), obtained out of band",
    )
    group.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="a witness (department) public key; repeatable",
    )
    group.add_argument(
        "--quorum", type=int, default=0, help="cosignatures of --witness keys required"
    )
    group.add_argument("--origin", help="the audit log's name the checkpoint must carry")


def _parser() -> _Parser:
    parser = _Parser(
        prog="tongban-client",
        description="Checks against a tongban gateway, and offline verification of its "
        "signed answers and audit log.",
    )
    parser.add_argument("--version", action="version", version=f"tongban-client {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="ask one yes/no claim about one citizen")
    check.add_argument("claim")
    check.add_argument("purpose")
    check.add_argument("--id-number", required=True, help="the citizen's ID number, or - (stdin)")
    check.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="a claim parameter"
    )
    check.add_argument("--consent-id")
    check.add_argument("--answer-alg", choices=("SM2", "ES256"), default="SM2")
    check.add_argument(
        "--verify", action="store_true", help="also verify the signed answer (gateway's JWKS)"
    )
    _connection(check, credentials=True)

    batch = sub.add_parser("batch", help="ask one claim about many citizens at once")
    batch.add_argument("claim")
    batch.add_argument("purpose")
    batch.add_argument(
        "--ids",
        required=True,
        metavar="FILE",
        help="ID numbers, one per line (optionally ID,CONSENT_ID); - for stdin",
    )
    batch.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="a claim parameter"
    )
    batch.add_argument("--answer-alg", choices=("SM2", "ES256"), default="SM2")
    batch.add_argument(
        "--verify", action="store_true", help="also verify the signed answer (gateway's JWKS)"
    )
    _connection(batch, credentials=True)

    claims = sub.add_parser("claims", help="list the claims and purposes you may ask")
    _connection(claims, credentials=True)

    answer = sub.add_parser("verify-answer", help="verify a signed answer offline")
    answer.add_argument("file", help="a compact JWS, or a check's JSON answer; - for stdin")
    answer.add_argument("--jwks", required=True, help="the gateway's JWK Set: a URL or a file")
    answer.add_argument("--audience", help="your client id: the answer must be meant for it")
    answer.add_argument("--ca", metavar="FILE", help="CA bundle, for a --jwks URL")

    inclusion = sub.add_parser(
        "verify-inclusion", help="prove one of your audit entries is in the signed log"
    )
    inclusion.add_argument("--index", type=int, required=True, help="the audit_index")
    _connection(inclusion, credentials=True)
    _pinning(inclusion)

    consistency = sub.add_parser(
        "verify-consistency",
        help="prove the log only grew since the checkpoint kept in --state, then keep the new one",
    )
    consistency.add_argument(
        "--state", required=True, metavar="FILE", help="where the last checkpoint is kept"
    )
    _connection(consistency, credentials=False)
    _pinning(consistency)
    return parser


def _read_text(name: str) -> str:
    if name == "-":
        data = sys.stdin.buffer.read(_MAX_INPUT + 1)
    else:
        try:
            with Path(name).open("rb") as fh:
                data = fh.read(_MAX_INPUT + 1)
        except OSError as exc:
            raise UsageError(f"cannot read {name}: {exc.strerror}") from None
    if len(data) > _MAX_INPUT:
        raise UsageError(f"{name}: too large")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{name}: not UTF-8 text") from None


def _client(args: argparse.Namespace, *, credentials: bool = True) -> Client:
    if not args.url:
        raise UsageError("--url (or TONGBAN_URL) is required")
    options: dict[str, Any] = {"timeout": args.timeout}
    if args.ca:
        options["verify"] = args.ca
    if getattr(args, "pinned_key", None):
        options["gateway_key"] = args.pinned_key
        options["witness_keys"] = dict(_pair(w, "--witness") for w in args.witness)
        options["witness_quorum"] = args.quorum
        options["audit_origin"] = args.origin
    if not credentials:
        return Client(args.url, None, **options)
    if not args.client_id:
        raise UsageError("--client-id (or TONGBAN_CLIENT_ID) is required")
    if args.private_key:
        options.update(private_key=Path(args.private_key), key_id=args.key_id)
    else:
        secret = os.environ.get("TONGBAN_CLIENT_SECRET")
        if not secret:
            raise UsageError("set TONGBAN_CLIENT_SECRET (or give --private-key)")
        options["client_secret"] = secret
    return Client(args.url, args.client_id, **options)


def _pair(text: str, flag: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise UsageError(f"{flag}: expected NAME=VALUE")
    return name, value


def _print(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")


def _check(args: argparse.Namespace) -> int:
    number = args.id_number
    if number == "-":
        number = sys.stdin.readline().strip()
    if not number:
        raise UsageError("--id-number: empty")
    params = dict(_pair(p, "--param") for p in args.param)
    with _client(args) as gw:
        result = gw.check(
            args.claim,
            args.purpose,
            number,
            params=params or None,
            consent_id=args.consent_id,
            answer_alg=args.answer_alg,
        )
        out: dict[str, Any] = {
            "result": result.result,
            "audit_index": result.audit_index,
            "answer": result.answer,
        }
        if args.verify:
            out["verified"] = gw.verify_answer(result.answer)
    _print(out)
    return 0


def _batch(args: argparse.Namespace) -> int:
    subjects: list[tuple[str, str | None]] = []
    for line in _read_text(args.ids).splitlines():
        number, _, consent = line.strip().partition(",")
        if number:
            subjects.append((number.strip(), consent.strip() or None))
    if not subjects:
        raise UsageError("--ids: no ID numbers")
    params = dict(_pair(p, "--param") for p in args.param)
    with _client(args) as gw:
        result = gw.batch(
            args.claim, args.purpose, subjects, params=params or None, answer_alg=args.answer_alg
        )
        # Results by position in --ids, never with the ID numbers themselves.
        out: dict[str, Any] = {
            "results": [
                {"index": i.index, "result": i.result, "audit_index": i.audit_index}
                | ({"reason": i.reason} if i.reason else {})
                for i in result.items
            ],
            "answer": result.answer,
        }
        if args.verify:
            out["verified"] = gw.verify_answer(result.answer)
    _print(out)
    return 0


def _claims(args: argparse.Namespace) -> int:
    with _client(args) as gw:
        _print([dict(c.raw) for c in gw.claims()])
    return 0


def _fetch_jwks(location: str, ca: str | None) -> dict[str, Any]:
    if not location.startswith(("https://", "http://")):
        doc = json_body_text(_read_text(location), location)
    else:
        if location.startswith("http://") and not is_loopback(location):
            raise UsageError("--jwks: plain http:// only for loopback addresses")
        try:
            resp = httpx.get(location, verify=tls_verify(ca or True), timeout=10.0)
        except REQUEST_ERRORS as exc:
            raise TransportError(f"--jwks unreachable ({exc.__class__.__name__})") from exc
        if resp.status_code != 200:
            raise ProtocolError(f"--jwks: HTTP {resp.status_code}")
        doc = json_body(resp)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ProtocolError("--jwks: not a JWK Set")
    return doc


def json_body_text(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise UsageError(f"{name}: not JSON") from None


def _verify_answer(args: argparse.Namespace) -> int:
    text = _read_text(args.file).strip()
    if text.startswith("{"):
        doc = json_body_text(text, args.file)
        text = doc.get("answer", "") if isinstance(doc, dict) else ""
        if not isinstance(text, str) or not text:
            raise UsageError(f"{args.file}: a JSON input needs an 'answer' member")
    jwks = _fetch_jwks(args.jwks, args.ca)
    _print(verify_answer(text, jwks, audience=args.audience))
    return 0


def _verify_inclusion(args: argparse.Namespace) -> int:
    with _client(args) as gw:
        proven = gw.verify_inclusion(args.index)
    _print({
        "verified": True,
        "index": proven.index,
        "tree_size": proven.tree_size,
        "leaf_hash": proven.leaf_hash.hex(),
        "root": proven.root.hex(),
    })  # fmt: skip
    return 0


def _verify_consistency(args: argparse.Namespace) -> int:
    state = Path(args.state)
    with _client(args, credentials=False) as gw:
        latest = gw.checkpoint()
        out: dict[str, Any] = {"verified": True, "tree_size": latest.size}
        if state.exists():
            proven = gw.verify_consistency(_read_text(args.state), latest)
            out.update(old_size=proven.old_size, new_size=proven.new_size)
        else:
            out["first_checkpoint"] = True  # nothing to compare with yet: kept for next time
    _keep(state, latest)
    out["root"] = latest.root.hex()
    _print(out)
    return 0


def _keep(state: Path, checkpoint: Checkpoint) -> None:
    tmp = state.with_name(f".{state.name}.tmp")
    try:
        tmp.write_text(checkpoint.text, encoding="utf-8")
        tmp.replace(state)
    except OSError as exc:
        raise UsageError(f"cannot write {state}: {exc.strerror}") from None


_COMMANDS = {
    "check": _check,
    "batch": _batch,
    "claims": _claims,
    "verify-answer": _verify_answer,
    "verify-inclusion": _verify_inclusion,
    "verify-consistency": _verify_consistency,
}


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"tongban-client: error: {scrub(message)}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        return _COMMANDS[args.command](args)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except VerificationError as exc:
        return _fail(f"does not verify: {exc.reason}", EXIT_UNVERIFIED)
    except Problem as exc:
        return _fail(f"the gateway refused: {exc}", EXIT_REFUSED)
    except TongbanClientError as exc:
        return _fail(str(exc), EXIT_REFUSED)
    except ValueError as exc:  # a bad key file, URL or option value
        return _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # never a traceback
        return _fail(f"unexpected {exc.__class__.__name__}", EXIT_REFUSED)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
