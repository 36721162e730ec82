"""POST /oauth/token: client_secret_basic and private_key_jwt (pinned alg, replay), scopes."""

from __future__ import annotations

import base64
import gc
import hashlib
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask, jsonify
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, event, update
from sqlalchemy.engine import make_url
from werkzeug.test import TestResponse

from tests.conftest import reset_chain
from tongban.gateway.oauth import ClientRegistry, TokenIssuer, credentials, sign_client_assertion
from tongban.gateway.oauth import _schema as oauth_schema
from tongban.gateway.oauth.flask import EXTENSION, current_principal, init_oauth, require_token
from tongban.gateway.oauth.throttle import CLIENT_BUCKET, SOURCE_BUCKET, TokenThrottle
from tongban.gateway.ratelimit import CachedRefusals, SqlBucketStore
from tongban.holds import MAX_HOLD_SECONDS, source_held_until, take_hold
from tongban.http_shell import install_problem_handlers
from tongban.primitives.errors import PROBLEM_BASE
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.jws import jwks, sign_compact

from .hostile_harness import Hostile, build_hostile

ISSUER = "https://gateway.test"
AUDIENCE = "https://gateway.test/v1"
TOKEN_URL = "https://gateway.test/oauth/token"
ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GATEWAY_KEY = SM2PrivateKey.generate()
SM2_CLIENT_KEY = SM2PrivateKey.generate()
P256_CLIENT_KEY = ec.generate_private_key(ec.SECP256R1())


def _claims(token: str, part: int = 1) -> dict[str, Any]:
    segment = token.split(".")[part]
    value: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64json(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj).encode())


def _basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.fixture
def registry(tmp_path):
    reg = ClientRegistry(f"sqlite:///{tmp_path / 'oauth.db'}")
    reg.create_schema()
    yield reg
    reg.engine.dispose()


@pytest.fixture
def issuer():
    return TokenIssuer(GATEWAY_KEY, issuer=ISSUER, audience=AUDIENCE)


@pytest.fixture
def app(registry, issuer):
    app = Flask("oauth-test")
    install_problem_handlers(app, 64 * 1024, logging.getLogger("oauth-test"))
    init_oauth(app, registry, issuer, token_endpoint=TOKEN_URL)

    @app.get("/v1/whoami")
    @require_token("checks")
    def whoami():
        principal = current_principal()
        return jsonify(client_id=principal.client_id, scopes=sorted(principal.scopes))

    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def secret(registry):
    reg = registry.register_client("insurer-a", "Insurer A", scopes={"checks", "checks:batch"})
    return reg.secret


@pytest.fixture
def pk_clients(registry):
    """One ES256-pinned and one SM2-pinned private_key_jwt client."""
    registry.register_client(
        "bank-es",
        "Bank (ES256)",
        scopes={"checks"},
        auth_method="private_key_jwt",
        jwks=jwks({"es-1": P256_CLIENT_KEY.public_key()}),
        alg="ES256",
    )
    registry.register_client(
        "bank-sm",
        "Bank (SM2)",
        scopes={"checks", "statistics"},
        auth_method="private_key_jwt",
        jwks=jwks({"sm-1": SM2_CLIENT_KEY.public_key}),
        alg="SM2",
    )


def _token(http: FlaskClient, headers: dict[str, str] | None = None, **form: str) -> TestResponse:
    return http.post(
        "/oauth/token", data={"grant_type": "client_credentials", **form}, headers=headers
    )


def _assert(http: FlaskClient, assertion: str, **form: str) -> TestResponse:
    return _token(http, None, client_assertion_type=ASSERTION, client_assertion=assertion, **form)


def _body(resp: TestResponse) -> dict[str, Any]:
    body = resp.get_json(silent=True)
    assert isinstance(body, dict), resp.get_data(as_text=True)
    return body


def _oauth_error(
    resp: TestResponse, error: str, slug: str | None = None, status: int = 400
) -> dict[str, Any]:
    body = _body(resp)
    assert resp.status_code == status, body
    assert resp.mimetype == "application/json"
    assert body["error"] == error
    if slug is not None:
        assert body["type"] == PROBLEM_BASE + slug
    return body


# --- client_secret_basic ---------------------------------------------------------------


def test_secret_basic_issues_an_rfc9068_access_token(client, issuer, secret):
    resp = _token(client, _basic("insurer-a", secret), scope="checks")

    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = _body(resp)
    assert (
        body["token_type"] == "Bearer" and body["expires_in"] == 300 and body["scope"] == "checks"
    )
    token = body["access_token"]
    assert _claims(token, 0) == {"alg": "SM2", "kid": issuer.kid, "typ": "at+jwt"}
    claims = _claims(token)
    assert set(claims) == {"iss", "sub", "aud", "client_id", "scope", "iat", "exp", "jti"}
    assert claims["iss"] == ISSUER and claims["aud"] == AUDIENCE
    assert claims["sub"] == claims["client_id"] == "insurer-a"
    assert claims["scope"] == "checks" and claims["exp"] - claims["iat"] == 300
    principal = issuer.verifier().verify(token)
    assert principal.client_id == "insurer-a" and principal.scopes == {"checks"}
    assert principal.token_id == claims["jti"]


def test_token_works_on_a_protected_view(client, secret):
    token = _body(_token(client, _basic("insurer-a", secret), scope="checks"))["access_token"]

    resp = client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})

    assert resp.status_code == 200
    assert resp.json == {"client_id": "insurer-a", "scopes": ["checks"]}


def test_omitted_scope_grants_every_scope_of_the_client(client, secret):
    resp = _token(client, _basic("insurer-a", secret))

    assert resp.status_code == 200
    assert _body(resp)["scope"] == "checks checks:batch"
    assert _claims(_body(resp)["access_token"])["scope"] == "checks checks:batch"


def test_wrong_secret_and_unknown_client_fail_alike(client, secret):
    wrong = _token(client, _basic("insurer-a", secret[:-1] + "x"), scope="checks")
    unknown = _token(client, _basic("nobody-at-all", secret), scope="checks")

    for resp in (wrong, unknown):
        _oauth_error(resp, "invalid_client", status=401)
        assert resp.headers["WWW-Authenticate"].startswith("Basic ")
    assert wrong.json == unknown.json  # nothing tells a guessed client id from a real one


@pytest.mark.parametrize(
    "authorization", ["Basic !!!", "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "Basic "]
)
def test_garbled_basic_header_is_invalid_client(client, authorization):
    _oauth_error(_token(client, {"Authorization": authorization}), "invalid_client", status=401)


def test_no_client_authentication_is_invalid_client(client):
    _oauth_error(_token(client), "invalid_client", status=401)


def test_disabled_client_gets_no_token_and_its_live_tokens_stop(client, registry, secret):
    token = _body(_token(client, _basic("insurer-a", secret)))["access_token"]

    registry.set_enabled("insurer-a", False)

    _oauth_error(_token(client, _basic("insurer-a", secret)), "invalid_client", status=401)
    resp = client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401
    assert _body(resp)["type"] == PROBLEM_BASE + "token-revoked"


@pytest.mark.parametrize("scope", ["admin", "checks admin", 'checks "x"'])
def test_scope_outside_the_clients_grant_is_refused(client, secret, scope):
    _oauth_error(_token(client, _basic("insurer-a", secret), scope=scope), "invalid_scope")


def test_other_grant_types_and_methods_are_refused(client, secret):
    resp = client.post(
        "/oauth/token", data={"grant_type": "password"}, headers=_basic("insurer-a", secret)
    )
    _oauth_error(resp, "unsupported_grant_type")
    resp = client.get("/oauth/token")
    assert resp.status_code == 405 and resp.mimetype == "application/problem+json"
    resp = _token(client, client_id="insurer-a", client_secret=secret)  # client_secret_post
    _oauth_error(resp, "invalid_client", status=401)


def test_two_authentication_methods_at_once_are_refused(client, secret, pk_clients):
    assertion = sign_client_assertion(P256_CLIENT_KEY, "bank-es", TOKEN_URL, kid="es-1")

    resp = _token(
        client,
        _basic("insurer-a", secret),
        client_assertion_type=ASSERTION,
        client_assertion=assertion,
    )

    _oauth_error(resp, "invalid_request")


# --- private_key_jwt --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "client_id", "kid"),
    [(P256_CLIENT_KEY, "bank-es", "es-1"), (SM2_CLIENT_KEY, "bank-sm", "sm-1")],
)
def test_private_key_jwt_issues_a_token(client, issuer, pk_clients, key, client_id, kid):
    assertion = sign_client_assertion(key, client_id, TOKEN_URL, kid=kid)

    resp = _assert(client, assertion, scope="checks")

    assert resp.status_code == 200, resp.json
    assert issuer.verifier().verify(_body(resp)["access_token"]).client_id == client_id


def test_private_key_jwt_from_a_stock_library(client, pk_clients):
    """PyJWT writes typ JWT and no kid: fine for a client with a single ES256 key."""
    now = int(time.time())
    claims = {
        "iss": "bank-es",
        "sub": "bank-es",
        "aud": TOKEN_URL,
        "iat": now,
        "exp": now + 60,
        "jti": "j-1",
    }
    assertion = jwt.encode(claims, P256_CLIENT_KEY, algorithm="ES256")

    assert _assert(client, assertion).status_code == 200


def test_replayed_assertion_is_refused(client, pk_clients):
    assertion = sign_client_assertion(SM2_CLIENT_KEY, "bank-sm", TOKEN_URL, kid="sm-1")

    assert _assert(client, assertion).status_code == 200
    _oauth_error(_assert(client, assertion), "invalid_client", "token-replayed")


@pytest.mark.parametrize(
    ("client_id", "key", "kid"),
    [
        ("bank-es", SM2_CLIENT_KEY, "es-1"),  # SM2 assertion for an ES256-pinned client
        ("bank-sm", P256_CLIENT_KEY, "sm-1"),  # ES256 assertion for an SM2-pinned client
    ],
)
def test_assertion_with_a_non_pinned_alg_is_refused(client, pk_clients, client_id, key, kid):
    assertion = sign_client_assertion(key, client_id, TOKEN_URL, kid=kid)

    body = _oauth_error(_assert(client, assertion), "invalid_client", "token-invalid")

    assert "pinned" in body["error_description"]


def test_hs256_assertion_keyed_with_the_public_jwk_is_refused(client, pk_clients):
    now = int(time.time())
    claims = {"iss": "bank-es", "sub": "bank-es", "aud": TOKEN_URL, "exp": now + 60, "jti": "h"}
    public_jwk = json.dumps(jwks({"es-1": P256_CLIENT_KEY.public_key()})["keys"][0]).encode()
    signing_input = f"{_b64json({'alg': 'HS256', 'typ': 'JWT'})}.{_b64json(claims)}"
    mac = hmac.new(public_jwk, signing_input.encode(), hashlib.sha256).digest()
    assertion = f"{signing_input}.{_b64(mac)}"

    _oauth_error(_assert(client, assertion), "invalid_client", "token-invalid")


def _custom_assertion(key: SM2PrivateKey, kid: str = "sm-1", **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "bank-sm",
        "sub": "bank-sm",
        "aud": TOKEN_URL,
        "iat": now,
        "exp": now + 60,
        "jti": f"j-{time.perf_counter_ns()}",
    }
    # A callable override is a time relative to the moment of signing: parametrize runs at
    # collection, and a long suite can outlive an absolute "ten minutes from now".
    claims.update({k: v(now) if callable(v) else v for k, v in overrides.items()})
    typ = claims.pop("typ", "client-authentication+jwt")
    return sign_compact({k: v for k, v in claims.items() if v is not None}, key, typ=typ, kid=kid)


@pytest.mark.parametrize(
    ("overrides", "slug"),
    [
        ({"exp": lambda now: now - 120, "iat": lambda now: now - 180}, "token-expired"),
        ({"aud": "https://elsewhere.test/oauth/token"}, "token-wrong-audience"),
        ({"aud": AUDIENCE}, "token-wrong-audience"),
        ({"exp": lambda now: now + 3600}, "token-invalid"),  # not short-lived
        ({"iss": "bank-es"}, "token-invalid"),  # iss != sub
        ({"jti": None}, "token-invalid"),
        ({"exp": None}, "token-invalid"),
        ({"nbf": lambda now: now + 600}, "token-not-yet-valid"),
        ({"typ": "at+jwt"}, "token-wrong-type"),  # an access token is not an assertion
    ],
)
def test_bad_assertion_claims_have_distinct_reasons(client, pk_clients, overrides, slug):
    _oauth_error(
        _assert(client, _custom_assertion(SM2_CLIENT_KEY, **overrides)), "invalid_client", slug
    )


def test_forged_and_unknown_key_assertions_are_refused(client, pk_clients):
    forged = _custom_assertion(SM2PrivateKey.generate())
    unknown_kid = _custom_assertion(SM2_CLIENT_KEY, kid="sm-2")
    wrong_es_kid = sign_client_assertion(P256_CLIENT_KEY, "bank-es", TOKEN_URL, kid="es-9")
    forged_es = sign_client_assertion(
        ec.generate_private_key(ec.SECP256R1()), "bank-es", TOKEN_URL, kid="es-1"
    )

    for assertion in (forged, unknown_kid, wrong_es_kid, forged_es):
        _oauth_error(_assert(client, assertion), "invalid_client", "token-invalid")


def test_assertion_for_unknown_or_secret_client_is_refused(client, pk_clients, secret):
    for client_id in ("insurer-a", "no-such-bank"):
        assertion = sign_client_assertion(SM2_CLIENT_KEY, client_id, TOKEN_URL, kid="sm-1")
        _oauth_error(_assert(client, assertion), "invalid_client")
    _oauth_error(_assert(client, "not.a.jwt"), "invalid_client")


def test_key_client_cannot_fall_back_to_a_secret(client, pk_clients):
    _oauth_error(_token(client, _basic("bank-sm", "guess")), "invalid_client", status=401)


def test_store_outage_is_a_503_problem(tmp_path, issuer):
    registry = ClientRegistry(f"sqlite:///{tmp_path / 'no-tables.db'}")  # schema never created
    app = Flask("oauth-outage-test")
    install_problem_handlers(app, 64 * 1024, logging.getLogger("oauth-outage-test"))
    init_oauth(app, registry, issuer, token_endpoint=TOKEN_URL)

    resp = _token(app.test_client(), _basic("insurer-a", "secret"))

    assert resp.status_code == 503
    assert _body(resp)["type"] == PROBLEM_BASE + "store-unavailable"
    registry.engine.dispose()


# --- stored secrets: HMAC-SM3 under a pepper, scrypt rows migrated -------------------------

PEPPER = bytes(range(32))


class ScryptCalls:
    """Counts the scrypt computations the real code path makes: wraps the function the
    credentials module calls, and calls through to it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self._real = credentials._scrypt
        monkeypatch.setattr(credentials, "_scrypt", self)

    def __call__(self, *args: Any) -> bytes:
        self.calls += 1
        return self._real(*args)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'oauth.db'}"
    url: str = request.getfixturevalue("pg_scratch_url")
    engine = create_engine(url)
    reset_chain(engine, "gateway")
    engine.dispose()
    return url


def _stored(registry: ClientRegistry, client_id: str) -> str:
    client = registry.get(client_id)
    assert client is not None and client.secret_hash is not None
    return client.secret_hash


def test_peppered_registry_stores_hmac_sm3_bound_to_the_client(store_url, monkeypatch):
    registry = ClientRegistry(store_url, pepper=PEPPER)
    registry.create_schema()
    scrypt = ScryptCalls(monkeypatch)
    a = registry.register_client("insurer-a", "A", scopes={"checks"}).secret
    b = registry.register_client("insurer-b", "B", scopes={"checks"}).secret
    assert a and b

    stored = _stored(registry, "insurer-a")
    assert stored.startswith("hmac-sm3$") and a not in stored
    assert registry.check_secret(registry.get("insurer-a"), "insurer-a", a)
    assert not registry.check_secret(registry.get("insurer-a"), "insurer-a", b)
    # A database writer copying A's row onto B does not make A's secret open B.
    with registry.engine.begin() as conn:
        conn.execute(
            update(oauth_schema.clients)
            .where(oauth_schema.clients.c.client_id == "insurer-b")
            .values(secret_hash=stored)
        )
    assert not registry.check_secret(registry.get("insurer-b"), "insurer-b", a)
    # Another pepper (or none) opens nothing.
    other = ClientRegistry(registry.engine, pepper=bytes(32))
    assert not other.check_secret(other.get("insurer-a"), "insurer-a", a)
    assert not ClientRegistry(registry.engine).get("insurer-a").check_client_secret(a)  # type: ignore[union-attr]
    rotated = registry.rotate_secret("insurer-a")
    assert registry.check_secret(registry.get("insurer-a"), "insurer-a", rotated)
    assert scrypt.calls == 0
    assert "pepper=True" in repr(registry) and PEPPER.hex() not in repr(registry)
    registry.engine.dispose()


def test_scrypt_rows_still_verify_and_are_rehashed_on_success(store_url, monkeypatch):
    old = ClientRegistry(store_url, scrypt_n=2**10)  # before the pepper existed
    old.create_schema()
    secret = old.register_client("insurer-a", "A", scopes={"checks"}).secret
    assert secret and _stored(old, "insurer-a").startswith("scrypt$")
    registry = ClientRegistry(old.engine, pepper=PEPPER)
    scrypt = ScryptCalls(monkeypatch)

    assert not registry.check_secret(registry.get("insurer-a"), "insurer-a", secret[:-1] + "x")
    assert _stored(registry, "insurer-a").startswith("scrypt$")  # a failure changes nothing
    assert registry.check_secret(registry.get("insurer-a"), "insurer-a", secret)
    assert scrypt.calls == 2
    assert _stored(registry, "insurer-a").startswith("hmac-sm3$")
    assert registry.check_secret(registry.get("insurer-a"), "insurer-a", secret)
    assert scrypt.calls == 2  # the next check is an HMAC

    # A secret imported from an older system (not 256 random bits) keeps its scrypt row.
    registry.register_client("legacy", "Legacy", scopes={"checks"})
    with registry.engine.begin() as conn:
        conn.execute(
            update(oauth_schema.clients)
            .where(oauth_schema.clients.c.client_id == "legacy")
            .values(secret_hash=credentials.hash_secret("short-password", n=2**10))
        )
    assert registry.check_secret(registry.get("legacy"), "legacy", "short-password")
    assert _stored(registry, "legacy").startswith("scrypt$")
    old.engine.dispose()


def test_a_rotation_racing_a_rehash_wins(tmp_path):
    old = ClientRegistry(f"sqlite:///{tmp_path / 'oauth.db'}", scrypt_n=2**10)
    old.create_schema()
    secret = old.register_client("insurer-a", "A", scopes={"checks"}).secret
    assert secret
    registry = ClientRegistry(old.engine, pepper=PEPPER)
    seen = registry.get("insurer-a")  # read before the rotation...
    rotated = registry.rotate_secret("insurer-a")

    assert registry.check_secret(seen, "insurer-a", secret)  # ...checked after it
    assert registry.check_secret(registry.get("insurer-a"), "insurer-a", rotated)
    assert not registry.check_secret(registry.get("insurer-a"), "insurer-a", secret)
    old.engine.dispose()


# --- the token endpoint under a flood (a real gateway: build_gateway + create_app) ---------


@pytest.fixture(params=["sqlite", "postgresql"])
def gateway(request: pytest.FixtureRequest, tmp_path) -> Iterator[Hostile]:
    settings: dict[str, Any] = {}
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_scratch_url")
        engine = create_engine(url)
        reset_chain(engine, "gateway")
        engine.dispose()
        settings["gateway_db_url"] = url
    h = build_hostile(tmp_path, **settings)
    yield h
    throttle = h.app.extensions[EXTENSION].throttle
    h.close()
    throttle.dispose()
    # Gateway.close() leaves the stores' engines to the process's end; a test on the
    # shared PostgreSQL closes its connections itself.
    for obj in gc.get_objects():
        if (
            isinstance(obj, Engine)
            and obj.url.database == make_url(h.settings.gateway_store_url()).database
        ):
            obj.dispose()


def _flood(
    h: Hostile, requests: list[tuple[str, str, str]], threads: int = 8
) -> list[TestResponse]:
    """POST every (client_id, secret, source address) at once from ``threads`` threads."""

    def post(item: tuple[str, str, str]) -> TestResponse:
        client_id, secret, source = item
        http = h.app.test_client()
        return http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers=h.basic(client_id, secret),
            environ_base={"REMOTE_ADDR": source},
        )

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(post, requests))


def _throttled(resp: TestResponse, limit: str) -> None:
    body = _oauth_error(resp, "temporarily_unavailable", "rate-limited", status=429)
    assert body["limit"] == limit
    assert int(resp.headers["Retry-After"]) == body["retry_after"] >= 1
    assert resp.headers["Cache-Control"] == "no-store"


def _statuses(responses: list[TestResponse]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


# Real time runs while the flood does: a bucket may refill a few tokens meanwhile.
SLACK = 5


def test_wrong_secret_flood_on_one_client_is_throttled_per_client_id(gateway, monkeypatch):
    """Many addresses, one client id: after the client's burst every attempt is a 429,
    whatever the address, and the scrypt rows under attack are checked at most that often."""
    legacy = ClientRegistry(gateway.gateway.oauth.registry.engine, scrypt_n=2**10)
    secret = legacy.register_client("legacy-bank", "Legacy", scopes={"checks"}).secret
    assert secret
    scrypt = ScryptCalls(monkeypatch)
    burst = int(CLIENT_BUCKET.burst)

    # Every spelling of the id is the same client (Basic is form-url-decoded), and the
    # same bucket.
    spellings = ("legacy-bank", "legacy%2Dbank", "%6Cegacy-bank")
    responses = _flood(
        gateway,
        [(spellings[i % 3], f"wrong-{i}", f"10.1.{i // 250}.{i % 250}") for i in range(100)],
    )

    statuses = _statuses(responses)
    assert set(statuses) == {401, 429}
    assert burst <= statuses[401] <= burst + SLACK
    assert scrypt.calls == statuses[401]  # the budget is all the flood could buy
    for resp in responses:
        if resp.status_code == 429:
            _throttled(resp, "client")
    # A client still on a scrypt row is locked out while the flood lasts: past the budget
    # its row is not checked at all (docs/security.md) ...
    locked = _flood(gateway, [("legacy-bank", secret, "10.9.9.9")])[0]
    _throttled(locked, "client")
    assert scrypt.calls == statuses[401]
    # ... and no other client is.
    ok = _flood(gateway, [("insurer-a", gateway.secrets["insurer-a"], "10.1.0.1")])[0]
    assert ok.status_code == 200, ok.get_data(as_text=True)


def test_a_flood_cannot_lock_out_a_client_on_an_hmac_row(gateway):
    """Past the client id's budget an hmac-sm3 row is still checked (an HMAC is cheap): the
    flood gets 429s, the client with its right secret gets its token. A wrong secret and an
    unknown id answer alike there (429), so the budget says nothing about which ids exist."""
    burst = int(CLIENT_BUCKET.burst)
    real = gateway.secrets["edu-bureau"]
    for cid in ("edu-bureau", "no-such-client"):
        flood = _flood(gateway, [(cid, f"x{i}", f"10.5.{i // 250}.{i % 250}") for i in range(60)])
        assert burst <= _statuses(flood)[401] <= burst + SLACK
        _throttled(flood[-1], "client")

    served = _flood(gateway, [("edu-bureau", real, "10.6.0.1")])[0]
    assert served.status_code == 200, served.get_data(as_text=True)
    wrong, unknown = _flood(gateway, [("edu-bureau", "nope", "10.6.0.2"),
                                      ("no-such-client", real, "10.6.0.3")])  # fmt: skip
    for resp in (wrong, unknown):
        _throttled(resp, "client")
    assert set(_body(wrong)) == set(_body(unknown))


def test_wrong_secret_flood_from_one_address_is_throttled_per_source(gateway, monkeypatch):
    """One address, many client ids (made up and real): after the source's burst every
    attempt from it is a 429, and the made-up ids never reach scrypt."""
    scrypt = ScryptCalls(monkeypatch)
    burst = int(SOURCE_BUCKET.burst)
    ids = [f"guess-{i:03d}" for i in range(burst + 40)]

    responses = _flood(gateway, [(cid, "x" * 43, "192.0.2.7") for cid in ids])

    statuses = _statuses(responses)
    assert burst <= statuses[401] <= burst + SLACK
    assert statuses[429] == len(ids) - statuses[401]
    for resp in responses:
        if resp.status_code == 429:
            _throttled(resp, "source")
    assert scrypt.calls == 0  # unknown client ids: an HMAC each, never a scrypt
    # The real client, from that address: refused; from another address: served. Same
    # for IPv6, bucketed per /64.
    real = gateway.secrets["edu-bureau"]
    _throttled(_flood(gateway, [("edu-bureau", real, "192.0.2.7")])[0], "source")
    assert _flood(gateway, [("edu-bureau", real, "192.0.2.8")])[0].status_code == 200
    v6 = _flood(gateway, [(f"v6-{i}", "x", f"2001:db8::{i:x}") for i in range(burst + SLACK + 1)])
    assert _statuses(v6)[429] > 0
    _throttled(v6[-1], "source")
    other_net = _flood(gateway, [("v6-x", "x", "2001:db8:0:1::1")])[0]
    _oauth_error(other_net, "invalid_client", status=401)


def test_unknown_client_ids_cost_no_scrypt_and_fail_like_wrong_secrets(client, secret, monkeypatch):
    scrypt = ScryptCalls(monkeypatch)

    unknown = _token(client, _basic("nobody-at-all", secret))
    disabled_or_unknown = _token(client, _basic("x" * 80, secret))  # not even a valid id

    assert scrypt.calls == 0
    wrong = _token(client, _basic("insurer-a", secret[:-1] + "x"))
    for resp in (unknown, disabled_or_unknown, wrong):
        _oauth_error(resp, "invalid_client", status=401)
    assert unknown.json == wrong.json


def test_assertion_floods_are_charged_to_the_claimed_client(client, pk_clients, app):
    throttle = app.extensions[EXTENSION].throttle
    assert isinstance(throttle, TokenThrottle)
    forged = _custom_assertion(SM2PrivateKey.generate())  # sub bank-sm, wrong key
    burst = int(CLIENT_BUCKET.burst)
    statuses = Counter(
        client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "client_assertion_type": ASSERTION,
                  "client_assertion": forged},
            environ_base={"REMOTE_ADDR": f"10.2.0.{i}"},
        ).status_code
        for i in range(burst + 3)
    )  # fmt: skip
    assert statuses[429] > 0
    assert burst <= statuses[400] <= burst + SLACK
    # Past the budget the client's own assertion is still verified, and admitted.
    own = sign_client_assertion(SM2_CLIENT_KEY, "bank-sm", TOKEN_URL, kid="sm-1")
    assert _assert(client, own).status_code == 200
    # The same one again: the key's holder learns it was replayed; a forgery is a 429.
    _oauth_error(_assert(client, own), "invalid_client", "token-replayed")
    _throttled(_assert(client, forged), "client")


def test_a_flood_past_its_budget_is_refused_without_the_database(gateway):
    """The first refusal of an address asks the shared store; later ones this worker
    answers from memory before Flask: the same RFC 6749 body and headers, and no SQL
    statement at all (neither the buckets nor the client registry)."""
    throttle = gateway.app.extensions[EXTENSION].throttle
    store = throttle.store
    assert isinstance(store, CachedRefusals) and isinstance(store.store, SqlBucketStore)
    statements: list[str] = []
    for engine in {store.store.engine, gateway.gateway.oauth.registry.engine}:
        event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    burst = int(SOURCE_BUCKET.burst)
    first = _flood(gateway, [(f"c-{i}", "w", "198.51.100.9") for i in range(burst + 1)])
    assert _statuses(first)[429] >= 1
    before = len(statements)

    later = _flood(gateway, [(f"d-{i}", "w", "198.51.100.9") for i in range(200)])

    assert _statuses(later) == {429: 200}
    assert len(statements) == before  # no database for a known refusal
    view, fast = next(r for r in first if r.status_code == 429), later[-1]
    for resp in (view, fast):
        _throttled(resp, "source")
    assert set(_body(view)) == set(_body(fast))
    assert _body(view)["error_description"] == _body(fast)["error_description"]


def test_token_refusals_hold_the_connection_and_address_refusals_the_address(gateway):
    """Every 429 of the token endpoint asks the server to hold its connection
    (tongban.holds; the deadline worker honours it, tests/test_connection_holds.py); one
    refused for its *address* holds that address's new connections as well, one refused
    for a client id (which any address can name) does not."""
    http = gateway.app.test_client()

    def post(client_id: str, source: str) -> TestResponse:
        resp: TestResponse = http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers=gateway.basic(client_id, "wrong"),
            environ_base={"REMOTE_ADDR": source},
        )
        return resp

    take_hold()
    for i in range(int(CLIENT_BUCKET.burst) + SLACK):
        resp = post("hold-me", f"10.7.0.{i}")
        if resp.status_code == 429:
            break
    _throttled(resp, "client")
    assert 0 < take_hold() <= MAX_HOLD_SECONDS
    assert source_held_until(f"10.7.0.{i}") == 0.0
    assert take_hold() == 0.0  # taken once

    for i in range(int(SOURCE_BUCKET.burst) + SLACK):
        resp = post(f"h-{i}", "198.51.100.77")
        if resp.status_code == 429:
            break
    _throttled(resp, "source")
    assert take_hold() == min(int(resp.headers["Retry-After"]), MAX_HOLD_SECONDS)
    assert source_held_until("198.51.100.77") > time.monotonic()
    fast = post("h-x", "198.51.100.77")  # answered before Flask now: held the same way
    _throttled(fast, "source")
    assert take_hold() > 0
    assert source_held_until("198.51.100.78") == 0.0
    ok = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=gateway.basic("insurer-a", gateway.secrets["insurer-a"]),
        environ_base={"REMOTE_ADDR": "198.51.100.78"},
    )
    assert ok.status_code == 200
    assert take_hold() == 0.0  # an answer asks for no hold
