"""POST /oauth/token: client_secret_basic and private_key_jwt (pinned alg, replay), scopes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask, jsonify
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tongban.adapters.service import install_problem_handlers
from tongban.gateway.oauth import ClientRegistry, TokenIssuer, sign_client_assertion
from tongban.gateway.oauth.flask import current_principal, init_oauth, require_token
from tongban.primitives.errors import PROBLEM_BASE
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.jws import jwks, sign_compact

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
