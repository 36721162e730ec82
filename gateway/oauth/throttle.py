"""Throttling of the token endpoint: buckets per client id and per source address.

Every token request that names a client (in HTTP Basic, or as the ``sub`` of a client
assertion, unverified) is charged one token from that client id's bucket and one from its
source address's bucket *before* the client is looked up or any secret or signature is
checked, so a flood of wrong secrets cannot buy more than the budget of scrypt (legacy
rows), HMAC or signature checks. The buckets are the check limiter's
(:mod:`gateway.ratelimit`) in a table of their own in the OAuth database, so every
gunicorn worker and every gateway host draws from the same budget; a per-process
:class:`~gateway.ratelimit.CachedRefusals` answers a flood that is already over budget
without a database round trip.

- The client id's bucket is charged whether or not the client exists, so the moment a
  429 starts says nothing about which ids are registered.
- The source is the peer address the WSGI server reports (``REMOTE_ADDR``); IPv6 is
  bucketed per /64, which is what one subscriber usually holds. Behind a reverse proxy
  that address is the proxy's: the deployment must make the WSGI server report the
  client's address (e.g. a trusted ``X-Forwarded-For`` through werkzeug's ``ProxyFix``),
  or the source bucket becomes one bucket for everybody.
- Successful requests are charged too: a requester needs one token per 5 minutes per
  process, far inside the default budget, and charging before the check is what keeps the
  budget exact under concurrency.
- A flood naming one client id locks that client out of ``client_secret_basic`` until it
  stops (the price of a per-client budget); the client's access tokens already issued keep
  working, and the source bucket means the attacker needs many addresses to do it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import ipaddress
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from urllib.parse import unquote

from sqlalchemy import Engine

from tongban.gateway.ratelimit import Bucket, BucketStore, CachedRefusals, Charge, SqlBucketStore
from tongban.primitives.db import is_memory_sqlite
from tongban.primitives.errors import RateLimited

from ._schema import token_buckets

__all__ = [
    "CLIENT_BUCKET",
    "SOURCE_BUCKET",
    "TokenThrottle",
    "claimed_client_id",
    "client_budget_exhausted",
    "mark_proven",
    "over_client_budget",
    "source_of",
]

#: Per client id: 20 attempts at once, then one every 3 seconds (1,200 an hour).
CLIENT_BUCKET = Bucket(20, 1 / 3)
#: Per source address (IPv4, or IPv6 /64): 60 attempts at once, then one a second.
SOURCE_BUCKET = Bucket(60, 1.0)
_MAX_ID = 256
_MAX_ASSERTION = 16 * 1024


def _key(limit: str, value: str) -> str:
    return hashlib.sha256(f"oauth-token\x00{limit}\x00{value}".encode()).hexdigest()


_OVER_CLIENT_BUDGET: ContextVar[bool] = ContextVar("over_client_budget", default=False)


def over_client_budget() -> bool:
    """Whether the token request being authenticated is past its client id's budget. The
    secret check then runs only where it is cheap (an ``hmac-sm3`` row: a right secret
    still gets its token, so a flood naming a migrated client cannot lock it out) and
    never a scrypt (a scrypt row fails, as an unknown client does)."""
    return _OVER_CLIENT_BUDGET.get()


_PROVEN: ContextVar[list[bool] | None] = ContextVar("client_proven", default=None)


def mark_proven() -> None:
    """Called once a client assertion's signature verified: whatever fails after that
    (replay, expiry, audience) was sent by the key's holder, who may learn the reason."""
    proven = _PROVEN.get()
    if proven is not None:
        proven.append(True)


@contextlib.contextmanager
def client_budget_exhausted() -> Iterator[list[bool]]:
    """Within: :func:`over_client_budget` is True (the token view wraps Authlib in it).
    The list it yields is non-empty afterwards if the client proved its key."""
    proven: list[bool] = []
    reset = _OVER_CLIENT_BUDGET.set(True), _PROVEN.set(proven)
    try:
        yield proven
    finally:
        _OVER_CLIENT_BUDGET.reset(reset[0])
        _PROVEN.reset(reset[1])


def _refusal(charge: Charge, wait: float) -> RateLimited:
    what = "this client id" if charge.limit == "client" else "this address"
    return RateLimited(
        f"rate limit: too many token requests for {what}; retry later",
        retry_after=max(1, math.ceil(wait)),
        limit=charge.limit,
    )


def source_of(remote_addr: str | None) -> str:
    """The bucket name of a peer address: the IPv4 address, the /64 of an IPv6 one (the
    IPv4 address of an IPv4-mapped one), or ``unknown``."""
    try:
        address = ipaddress.ip_address((remote_addr or "").split("%", 1)[0])
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _basic_client_id(authorization: str) -> str | None:
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or not encoded or len(encoded) > 1024:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, _ = decoded.partition(":")
    # Decoded as the authenticator decodes it (RFC 6749 2.3.1), or every spelling of one
    # id (edu%2Dbureau, %65du-bureau, ...) would get a budget of its own.
    return unquote(client_id) if sep and client_id else None


def _assertion_subject(assertion: str) -> str | None:
    parts = assertion.split(".")
    if len(parts) != 3 or len(assertion) > _MAX_ASSERTION:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    sub = payload.get("sub") if isinstance(payload, dict) else None
    return sub if isinstance(sub, str) and sub else None


def claimed_client_id(authorization: str | None, form: Mapping[str, str]) -> str | None:
    """The client id a token request claims, before anything is verified: from HTTP Basic
    (form-url-decoded, as the authenticator reads it), else the ``sub`` of a client
    assertion, else a ``client_id`` form field."""
    if authorization:
        found = _basic_client_id(authorization)
    elif form.get("client_assertion"):
        found = _assertion_subject(form["client_assertion"])
    else:
        found = form.get("client_id") or None
    return found[:_MAX_ID] if found else None


class TokenThrottle:
    """Admits token requests against the per-client and per-source buckets (either may be
    None: off). :meth:`admit` raises :class:`RateLimited` with ``limit`` ``client`` or
    ``source`` and the seconds to wait."""

    def __init__(
        self,
        store: BucketStore,
        *,
        client: Bucket | None = CLIENT_BUCKET,
        source: Bucket | None = SOURCE_BUCKET,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.client = client
        self.source = source
        self._clock = clock
        self._owned: Engine | None = None

    @classmethod
    def on_engine(
        cls,
        engine: Engine,
        *,
        client: Bucket | None = CLIENT_BUCKET,
        source: Bucket | None = SOURCE_BUCKET,
    ) -> TokenThrottle:
        """The SQL-shared throttle in the OAuth database of ``engine`` (the table comes
        with the registry's ``create_schema``), behind a per-process refusal cache. A
        separate engine on the same URL, so its commits get the bucket store's relaxed
        durability; an in-memory SQLite database is used through ``engine`` itself."""
        url = engine.url.render_as_string(hide_password=False)
        target: str | Engine = engine if is_memory_sqlite(url) else url
        slowest = max((b.full_after for b in (client, source) if b is not None), default=1.0)
        store = SqlBucketStore(target, max_full_after=max(slowest, 1.0), table=token_buckets)
        throttle = cls(CachedRefusals(store), client=client, source=source)
        throttle._owned = store.engine if store.engine is not engine else None
        return throttle

    def charges(self, client_id: str | None, source: str | None) -> list[Charge]:
        out: list[Charge] = []
        if self.source is not None and source is not None:
            out.append(Charge("source", _key("source", source), self.source, 1.0))
        if self.client is not None and client_id is not None:
            out.append(Charge("client", _key("client", client_id), self.client, 1.0))
        return out

    def _take(self, charges: list[Charge]) -> RateLimited | None:
        refused = self.store.take(charges, self._clock()) if charges else None
        return _refusal(*refused) if refused is not None else None

    def admit(self, client_id: str | None, source: str) -> None:
        """Charge both buckets, or raise :class:`RateLimited` (charging nothing)."""
        refused = self._take(self.charges(client_id, source))
        if refused is not None:
            raise refused

    def admit_source(self, source: str) -> None:
        """Charge the source address's bucket, or raise :class:`RateLimited`."""
        refused = self._take(self.charges(None, source))
        if refused is not None:
            raise refused

    def take_client(self, client_id: str | None) -> RateLimited | None:
        """Charge the client id's bucket: None if admitted, else the refusal (returned,
        not raised: the token endpoint still lets an ``hmac-sm3`` client in, see
        :func:`over_client_budget`)."""
        return self._take(self.charges(client_id, None))

    def refused_locally(self, source: str) -> RateLimited | None:
        """The refusal of ``source`` this process already knows of, from memory alone (no
        database, nothing raised): what the WSGI fast path answers a flood past its
        budget with. Client-id refusals are not answered there: an ``hmac-sm3`` client
        with its right secret still gets in (see :func:`over_client_budget`)."""
        if not isinstance(self.store, CachedRefusals):
            return None
        refused = self.store.peek(self.charges(None, source), self._clock())
        return _refusal(*refused) if refused is not None else None

    def dispose(self) -> None:
        """Close the engine :meth:`on_engine` made, if it made one."""
        if self._owned is not None:
            self._owned.dispose()
