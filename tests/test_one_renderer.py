"""One problem renderer (tongban.http_shell.problem_response): no other module builds a
problem+json response or serialises a problem itself, the headers a problem needs come
from the error (``response_headers``), and the gateway does not import the adapter's
HTTP shell."""

from __future__ import annotations

import ast
from pathlib import Path

from tongban.gateway.oauth.errors import InsufficientScope, TokenExpired, TokenMissing
from tongban.primitives.errors import RateLimited, StoreUnavailable

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "adapters", "tongban", "policies", "audit", "federation", "primitives")
RENDERERS = {"tongban/http_shell.py", "primitives/problem.py", "primitives/errors.py"}


def _sources() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


def test_only_the_shell_renders_problems() -> None:
    offenders = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        if rel in RENDERERS:
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Name) and node.id == "PROBLEM_JSON":
                offenders.append(f"{rel}:{node.lineno} PROBLEM_JSON")
            if isinstance(node, ast.Attribute) and node.attr == "to_problem":
                offenders.append(f"{rel}:{node.lineno} to_problem")
    assert offenders == []


def test_the_gateway_does_not_import_the_adapters_shell() -> None:
    offenders = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in (
                "tongban.adapters.service",
                "adapters.service",
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_the_errors_carry_their_headers() -> None:
    assert TokenMissing("x").response_headers() == {"WWW-Authenticate": 'Bearer realm="tongban"'}
    expired = TokenExpired('exp: "passed" \\ ').response_headers()["WWW-Authenticate"]
    assert expired.startswith('Bearer realm="tongban", error="invalid_token", error_description="')
    assert expired.count('"') == 6  # the detail's own quotes cannot end the header value
    assert InsufficientScope("admin").response_headers() == {
        "WWW-Authenticate": 'Bearer realm="tongban", error="insufficient_scope", scope="admin"'
    }
    assert RateLimited("slow down", retry_after=7, limit="requester").response_headers() == {
        "Retry-After": "7"
    }
    assert StoreUnavailable("away").response_headers() == {"Retry-After": "1"}
