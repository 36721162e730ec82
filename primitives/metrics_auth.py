"""Who may read ``/metrics``: the holder of the operator's metrics token, and nobody else.

The gateway's and every adapter's ``GET /metrics`` answer only a request that carries
``Authorization: Bearer <token>``, the token being the text of ``DIR/keys/metrics.token``
(:data:`TOKEN_FILE`; mode 0600). The file is made by ``tongban keys init`` (and so by
``tongban demo``), or by the first process that starts without one; a process reads it once
at start-up, so a new token needs a restart. Prometheus reads the same file::

    authorization:
      type: Bearer
      credentials_file: /srv/tongban/keys/metrics.token

Anything else (no header, another scheme, a wrong token, or a process without a token
file) is a 401 problem+json of type ``metrics-unauthenticated`` with a bearer challenge.
The comparison is of SHA-256 digests with :func:`hmac.compare_digest`: it takes the same
time whatever the presented value is and however much of it is right.

Framework-free: the HTTP shells call :meth:`MetricsCredential.check` with the request's
``Authorization`` header.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from .errors import Unauthenticated

__all__ = [
    "TOKEN_FILE",
    "MetricsCredential",
    "MetricsUnauthenticated",
    "ensure_metrics_token",
]

TOKEN_FILE = "metrics.token"  # noqa: S105 (a file name, not a secret)
_MIN_TOKEN = 32  # characters: ``secrets.token_urlsafe(32)`` gives 43
_MAX_HEADER = 512


class MetricsUnauthenticated(Unauthenticated):
    """``/metrics`` without the operator's metrics token."""

    slug = "metrics-unauthenticated"
    title = "Metrics need the operator's metrics token"

    def response_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="tongban-metrics"'}


def _digest(value: str | bytes) -> bytes:
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return hashlib.sha256(data).digest()


class MetricsCredential:
    """The metrics token a process accepts (``None``: it accepts none, every scrape is
    refused). Only the token's digest is kept."""

    def __init__(self, token: str | None) -> None:
        if token is not None and len(token) < _MIN_TOKEN:
            raise ValueError(f"a metrics token has at least {_MIN_TOKEN} characters")
        self._digest = None if token is None else _digest(token)

    @classmethod
    def from_file(cls, path: Path) -> MetricsCredential:
        """The token in ``path``; none (every scrape refused) if there is no such file."""
        try:
            token = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return cls(None)
        return cls(token)

    @property
    def configured(self) -> bool:
        return self._digest is not None

    def check(self, authorization: str | None) -> None:
        """Return if ``authorization`` (the header's value) is ``Bearer <the token>``;
        raise :class:`MetricsUnauthenticated` otherwise. The detail never repeats what was
        sent."""
        if self._digest is None:
            raise MetricsUnauthenticated(
                "this process has no metrics token (DIR/keys/metrics.token): run "
                "`tongban keys init` and restart it"
            )
        scheme, _, presented = (authorization or "")[:_MAX_HEADER].partition(" ")
        # Digest first, then compare: constant time in the presented value and its length.
        given = _digest(presented.strip())
        matches = hmac.compare_digest(given, self._digest)
        if scheme.lower() != "bearer" or not matches:
            raise MetricsUnauthenticated(
                "GET /metrics needs Authorization: Bearer <the metrics token>"
            )


def ensure_metrics_token(keys_dir: Path) -> MetricsCredential:
    """The credential of ``keys_dir/metrics.token``, the file made (mode 0600, a random
    256-bit token) if absent. Several processes starting at once agree on one token: the
    file is linked into place atomically and never overwritten."""
    path = keys_dir / TOKEN_FILE
    if not path.exists():
        keys_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    return MetricsCredential.from_file(path)
