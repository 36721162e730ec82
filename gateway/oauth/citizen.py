"""Citizen tokens: the identity provider vouches for a citizen; the gateway only verifies.

The gateway holds no citizen passwords. A configured identity provider (IdP) signs a short
JWT whose subject is the citizen's GB 11643 ID number; the citizen endpoints (consents,
access log) accept nothing else. Where the IdP's public keys come from is a
:class:`KeySource`, and one verifier serves both kinds of IdP:

* **an OpenID Connect provider** (production): its ID tokens (OIDC Core 3.1.3.7), ``typ``
  absent or ``JWT``, keys from its JWK Set fetched over HTTPS (:class:`JwksKeys`: cached,
  refreshed on an unknown ``kid`` at most every ``min_refresh_interval`` seconds);
* **the demo IdP** (``tongban demo`` only): ``typ: tongban-citizen+jwt``, one key from the
  data directory (:class:`StaticKeys`).

Either way ``iss`` must be the configured issuer exactly, ``aud`` must name the configured
audience (and ``azp``, when present or when there are several audiences, must be it),
``exp``/``iat``/``nbf`` hold with a small leeway, ``alg`` is one of a pinned list (SM2,
ES256; never ``none`` or an HMAC) and ``kid`` selects the key. The distinct ``typ`` keeps a
citizen token from being accepted as a requester's access token, and the reverse.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from tongban.primitives.errors import InvalidIdNumber, Unauthenticated
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.idnumber import mask, parse
from tongban.primitives.jws import (
    SUPPORTED_ALGORITHMS,
    PrivateKey,
    PublicKey,
    key_from_jwk,
    sign_compact,
    verify_compact,
)

from ._jwt import (
    bearer_token,
    check_audience,
    check_issuer,
    check_times,
    key_id,
    string_claim,
    unverified_header,
)
from .errors import IdentityProviderUnavailable, InvalidToken, TokenWrongAudience, TokenWrongType

__all__ = [
    "CITIZEN_TOKEN_TYPE",
    "OIDC_TOKEN_TYPES",
    "Citizen",
    "CitizenTokenVerifier",
    "JwksKeys",
    "KeySource",
    "StaticKeys",
    "check_jwks_url",
    "mint_citizen_token",
]

CITIZEN_TOKEN_TYPE = "tongban-citizen+jwt"  # noqa: S105  # a media type, not a secret
#: The ``typ`` an OIDC ID token may carry: none, or ``JWT`` (RFC 7519 5.1; media types are
#: case-insensitive, and ``application/`` may be left out, RFC 7515 4.1.9).
OIDC_TOKEN_TYPES: tuple[str | None, ...] = (None, "JWT", "jwt", "application/jwt")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
#: A JWK Set larger than this is refused unread (an IdP publishes a handful of keys).
MAX_JWKS_BYTES = 64 * 1024

log = logging.getLogger("tongban.gateway.citizen")


@dataclass(frozen=True)
class Citizen:
    """An authenticated citizen. ``repr`` masks the ID number so it cannot reach a log."""

    id_number: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Citizen(id_number={mask(self.id_number)!r})"


class KeySource(Protocol):
    """Where the IdP's public keys come from: the key of a ``kid``, or None if it has none.
    May raise :class:`IdentityProviderUnavailable` (the keys cannot be known now)."""

    def key(self, kid: str) -> PublicKey | None: ...


class StaticKeys:
    """Keys given once (the demo IdP's, a test's)."""

    def __init__(self, keys: Mapping[str, PublicKey]) -> None:
        self._keys = dict(keys)

    def key(self, kid: str) -> PublicKey | None:
        return self._keys.get(kid)


def _where(url: str) -> str:
    """The URL for a log line: scheme, host and path (a query could carry a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def check_jwks_url(url: str, *, allow_loopback_http: bool = False) -> str:
    """``url`` if the gateway may fetch a JWK Set from it: HTTPS with a host, no user
    info; plain HTTP only to a loopback host and only with ``allow_loopback_http`` (which
    no setting reaches: tests only). ValueError naming the rule otherwise."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  # raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("expected an https:// URL") from None
    if not host or parts.username is not None or parts.password is not None:
        raise ValueError("expected an https:// URL with a host and no user info")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and allow_loopback_http and host in LOOPBACK_HOSTS:
        return url
    raise ValueError("expected an https:// URL (the keys that vouch for citizens)")


class JwksKeys:
    """The IdP's JWK Set (RFC 7517) at ``url``, fetched over HTTPS.

    Fetched at first use, not at start-up (an IdP that is down does not stop the gateway),
    then kept for ``ttl`` seconds. A ``kid`` the cached set lacks triggers a refresh (key
    rotation at the IdP), but fetches of any cause are at least ``min_refresh_interval``
    seconds apart, so a flood of tokens with made-up ``kid`` values costs the IdP one fetch
    per interval per process. A fetch that fails (timeout, refused connection, a status
    other than 200, a malformed set) keeps the cached keys in use and is logged; with
    nothing cached the citizen gets :class:`IdentityProviderUnavailable` (503).

    Keys the gateway cannot use (RSA, encryption keys) are skipped; a set that is not a
    JWK Set, holds private key material, a malformed SM2 or P-256 key, two keys with one
    ``kid`` or no usable key at all is refused whole.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl: float = 300.0,
        timeout: float = 2.0,
        min_refresh_interval: float = 30.0,
        allow_loopback_http: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = check_jwks_url(url, allow_loopback_http=allow_loopback_http)
        self._ttl = ttl
        self._timeout = timeout
        self._interval = min_refresh_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, PublicKey] | None = None
        self._fetched_at = 0.0  # when self._keys was fetched
        self._attempted_at: float | None = None  # the last fetch, whatever its outcome
        self._failure = ""  # why the last fetch failed ("" if it did not)
        #: How many fetches were attempted (for tests and the curious).
        self.fetches = 0

    def key(self, kid: str) -> PublicKey | None:
        with self._lock:
            now = self._clock()
            stale = self._keys is None or now - self._fetched_at >= self._ttl
            if (stale or kid not in (self._keys or {})) and self._may_fetch(now):
                self._refresh(now)
            if self._keys is None:
                raise IdentityProviderUnavailable(
                    f"identity provider: its key set {self._failure}; try again later"
                )
            return self._keys.get(kid)

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._interval

    def _refresh(self, now: float) -> None:
        self._attempted_at = now
        self.fetches += 1
        try:
            keys = self._parse(self._fetch())
        except _Refused as exc:
            self._failure = exc.failure
            kept = "keeping the cached keys" if self._keys is not None else "no keys cached"
            log.error(
                "citizen identity provider: JWK Set at %s refused (%s): %s",
                _where(self.url), exc.reason, kept,
            )  # fmt: skip
            return
        self._keys, self._fetched_at, self._failure = keys, now, ""
        log.info("citizen identity provider: %d key(s) from %s", len(keys), _where(self.url))

    def _fetch(self) -> bytes:
        unreachable = "could not be fetched"
        try:
            # No proxy from the environment, no redirect: the configured URL, or nothing.
            with httpx.stream(
                "GET",
                self.url,
                timeout=self._timeout,
                follow_redirects=False,
                trust_env=False,
                headers={"Accept": "application/jwk-set+json, application/json"},
            ) as resp:
                if resp.status_code != 200:
                    raise _Refused(unreachable, f"HTTP {resp.status_code}")
                body = b""
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise _Refused("is malformed", f"larger than {MAX_JWKS_BYTES} bytes")
                return body
        except httpx.TimeoutException:
            raise _Refused(unreachable, f"no answer within {self._timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise _Refused(unreachable, type(exc).__name__) from None

    @staticmethod
    def _parse(body: bytes) -> dict[str, PublicKey]:
        malformed = "is malformed"
        try:
            doc = json.loads(body)
        except ValueError:
            raise _Refused(malformed, "not JSON") from None
        entries = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise _Refused(malformed, "not a JWK Set (no keys array)")
        keys: dict[str, PublicKey] = {}
        for i, jwk in enumerate(entries):
            if not isinstance(jwk, dict):
                raise _Refused(malformed, f"keys[{i}]: not an object")
            if "d" in jwk or "k" in jwk:
                raise _Refused(malformed, f"keys[{i}]: holds private key material")
            usable = jwk.get("kty") == "EC" and jwk.get("crv") in ("SM2", "P-256")
            if not usable or jwk.get("use", "sig") != "sig":
                continue  # RSA, OKP, an encryption key: not ours to use, not an error
            kid = jwk.get("kid")
            if not isinstance(kid, str) or not kid:
                log.warning("citizen identity provider: keys[%d] has no kid, skipped", i)
                continue
            if kid in keys:
                raise _Refused(malformed, f"keys[{i}]: a second key with one kid")
            try:
                keys[kid] = key_from_jwk(jwk)
            except (ValueError, TypeError):
                raise _Refused(malformed, f"keys[{i}]: not a valid {jwk['crv']} key") from None
        if not keys:
            raise _Refused(malformed, "no SM2 or P-256 signing key with a kid")
        return keys


class _Refused(Exception):
    """A fetch that gave no usable JWK Set: ``failure`` is for the citizen, ``reason``
    (never a key or a token) for the log."""

    def __init__(self, failure: str, reason: str) -> None:
        super().__init__(reason)
        self.failure = failure
        self.reason = reason


class _Resolver(Mapping[str, PublicKey]):
    """A key source as the ``kid -> key`` lookup :func:`verify_compact` calls; errors of the
    source (IdP unavailable) propagate unchanged."""

    def __init__(self, source: KeySource) -> None:
        self._source = source

    def __getitem__(self, kid: str) -> PublicKey:
        key = self._source.key(kid)
        if key is None:
            raise KeyError(kid)
        return key

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


class CitizenTokenVerifier:
    """Verifies IdP-signed citizen tokens against the IdP's public keys.

    ``keys`` is a mapping (the demo IdP's key) or a :class:`KeySource` (an OIDC IdP's
    :class:`JwksKeys`); ``token_types`` the ``typ`` values accepted (None: absent), the
    demo's own by default, :data:`OIDC_TOKEN_TYPES` for ID tokens (see :meth:`oidc`);
    ``subject_claim`` the claim holding the ID number.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        keys: Mapping[str, PublicKey] | KeySource,
        algorithms: Collection[str] = ("SM2", "ES256"),
        token_types: Collection[str | None] = (CITIZEN_TOKEN_TYPE,),
        subject_claim: str = "sub",
        leeway: float = 5,
        max_lifetime: float = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not algorithms or set(algorithms) - SUPPORTED_ALGORITHMS:
            raise ValueError(f"algorithms: expected a subset of {sorted(SUPPORTED_ALGORITHMS)}")
        if not token_types:
            raise ValueError("token_types: expected at least one typ")
        self.issuer = issuer
        self.audience = audience
        self.keys: KeySource = StaticKeys(keys) if isinstance(keys, Mapping) else keys
        self._algorithms = frozenset(algorithms)
        self._types = tuple(token_types)
        self._subject = subject_claim
        self._leeway = leeway
        self._max_lifetime = max_lifetime
        self._clock = clock

    @property
    def demo(self) -> bool:
        """Whether this is the demo identity provider's verifier (its own token type and
        a key given in code), which the login page says plainly."""
        return CITIZEN_TOKEN_TYPE in self._types and isinstance(self.keys, StaticKeys)

    @classmethod
    def oidc(
        cls,
        *,
        issuer: str,
        audience: str,
        keys: KeySource,
        algorithms: Collection[str],
        subject_claim: str = "sub",
        **kwargs: Any,
    ) -> CitizenTokenVerifier:
        """A verifier of an OpenID Connect provider's ID tokens (OIDC Core 3.1.3.7):
        ``audience`` is the gateway's client id at the IdP."""
        return cls(
            issuer=issuer,
            audience=audience,
            keys=keys,
            algorithms=algorithms,
            token_types=OIDC_TOKEN_TYPES,
            subject_claim=subject_claim,
            **kwargs,
        )

    def verify_citizen_token(self, authorization_header: str | None) -> Citizen:
        """The citizen of an ``Authorization: Bearer`` header; InvalidToken subclasses (401)
        on any failure, never echoing the ID number; IdentityProviderUnavailable (503)
        when the IdP's keys cannot be known."""
        return self.verify(bearer_token(authorization_header))

    def verify(self, token: str) -> Citizen:
        # typ first, so a token of another kind (an access token, the IdP's own access
        # token) is reported as such, and costs no key lookup.
        typ: Any = unverified_header(token).get("typ")
        if typ not in self._types:
            expected = " or ".join("none" if t is None else t for t in self._types)
            raise TokenWrongType(f"typ: expected {expected}")
        try:
            # verify_compact compares the signed header's typ with this one (None: absent),
            # checks alg against the pinned list before it looks a key up, then the kid.
            _, payload = verify_compact(
                token, _Resolver(self.keys).get, typ=typ, algorithms=self._algorithms
            )
        except Unauthenticated as exc:
            raise InvalidToken(exc.detail) from exc
        check_issuer(payload, self.issuer)
        check_audience(payload, self.audience)
        _check_azp(payload, self.audience)
        check_times(
            payload, now=self._clock(), leeway=self._leeway, max_lifetime=self._max_lifetime
        )
        subject = string_claim(payload, self._subject)
        try:
            # A signed but invalid ID is the IdP's fault, not the caller's input: 401.
            return Citizen(parse(subject).number)
        except InvalidIdNumber as exc:
            raise InvalidToken(f"{self._subject}: expected a valid GB 11643 ID number") from exc


def _check_azp(payload: Mapping[str, Any], audience: str) -> None:
    """OIDC Core 3.1.3.7 items 4 and 5: with several audiences ``azp`` must be present, and
    a present ``azp`` must be this client."""
    aud = payload.get("aud")
    azp = payload.get("azp")
    if azp is None and isinstance(aud, list) and len(aud) > 1:
        raise TokenWrongAudience("azp: required when aud names several audiences")
    if azp is not None and azp != audience:
        raise TokenWrongAudience("azp: does not name this service")


def mint_citizen_token(
    idp_key: PrivateKey,
    id_number: str,
    *,
    issuer: str,
    audience: str,
    kid: str | None = None,
    lifetime: int = 600,
    now: float | None = None,
) -> str:
    """Sign a citizen token as the IdP would. DEMO AND TESTS ONLY: in production the IdP
    mints these, and the gateway never holds an IdP private key.

    Raises :class:`InvalidIdNumber` (naming the reason, not the value) for a bad number.
    """
    number = parse(id_number).number
    issued = int(time.time() if now is None else now)
    public = idp_key.public_key if isinstance(idp_key, SM2PrivateKey) else idp_key.public_key()
    claims = {
        "iss": issuer,
        "sub": number,
        "aud": audience,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": secrets.token_urlsafe(16),
    }
    return sign_compact(claims, idp_key, typ=CITIZEN_TOKEN_TYPE, kid=kid or key_id(public))
