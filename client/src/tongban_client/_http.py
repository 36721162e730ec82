"""Authlib's httpx client, imported once, and what the SDK needs around it.

Authlib 1.9 prefers the ``httpx2`` package and, without it, falls back to ``httpx`` with a
``DeprecationWarning`` at import. The SDK depends on ``httpx``: that one warning is
silenced here (only it), and the exception types of whichever package Authlib uses are
caught.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import os
import ssl
import warnings
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import authlib.deprecate  # noqa: F401 -- its import installs Authlib's own warning filter

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="The httpx module is deprecated")
    from authlib.integrations.httpx_client import OAuth2Client
    from authlib.oauth2.rfc7523 import PrivateKeyJWT

__all__ = [
    "REQUEST_ERRORS",
    "OAuth2Client",
    "PrivateKeyJWT",
    "Response",
    "is_loopback",
    "json_body",
    "tls_verify",
]


def _request_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = []
    for name in ("httpx", "httpx2"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        found.append(module.RequestError)
    return tuple(found)


REQUEST_ERRORS = _request_errors()
"""Connection, TLS, timeout, decoding and redirect failures of the HTTP client."""


class Response(Protocol):
    """The part of an httpx (or httpx2) response the SDK reads."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...


def tls_verify(verify: bool | str | os.PathLike[str]) -> bool | ssl.SSLContext:
    """``True`` (httpx's default CA bundle), ``False`` (no verification),
    or a CA bundle file as an :class:`ssl.SSLContext` (httpx 0.28 deprecates paths)."""
    if isinstance(verify, bool):
        return verify
    try:
        return ssl.create_default_context(cafile=os.fspath(verify))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"verify: cannot load the CA bundle ({exc.__class__.__name__})") from None


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def json_body(resp: Response) -> Any:
    """The JSON of a response, or None if it is not JSON."""
    try:
        return json.loads(resp.content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
