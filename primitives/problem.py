"""RFC 9457 problem details, framework-free: the HTTP shells wrap these in responses."""

from __future__ import annotations

import json
import re
import secrets

from .errors import (
    BadRequest,
    MalformedJson,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    TongbanError,
)

__all__ = ["PROBLEM_JSON", "from_http_status", "malformed_json", "problem_body", "request_id"]

PROBLEM_JSON = "application/problem+json"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
# A long run of digits may be an ID or phone number: never echo or log it.
_LONG_DIGITS = re.compile(r"[0-9]{11,}")


def request_id(incoming: str | None) -> str:
    """Keep a caller's X-Request-Id if it is a plain token; otherwise mint one. A
    malformed id is replaced, never echoed, so it cannot carry data into logs."""
    if incoming and _REQUEST_ID.fullmatch(incoming) and not _LONG_DIGITS.search(incoming):
        return incoming
    return secrets.token_hex(12)


def problem_body(exc: TongbanError, instance: str) -> bytes:
    return json.dumps(exc.to_problem(instance), ensure_ascii=False).encode("utf-8")


def from_http_status(status: int | None, max_body: int) -> TongbanError:
    """Translate the web framework's own HTTP errors into the tongban tree."""
    if status == 404:
        return NotFound("no such endpoint")
    if status == 405:
        return MethodNotAllowed("this endpoint does not accept that method")
    if status == 413:
        return PayloadTooLarge(f"body: at most {max_body} bytes")
    return BadRequest("the request could not be read")


def malformed_json(exc: ValueError | None, body: bytes) -> BadRequest:
    """The problem for a request body the JSON parser refused (``exc``), or that was not
    sent as JSON at all (``None``). It says where parsing stopped, never what it read."""
    if exc is None:
        return BadRequest("body: expected JSON (Content-Type: application/json)")
    if not body.strip():
        return MalformedJson("body: empty; expected a JSON document")
    if isinstance(exc, json.JSONDecodeError):
        return MalformedJson(f"body: not valid JSON (line {exc.lineno}, column {exc.colno})")
    return MalformedJson("body: not valid JSON (expected UTF-8 text)")
