"""Production citizen login (issue 18, part 6): an OpenID Connect provider's ID tokens,
its keys from its JWK Set; the demo identity provider only where the demo enables it.

The identity provider here is a JWK Set server on 127.0.0.1, in this process (plain HTTP,
allowed for loopback only and only by the verifier's ``allow_loopback_http``, which no
setting reaches). It serves ES256 and SM2 keys, can rotate them, answer 503, time out,
serve garbage or be stopped. Every refusal is checked for its stable problem type and for
not echoing the token or the ID number.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tongban.config import ConfigError, Settings
from tongban.gateway.oauth.citizen import (
    CitizenTokenVerifier,
    JwksKeys,
    StaticKeys,
    check_jwks_url,
    mint_citizen_token,
)
from tongban.gateway.oauth.errors import (
    CitizenLoginNotConfigured,
    IdentityProviderUnavailable,
)
from tongban.gateway.oauth.flask import EXTENSION
from tongban.keys import KeyRing
from tongban.primitives.errors import PROBLEM_BASE, TongbanError
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.idnumber import make_id, mask
from tongban.primitives.jws import PrivateKey, jwks
from tongban.wiring import build_citizen_verifier

from .conftest import Generated
from .gateway_harness import Harness, build_harness

ISSUER = "https://idp.gov.test"
CLIENT_ID = "tongban-gateway-client"  # the gateway's client id at the IdP: the ID token's aud
CITIZEN = make_id("110105", dt.date(1990, 5, 17), 123)
INTERVAL = 30.0  # JwksKeys' default min_refresh_interval
TTL = 300.0


# --- the identity provider ----------------------------------------------------------------


class Idp:
    """A JWK Set on 127.0.0.1 that a test can rotate, break and stop."""

    def __init__(self) -> None:
        self.keys: dict[str, PrivateKey] = {}
        self.body: bytes | None = None  # served instead of the set when set
        self.status = 200
        self.delay = 0.0
        self.requests = 0
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                idp.requests += 1
                if idp.delay:
                    time.sleep(idp.delay)
                body = idp.body if idp.body is not None else json.dumps(idp.jwks()).encode()
                self.send_response(idp.status)
                self.send_header("Content-Type", "application/jwk-set+json")
                self.send_header("Content-Length", str(len(body)))
                if idp.status in (301, 302):
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, kid: str, key: PrivateKey) -> PrivateKey:
        self.keys[kid] = key
        return key

    def jwks(self) -> dict[str, Any]:
        public = {
            kid: k.public_key if isinstance(k, SM2PrivateKey) else k.public_key()
            for kid, k in self.keys.items()
        }
        return jwks(public)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def idp() -> Iterator[Idp]:
    server = Idp()
    server.add("es-1", ec.generate_private_key(ec.SECP256R1()))
    server.add("sm-1", SM2PrivateKey.generate())
    yield server
    server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _seg(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def id_token(
    key: PrivateKey,
    kid: str,
    *,
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """An ID token as an OIDC provider signs it; ``header`` replaces ``alg``/``typ``/``kid``
    (a key of None drops it), ``claims`` the standard claims (None drops one)."""
    now = int(time.time())
    alg = "SM2" if isinstance(key, SM2PrivateKey) else "ES256"
    head: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": kid, **(header or {})}
    body: dict[str, Any] = {
        "iss": ISSUER,
        "sub": CITIZEN,
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 300,
        "auth_time": now,
        **claims,
    }
    head = {k: v for k, v in head.items() if v is not None}
    body = {k: v for k, v in body.items() if v is not None}
    signing_input = f"{_seg(head)}.{_seg(body)}".encode("ascii")
    if isinstance(key, SM2PrivateKey):
        sig = key.sign(signing_input)
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input.decode()}.{_b64(sig)}"


def verifier(
    idp: Idp,
    clock: Clock | None = None,
    *,
    algorithms: tuple[str, ...] = ("ES256", "SM2"),
    timeout: float = 2.0,
    **kwargs: Any,
) -> CitizenTokenVerifier:
    keys = JwksKeys(
        idp.url,
        ttl=TTL,
        timeout=timeout,
        min_refresh_interval=INTERVAL,
        allow_loopback_http=True,
        clock=clock or Clock(),
    )
    return CitizenTokenVerifier.oidc(
        issuer=ISSUER, audience=CLIENT_ID, keys=keys, algorithms=algorithms, **kwargs
    )


def jwks_of(v: CitizenTokenVerifier) -> JwksKeys:
    assert isinstance(v.keys, JwksKeys)
    return v.keys


def refused(v: CitizenTokenVerifier, token: str) -> TongbanError:
    """The problem ``token`` is refused with, checked not to echo the token or the ID."""
    with pytest.raises(TongbanError) as info:
        v.verify_citizen_token(f"Bearer {token}")
    exc = info.value
    said = json.dumps([exc.to_problem(), exc.response_headers()])
    for secret in (token, token.split(".")[1], CITIZEN, CITIZEN[6:14]):
        assert secret not in said
    return exc


# --- accepted ----------------------------------------------------------------------------


@pytest.mark.parametrize("kid", ["es-1", "sm-1"])
@pytest.mark.parametrize("typ", ["JWT", None, "application/jwt"])
def test_es256_and_sm2_id_tokens_from_the_jwks_are_accepted(
    idp: Idp, kid: str, typ: str | None
) -> None:
    v = verifier(idp)
    citizen = v.verify_citizen_token("Bearer " + id_token(idp.keys[kid], kid, header={"typ": typ}))
    assert citizen.id_number == CITIZEN
    assert CITIZEN not in repr(citizen)
    assert idp.requests == 1  # fetched once, at first use


def test_the_id_number_may_come_from_another_claim(idp: Idp) -> None:
    v = verifier(idp, subject_claim="id_number")
    token = id_token(idp.keys["es-1"], "es-1", sub="opaque-7f3a", id_number=CITIZEN)
    assert v.verify(token).id_number == CITIZEN
    exc = refused(v, id_token(idp.keys["es-1"], "es-1"))  # the ID in sub only
    assert exc.slug == "token-invalid" and exc.detail.startswith("id_number:")


def test_several_audiences_need_azp_naming_the_gateway(idp: Idp) -> None:
    v = verifier(idp)
    key = idp.keys["es-1"]
    both = [CLIENT_ID, "https://other.test"]
    assert v.verify(id_token(key, "es-1", aud=both, azp=CLIENT_ID)).id_number == CITIZEN
    assert refused(v, id_token(key, "es-1", aud=both)).slug == "token-wrong-audience"
    assert refused(v, id_token(key, "es-1", azp="someone-else")).slug == "token-wrong-audience"


# --- refused claims ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "slug"),
    [
        ({"iss": "https://idp.gov.test/"}, "token-wrong-issuer"),  # exact, not a prefix
        ({"iss": "https://evil.test"}, "token-wrong-issuer"),
        ({"iss": None}, "token-wrong-issuer"),
        ({"aud": "another-client"}, "token-wrong-audience"),
        ({"aud": ["another-client"]}, "token-wrong-audience"),
        ({"exp": ("now", -60), "iat": ("now", -400)}, "token-expired"),
        ({"exp": None}, "token-invalid"),
        ({"iat": None}, "token-invalid"),
        ({"nbf": ("now", 120)}, "token-not-yet-valid"),
        ({"iat": ("now", 120), "exp": ("now", 400)}, "token-not-yet-valid"),
        ({"sub": CITIZEN[:-1] + ("0" if CITIZEN[-1] != "0" else "1")}, "token-invalid"),
        ({"sub": "not-an-id-number"}, "token-invalid"),
        ({"sub": None}, "token-invalid"),
    ],
)
def test_refused_claims_have_their_problem_type(
    idp: Idp, claims: dict[str, Any], slug: str
) -> None:
    # Times relative to when the test runs, not to when it was collected (a long run
    # collects minutes before it gets here).
    now = int(time.time())
    claims = {
        k: now + v[1] if isinstance(v, tuple) and v[:1] == ("now",) else v
        for k, v in claims.items()
    }
    exc = refused(verifier(idp), id_token(idp.keys["es-1"], "es-1", **claims))
    assert exc.slug == slug and exc.status == 401
    assert exc.type == PROBLEM_BASE + slug


def test_an_invalid_id_number_is_named_not_repeated(idp: Idp) -> None:
    bad = CITIZEN[:-1] + ("0" if CITIZEN[-1] != "0" else "1")
    exc = refused(verifier(idp), id_token(idp.keys["sm-1"], "sm-1", sub=bad))
    assert exc.detail == "sub: expected a valid GB 11643 ID number"
    assert bad not in json.dumps(exc.to_problem())


@pytest.mark.parametrize(
    "typ", ["tongban-citizen+jwt", "at+jwt", "application/at+jwt", "logout+jwt"]
)
def test_a_token_of_another_kind_is_the_wrong_type(idp: Idp, typ: str) -> None:
    exc = refused(verifier(idp), id_token(idp.keys["es-1"], "es-1", header={"typ": typ}))
    assert exc.slug == "token-wrong-type"
    assert idp.requests == 0  # refused before any key was looked up


def _hs256(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = f"{_seg(header)}.{_seg(claims)}".encode()
    mac = hmac.HMAC(secret, hashes.SHA256())
    mac.update(signing_input)
    return f"{signing_input.decode()}.{_b64(mac.finalize())}"


def test_algorithms_outside_the_pinned_list_are_refused_without_a_fetch(idp: Idp) -> None:
    v = verifier(idp, algorithms=("ES256",))
    claims = json.loads(
        base64.urlsafe_b64decode(id_token(idp.keys["es-1"], "es-1").split(".")[1] + "==")
    )
    public_jwk = json.dumps(idp.jwks()["keys"][0]).encode()
    forged = [
        id_token(idp.keys["sm-1"], "sm-1"),  # a real IdP key, an algorithm not pinned here
        f"{_seg({'alg': 'none', 'typ': 'JWT', 'kid': 'es-1'})}.{_seg(claims)}.",
        f"{_seg({'alg': 'None', 'typ': 'JWT', 'kid': 'es-1'})}.{_seg(claims)}.",
        _hs256(public_jwk, {"alg": "HS256", "typ": "JWT", "kid": "es-1"}, claims),
        _hs256(b"", {"alg": "HS256", "typ": "JWT", "kid": "es-1"}, claims),
        _hs256(public_jwk, {"alg": "RS256", "typ": "JWT", "kid": "es-1"}, claims),
    ]
    for token in forged:
        exc = refused(v, token)
        assert exc.slug == "token-invalid", token
    assert idp.requests == 0
    assert v.verify(id_token(idp.keys["es-1"], "es-1")).id_number == CITIZEN


def test_a_signature_by_a_key_not_in_the_jwks_is_refused(idp: Idp) -> None:
    v = verifier(idp)
    stranger = ec.generate_private_key(ec.SECP256R1())
    assert refused(v, id_token(stranger, "es-1")).slug == "token-invalid"  # a kid it knows
    assert refused(v, id_token(stranger, "sm-1")).slug == "token-invalid"  # other family


# --- the JWK Set: refresh, rotation, outage ----------------------------------------------


def test_an_unknown_kid_refreshes_once_per_interval(idp: Idp) -> None:
    clock = Clock()
    v = verifier(idp, clock)
    key = idp.keys["es-1"]
    assert v.verify(id_token(key, "es-1")).id_number == CITIZEN
    assert idp.requests == 1
    # Fetches of any cause are INTERVAL apart: not even an unknown kid refreshes sooner.
    refused(v, id_token(key, "made-up"))
    assert idp.requests == 1
    clock.now += INTERVAL
    # A flood of made-up kids: one refresh, then none until the interval has passed.
    for i in range(50):
        assert refused(v, id_token(key, f"made-up-{i}")).slug == "token-invalid"
    assert idp.requests == 2
    clock.now += INTERVAL - 1
    refused(v, id_token(key, "made-up-again"))
    assert idp.requests == 2
    clock.now += 1
    refused(v, id_token(key, "made-up-again"))
    assert idp.requests == 3
    # Known kids never cause a fetch within the TTL.
    for _ in range(10):
        v.verify(id_token(key, "es-1"))
    assert idp.requests == 3


def test_a_key_rotated_in_at_the_idp_is_picked_up(idp: Idp) -> None:
    clock = Clock()
    v = verifier(idp, clock)
    v.verify(id_token(idp.keys["es-1"], "es-1"))
    new = idp.add("es-2", ec.generate_private_key(ec.SECP256R1()))
    del idp.keys["es-1"]  # rotated out
    clock.now += INTERVAL
    assert v.verify(id_token(new, "es-2")).id_number == CITIZEN  # the unknown kid refreshed
    assert idp.requests == 2
    # The rotated-out key is gone from the gateway's set too.
    old = refused(v, id_token(ec.generate_private_key(ec.SECP256R1()), "es-1"))
    assert old.slug == "token-invalid"


def test_the_set_is_fetched_again_after_its_ttl(idp: Idp) -> None:
    clock = Clock()
    v = verifier(idp, clock)
    v.verify(id_token(idp.keys["sm-1"], "sm-1"))
    clock.now += TTL - 1
    v.verify(id_token(idp.keys["sm-1"], "sm-1"))
    assert idp.requests == 1
    clock.now += 1
    v.verify(id_token(idp.keys["sm-1"], "sm-1"))
    assert idp.requests == 2


@pytest.mark.parametrize("outage", ["stopped", "503", "timeout", "redirect"])
def test_an_idp_that_is_down_leaves_the_cached_keys_working(
    idp: Idp, outage: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    v = verifier(idp, clock, timeout=0.3)
    token = id_token(idp.keys["es-1"], "es-1")
    v.verify(token)
    _break(idp, outage)
    clock.now += TTL + 1  # the cache is stale: a refresh is due, and fails
    with caplog.at_level(logging.ERROR, logger="tongban.gateway.citizen"):
        assert v.verify(token).id_number == CITIZEN
    assert any("keeping the cached keys" in r.getMessage() for r in caplog.records)
    assert all(token not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("outage", ["stopped", "503", "timeout", "redirect"])
def test_an_idp_that_is_down_with_nothing_cached_is_a_503(
    idp: Idp, outage: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    v = verifier(idp, clock, timeout=0.3)
    _break(idp, outage)
    token = id_token(idp.keys["es-1"], "es-1")
    with caplog.at_level(logging.ERROR, logger="tongban.gateway.citizen"):
        exc = refused(v, token)
    assert isinstance(exc, IdentityProviderUnavailable)
    assert (exc.status, exc.slug) == (503, "identity-provider-unavailable")
    assert exc.detail == "identity provider: its key set could not be fetched; try again later"
    assert exc.response_headers() == {"Retry-After": "30"}
    assert any("no keys cached" in r.getMessage() for r in caplog.records)
    # The next citizens within the interval do not make the gateway knock again.
    attempts = jwks_of(v).fetches
    for _ in range(20):
        assert isinstance(refused(v, token), IdentityProviderUnavailable)
    assert jwks_of(v).fetches == attempts == 1


def _break(idp: Idp, outage: str) -> None:
    if outage == "stopped":
        idp.stop()
    elif outage == "503":
        idp.status = 503
    elif outage == "timeout":
        idp.delay = 1.0
    else:
        idp.status = 302


def test_the_idp_coming_back_is_noticed_after_the_interval(idp: Idp) -> None:
    clock = Clock()
    v = verifier(idp, clock)
    idp.status = 503
    token = id_token(idp.keys["es-1"], "es-1")
    assert isinstance(refused(v, token), IdentityProviderUnavailable)
    idp.status = 200
    clock.now += INTERVAL
    assert v.verify(token).id_number == CITIZEN


def _p256_jwk(kid: str = "es-9") -> dict[str, Any]:
    return jwks({kid: ec.generate_private_key(ec.SECP256R1()).public_key()})["keys"][0]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>Service page</html>", "not JSON"),
        (b'{"keys": "es-1"}', "no keys array"),
        (b"[]", "no keys array"),
        (b'{"keys": ["es-1"]}', "not an object"),
        (json.dumps({"keys": [{**_p256_jwk(), "x": "AAAA"}]}).encode(), "not a valid P-256 key"),
        (json.dumps({"keys": [{**_p256_jwk(), "y": _b64(b"\1" * 32)}]}).encode(), "not a valid"),
        (json.dumps({"keys": [{**_p256_jwk(), "d": _b64(b"\1" * 32)}]}).encode(), "private key"),
        (json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}).encode(), "private"),
        (json.dumps({"keys": [_p256_jwk("a"), _p256_jwk("a")]}).encode(), "one kid"),
        (
            json.dumps({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "r"}]}).encode(),
            "no SM2 or P-256 signing key",
        ),
        (json.dumps({"keys": [{**_p256_jwk(), "use": "enc"}]}).encode(), "no SM2 or P-256"),
        (json.dumps({"keys": []}).encode(), "no SM2 or P-256"),
        (b"{" * 70_000, "larger than"),
    ],
)
def test_a_malformed_jwks_is_refused_with_a_log_line_and_a_problem(
    idp: Idp, body: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    idp.body = body
    v = verifier(idp)
    with caplog.at_level(logging.ERROR, logger="tongban.gateway.citizen"):
        exc = refused(v, id_token(idp.keys["es-1"], "es-1"))
    assert isinstance(exc, IdentityProviderUnavailable)
    assert exc.detail == "identity provider: its key set is malformed; try again later"
    lines = [r.getMessage() for r in caplog.records]
    assert any(f"JWK Set at {idp.url} refused" in m and reason in m for m in lines), lines


def test_a_malformed_refresh_keeps_the_cached_keys(idp: Idp) -> None:
    clock = Clock()
    v = verifier(idp, clock)
    token = id_token(idp.keys["sm-1"], "sm-1")
    v.verify(token)
    idp.body = b"not a key set"
    clock.now += TTL
    assert v.verify(token).id_number == CITIZEN
    assert idp.requests == 2


def test_unusable_keys_beside_usable_ones_are_skipped(idp: Idp) -> None:
    rsa = {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa-1", "alg": "RS256"}
    no_kid = {k: v for k, v in _p256_jwk().items() if k != "kid"}
    idp.body = json.dumps({"keys": [rsa, no_kid, *idp.jwks()["keys"]]}).encode()
    v = verifier(idp)
    assert v.verify(id_token(idp.keys["es-1"], "es-1")).id_number == CITIZEN


@pytest.mark.parametrize(
    ("url", "loopback_http", "ok"),
    [
        ("https://idp.gov.test/.well-known/jwks.json", False, True),
        ("https://idp.gov.test:8443/jwks", False, True),
        ("http://127.0.0.1:9/jwks", True, True),
        ("http://[::1]:9/jwks", True, True),
        ("http://127.0.0.1:9/jwks", False, False),  # loopback, but not enabled
        ("http://idp.gov.test/jwks", True, False),  # enabled, but not loopback
        ("http://127.0.0.1.evil.test/jwks", True, False),
        ("https://user:pw@idp.gov.test/jwks", False, False),
        ("https:///jwks", False, False),
        ("file:///etc/passwd", True, False),
        ("https://idp.gov.test:port/jwks", False, False),
    ],
)
def test_the_jwks_url_is_https_or_enabled_loopback_http(
    url: str, loopback_http: bool, ok: bool
) -> None:
    if ok:
        assert check_jwks_url(url, allow_loopback_http=loopback_http) == url
        JwksKeys(url, allow_loopback_http=loopback_http)  # constructing fetches nothing
    else:
        with pytest.raises(ValueError, match="https://"):
            JwksKeys(url, allow_loopback_http=loopback_http)


# --- settings and wiring -----------------------------------------------------------------


OIDC_ENV = {
    "TONGBAN_CITIZEN_IDP_ISSUER": ISSUER,
    "TONGBAN_CITIZEN_IDP_AUDIENCE": CLIENT_ID,
    "TONGBAN_CITIZEN_IDP_JWKS_URL": "https://idp.gov.test/jwks",
}


def test_settings_name_an_oidc_provider() -> None:
    s = Settings.from_env({**OIDC_ENV, "TONGBAN_CITIZEN_IDP_ALGORITHMS": "SM2, ES256"})
    assert (s.citizen_idp_issuer, s.citizen_idp_audience) == (ISSUER, CLIENT_ID)
    assert s.citizen_idp_algorithms == ("SM2", "ES256")
    assert s.citizen_idp_subject_claim == "sub" and not s.citizen_idp_demo
    assert Settings().citizen_idp_algorithms == ("ES256",)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TONGBAN_CITIZEN_IDP_ALGORITHMS": "HS256"}, "TONGBAN_CITIZEN_IDP_ALGORITHMS: expected"),
        ({"TONGBAN_CITIZEN_IDP_ALGORITHMS": "none"}, "TONGBAN_CITIZEN_IDP_ALGORITHMS: expected"),
        ({"TONGBAN_CITIZEN_IDP_ALGORITHMS": "ES256,RS256"}, "expected a list of SM2 and ES256"),
        ({"TONGBAN_CITIZEN_IDP_ALGORITHMS": ""}, "expected a list of SM2 and ES256"),
        ({"TONGBAN_CITIZEN_IDP_JWKS_URL": "http://idp.gov.test/jwks"}, "expected an https://"),
        ({"TONGBAN_CITIZEN_IDP_JWKS_URL": "http://127.0.0.1:9/jwks"}, "expected an https://"),
        ({"TONGBAN_CITIZEN_IDP_AUDIENCE": None}, "citizen_idp_audience"),
        ({"TONGBAN_CITIZEN_IDP_JWKS_URL": None}, "citizen_idp_jwks_url: required"),
        ({"TONGBAN_CITIZEN_IDP_ISSUER": " "}, "TONGBAN_CITIZEN_IDP_ISSUER: expected a non-empty"),
        ({"TONGBAN_CITIZEN_IDP_SUBJECT_CLAIM": 'a"b'}, "expected a claim name"),
        ({"TONGBAN_CITIZEN_IDP_DEMO": "true"}, "not with citizen_idp_demo"),
        ({"TONGBAN_CITIZEN_IDP_JWKS_TTL": "0"}, "TONGBAN_CITIZEN_IDP_JWKS_TTL"),
    ],
)
def test_wrong_idp_settings_are_refused_in_one_line(
    env: dict[str, str | None], message: str
) -> None:
    given = {k: v for k, v in {**OIDC_ENV, **env}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(given)
    assert message in info.value.detail
    assert "\n" not in info.value.detail


def test_wiring_builds_the_oidc_verifier_without_fetching(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {**OIDC_ENV, "TONGBAN_CITIZEN_IDP_ALGORITHMS": "SM2", "TONGBAN_CITIZEN_IDP_JWKS_TTL": "60",
         "TONGBAN_CITIZEN_IDP_SUBJECT_CLAIM": "id_number"},
        data_dir=tmp_path,
    )  # fmt: skip
    keys = KeyRing(tmp_path / "keys")
    keys.ensure("idp")  # a demo key lying there changes nothing
    v = build_citizen_verifier(settings, keys)
    assert v is not None and (v.issuer, v.audience) == (ISSUER, CLIENT_ID)
    source = jwks_of(v)
    assert source.url == "https://idp.gov.test/jwks" and source.fetches == 0
    # What the demo IdP's key signs is refused for its typ, before any key is looked up.
    demo = mint_citizen_token(keys.private("idp"), CITIZEN, issuer=ISSUER, audience=CLIENT_ID)
    assert refused(v, demo).slug == "token-wrong-type"
    assert source.fetches == 0


def test_the_demo_key_is_trusted_only_when_the_demo_idp_is_enabled(tmp_path: Path) -> None:
    keys = KeyRing(tmp_path / "keys")
    keys.ensure("idp")  # the file exists
    assert build_citizen_verifier(Settings(data_dir=tmp_path), keys) is None
    demo = build_citizen_verifier(Settings(data_dir=tmp_path, citizen_idp_demo=True), keys)
    assert demo is not None and isinstance(demo.keys, StaticKeys)
    assert demo.issuer == Settings().idp_issuer


# --- over HTTP: the citizen endpoints and the citizen page, on SQLite and PostgreSQL -------


def _use(h: Harness, v: CitizenTokenVerifier | None) -> None:
    """Swap the gateway's citizen verifier (the API app's and the pages app's state)."""
    state = dataclasses.replace(h.app.extensions[EXTENSION], citizen_verifier=v)
    h.app.extensions[EXTENSION] = state
    pages = h.app.wsgi_app.pages  # type: ignore[attr-defined]  # gateway.pages._PathDispatch
    pages.extensions[EXTENSION] = state


@pytest.fixture
def harness(
    small_population: Generated,
    party_keys: Any,
    tmp_path: Path,
    gateway_stores: dict[str, str],
) -> Iterator[Harness]:
    h = build_harness(tmp_path, small_population.urls, party_keys, **gateway_stores)
    yield h
    h.close()


def _problem(resp: Any, status: int, slug: str, *secrets: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    body: dict[str, Any] = resp.get_json()
    assert body["type"] == PROBLEM_BASE + slug
    said = resp.get_data(as_text=True) + json.dumps(dict(resp.headers))
    for secret in secrets:
        assert secret not in said
    return body


def test_citizen_endpoints_take_oidc_id_tokens(harness: Harness, idp: Idp) -> None:
    _use(harness, verifier(idp))
    client = harness.app.test_client()
    token = id_token(idp.keys["es-1"], "es-1")
    ok = client.get("/v1/me/consents", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200, ok.get_data(as_text=True)
    wrong = id_token(idp.keys["es-1"], "es-1", iss="https://evil.test")
    resp = client.get("/v1/me/access-log", headers={"Authorization": f"Bearer {wrong}"})
    _problem(resp, 401, "token-wrong-issuer", wrong, CITIZEN)
    # The demo IdP's token is not accepted by a gateway that trusts an OIDC provider.
    demo = client.get("/v1/me/consents", headers=harness.citizen(CITIZEN))
    _problem(demo, 401, "token-wrong-type", CITIZEN)


def test_citizen_endpoints_answer_503_while_the_idp_is_away(harness: Harness, idp: Idp) -> None:
    _use(harness, verifier(idp, timeout=0.3))
    idp.stop()
    token = id_token(idp.keys["sm-1"], "sm-1")
    resp = harness.app.test_client().get(
        "/v1/me/consents", headers={"Authorization": f"Bearer {token}"}
    )
    _problem(resp, 503, "identity-provider-unavailable", token, CITIZEN)
    assert resp.headers["Retry-After"] == "30"


def _csrf(client: Any, path: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).get_data(as_text=True))
    assert found
    return found.group(1)


def test_the_citizen_page_takes_a_posted_id_token(harness: Harness, idp: Idp) -> None:
    _use(harness, verifier(idp))
    client = harness.app.test_client()
    # A production login page: no word of the demo's command-line tokens.
    form = client.get("/me/login").get_data(as_text=True)
    assert "DEMO ONLY" not in form and "citizen-token" not in form and "ID token" in form
    token = id_token(idp.keys["es-1"], "es-1")
    resp = client.post("/me/login", data={"csrf": _csrf(client, "/me/login"), "token": token})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/me/")
    page = client.get("/me/").get_data(as_text=True)
    assert mask(CITIZEN) in page and CITIZEN not in page
    bad = id_token(idp.keys["es-1"], "es-1", aud="another-client")
    resp = client.post("/me/login", data={"csrf": _csrf(client, "/me/login"), "token": bad})
    assert resp.status_code == 401
    assert "token-wrong-audience" in resp.get_data(as_text=True)


def test_the_citizen_page_says_when_the_idp_is_away(harness: Harness, idp: Idp) -> None:
    clock = Clock()
    _use(harness, verifier(idp, clock, timeout=0.3))
    client = harness.app.test_client()
    token = id_token(idp.keys["es-1"], "es-1")
    client.post("/me/login", data={"csrf": _csrf(client, "/me/login"), "token": token})
    assert client.get("/me/").status_code == 200
    # A fresh worker (nothing cached) while the IdP is away: 503, and the session stays.
    _use(harness, verifier(idp, clock, timeout=0.3))
    idp.status = 503
    _problem(client.get("/me/"), 503, "identity-provider-unavailable", token, CITIZEN)
    resp = client.post("/me/login", data={"csrf": _csrf(client, "/me/login"), "token": token})
    assert resp.status_code == 503 and "try again later" in resp.get_data(as_text=True)
    idp.status = 200
    clock.now += INTERVAL
    assert client.get("/me/").status_code == 200  # still logged in


def test_without_a_configured_idp_citizen_login_is_refused(
    small_population: Generated, party_keys: Any, tmp_path: Path, gateway_stores: dict[str, str]
) -> None:
    """`tongban gateway serve` without citizen IdP settings: DIR/keys/idp.key exists (the
    harness made it), and still nothing it signs is accepted."""
    h = build_harness(
        tmp_path, small_population.urls, party_keys, citizen_idp_demo=False, **gateway_stores
    )
    try:
        assert (tmp_path / "keys" / "idp.key").exists()
        client = h.app.test_client()
        headers = h.citizen(CITIZEN)
        for path in ("/v1/me/consents", "/v1/me/access-log"):
            resp = client.get(path, headers=headers)
            slug = "citizen-login-not-configured"
            body = _problem(resp, 503, slug, CITIZEN, headers["Authorization"])
            assert body["detail"] == (
                "citizen login: this gateway trusts no citizen identity provider"
            )
        grant = client.post("/v1/consents", json={}, headers=headers)
        _problem(grant, 503, "citizen-login-not-configured", CITIZEN)
        form = client.get("/me/login")
        assert form.status_code == 503 and "trusts no citizen identity provider" in form.text
        resp = client.post(
            "/me/login",
            data={"csrf": _csrf(client, "/me/login"), "token": headers["Authorization"][7:]},
        )
        assert resp.status_code == 503
        assert client.get("/me/").status_code == 302  # not logged in
        # The requester side is unaffected.
        assert client.get("/v1/claims", headers=h.auth("edu-bureau")).status_code == 200
    finally:
        h.close()


def test_the_demo_idp_still_works_where_it_is_enabled(harness: Harness) -> None:
    client = harness.app.test_client()
    assert client.get("/v1/me/consents", headers=harness.citizen(CITIZEN)).status_code == 200
    token = harness.citizen(CITIZEN)["Authorization"][7:]
    resp = client.post("/me/login", data={"csrf": _csrf(client, "/me/login"), "token": token})
    assert resp.status_code == 302


def test_not_configured_is_a_problem_type_of_its_own() -> None:
    exc = CitizenLoginNotConfigured()
    assert (exc.status, exc.slug) == (503, "citizen-login-not-configured")


# --- tongban citizen-token ---------------------------------------------------------------


def _citizen_token(data: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    return subprocess.run(
        [sys.executable, "-m", "tongban", *args, "citizen-token", CITIZEN, "--data-dir", str(data)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**clean, "PYTHONIOENCODING": "utf-8", **env},
        timeout=60,
        check=False,
    )


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tongban: "), proc.stderr
    assert CITIZEN not in lines[0]
    return lines[0]


@pytest.fixture
def idp_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    KeyRing(data / "keys").ensure("idp")
    return data


def test_citizen_token_refuses_for_a_gateway_with_an_oidc_idp(idp_dir: Path) -> None:
    line = _one_line(_citizen_token(idp_dir, **{k: str(v) for k, v in OIDC_ENV.items()}))
    assert f"the gateway's citizen identity provider is {ISSUER}, not the demo's" in line


def test_citizen_token_refuses_for_a_gateway_that_does_not_trust_the_demo_idp(
    idp_dir: Path,
) -> None:
    line = _one_line(_citizen_token(idp_dir))
    assert "trusts the demo identity provider" in line and "not a production login" in line
    (idp_dir / "demo.json").write_text(json.dumps({"gateway": "http://127.0.0.1:8080"}))
    _one_line(_citizen_token(idp_dir))  # a demo.json that does not say so is not enough


def test_citizen_token_mints_where_the_demo_idp_is_enabled(idp_dir: Path) -> None:
    (idp_dir / "demo.json").write_text(
        json.dumps({"gateway": "http://127.0.0.1:8080", "citizen_idp": "demo"})
    )
    by_demo = _citizen_token(idp_dir)
    assert by_demo.returncode == 0 and by_demo.stdout.count(".") == 2, by_demo.stderr
    (idp_dir / "demo.json").unlink()
    config = idp_dir / "gateway.toml"
    config.write_text("citizen_idp_demo = true\n")
    by_config = _citizen_token(idp_dir, "--config", str(config))
    assert by_config.returncode == 0 and by_config.stdout.count(".") == 2, by_config.stderr
    demo = Settings(data_dir=idp_dir, citizen_idp_demo=True)
    v = build_citizen_verifier(demo, KeyRing(idp_dir / "keys"))
    assert v is not None and v.verify(by_config.stdout.strip()).id_number == CITIZEN


def test_the_demo_enables_the_demo_idp_for_its_gateway_and_says_so(tmp_path: Path) -> None:
    """`tongban demo`'s gateway environment turns the demo IdP on (it drops every other
    TONGBAN_* variable), and its demo.json tells `tongban citizen-token` so."""
    from tongban.demo import _gateway_env, _write_demo_json

    env = _gateway_env({"TONGBAN_DATA_DIR": str(tmp_path)}, {}, {})
    settings = Settings.from_env(env)
    assert settings.citizen_idp_demo and settings.citizen_idp_jwks_url is None
    verifier_of_demo = build_citizen_verifier(settings, KeyRing(tmp_path / "keys"))
    assert verifier_of_demo is not None and isinstance(verifier_of_demo.keys, StaticKeys)
    _write_demo_json(tmp_path, "http://127.0.0.1:8080", {}, {}, {}, ca=tmp_path / "ca.pem")
    assert json.loads((tmp_path / "demo.json").read_text())["citizen_idp"] == "demo"
