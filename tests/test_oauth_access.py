"""Access tokens under attack: each forgery or misuse is refused with its own slug."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask, jsonify

from tongban.gateway import oauth
from tongban.gateway.oauth import (
    AccessTokenVerifier,
    ClientRegistry,
    InsufficientScope,
    InvalidToken,
    Principal,
    TokenIssuer,
    mint_citizen_token,
    require_scope,
)
from tongban.gateway.oauth.flask import init_oauth, require_token
from tongban.http_shell import install_problem_handlers
from tongban.primitives.errors import PROBLEM_BASE
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.idnumber import make_id
from tongban.primitives.jws import sign_compact

ISSUER = "https://gateway.test"
AUDIENCE = "https://gateway.test/v1"
NOW = 1_800_000_000
GATEWAY_KEY = SM2PrivateKey.generate()
ATTACKER_KEY = SM2PrivateKey.generate()
P256_KEY = ec.generate_private_key(ec.SECP256R1())
ISSUER_OBJ = TokenIssuer(GATEWAY_KEY, issuer=ISSUER, audience=AUDIENCE, clock=lambda: NOW)
KID = ISSUER_OBJ.kid
VERIFIER = ISSUER_OBJ.verifier()
ID_NUMBER = make_id("110105", dt.date(1990, 5, 17), 123)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _seg(obj: object) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _claims(**overrides: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "iss": ISSUER,
        "sub": "insurer-a",
        "aud": AUDIENCE,
        "client_id": "insurer-a",
        "scope": "checks",
        "iat": NOW - 10,
        "exp": NOW + 290,
        "jti": "t-1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(
    claims: dict[str, object] | None = None, *, key=GATEWAY_KEY, kid=KID, typ="at+jwt"
) -> str:
    return sign_compact(claims or _claims(), key, typ=typ, kid=kid)


def _raw(header: dict[str, object], claims: dict[str, object], sig: bytes = b"") -> str:
    return f"{_seg(header)}.{_seg(claims)}.{_b64(sig)}"


def _slug(token: str | None, *, header: str | None = None) -> str:
    authorization = header if header is not None else f"Bearer {token}"
    with pytest.raises(InvalidToken) as info:
        VERIFIER.authenticate_request(authorization)
    assert not isinstance(info.value, InsufficientScope)
    return info.value.slug


def test_valid_token_gives_the_principal():
    principal = VERIFIER.authenticate_request(f"Bearer {_signed()}")

    assert principal == Principal("insurer-a", frozenset({"checks"}), "t-1")
    assert (
        VERIFIER.authenticate_request(f"bearer  {_signed()}") == principal
    )  # scheme is case-insensitive


def test_issuer_round_trip_with_es256_key():
    issuer = TokenIssuer(P256_KEY, issuer=ISSUER, audience=AUDIENCE, clock=lambda: NOW)

    token = issuer.issue("bank-b", ["statistics", "checks"]).access_token

    assert issuer.verifier().verify(token).scopes == {"checks", "statistics"}
    assert _slug(token) == "token-invalid"  # our verifier does not know that key


@pytest.mark.parametrize(
    ("header", "slug"),
    [
        (None, "token-missing"),
        ("", "token-missing"),
        ("Basic aW5zdXJlcjpzZWNyZXQ=", "token-missing"),
        ("Bearer", "token-invalid"),
        ("Bearer ", "token-invalid"),
        ("Bearer a b", "token-invalid"),
        ("Bearer \u00e9t\u00e9", "token-invalid"),
    ],
)
def test_missing_or_malformed_authorization(header, slug):
    with pytest.raises(InvalidToken) as info:
        VERIFIER.authenticate_request(header)
    assert info.value.slug == slug


def test_alg_none_is_refused():
    assert _slug(_raw({"alg": "none", "typ": "at+jwt", "kid": KID}, _claims())) == "token-invalid"
    assert _slug(_raw({"alg": "NONE", "typ": "at+jwt", "kid": KID}, _claims())) == "token-invalid"


def test_hs256_keyed_with_the_public_key_is_refused():
    """Key confusion: an HMAC over the token using the gateway's public key as secret."""
    header = {"alg": "HS256", "typ": "at+jwt", "kid": KID}
    signing_input = f"{_seg(header)}.{_seg(_claims(scope='checks admin'))}"
    for secret in (
        GATEWAY_KEY.public_key.to_bytes(),
        json.dumps(GATEWAY_KEY.public_key.to_jwk(KID)).encode(),
    ):
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert _slug(f"{signing_input}.{_b64(mac)}") == "token-invalid"


def test_kid_pointing_elsewhere_is_refused():
    attacker_kid = ATTACKER_KEY.public_key.key_id
    assert _slug(_signed(key=ATTACKER_KEY, kid=attacker_kid)) == "token-invalid"  # unknown kid
    assert _slug(_signed(key=ATTACKER_KEY)) == "token-invalid"  # our kid, their signature
    # Embedded keys are never trusted, whatever the header says.
    header = {
        "alg": "SM2",
        "typ": "at+jwt",
        "kid": attacker_kid,
        "jwk": ATTACKER_KEY.public_key.to_jwk(),
    }
    signing_input = f"{_seg(header)}.{_seg(_claims())}"
    embedded = f"{signing_input}.{_b64(ATTACKER_KEY.sign(signing_input.encode()))}"
    assert _slug(embedded) == "token-invalid"
    jku = {"alg": "SM2", "typ": "at+jwt", "kid": attacker_kid, "jku": "https://evil.test/jwks.json"}
    signing_input = f"{_seg(jku)}.{_seg(_claims())}"
    assert (
        _slug(f"{signing_input}.{_b64(ATTACKER_KEY.sign(signing_input.encode()))}")
        == "token-invalid"
    )


def test_es256_under_the_sm2_kid_is_refused():
    assert _slug(_signed(key=P256_KEY, kid=KID)) == "token-invalid"


@pytest.mark.parametrize(
    ("overrides", "slug"),
    [
        ({"exp": NOW - 60, "iat": NOW - 360}, "token-expired"),
        ({"nbf": NOW + 120}, "token-not-yet-valid"),
        ({"iat": NOW + 120, "exp": NOW + 200}, "token-not-yet-valid"),
        ({"iat": NOW - 10, "exp": NOW + 86_400}, "token-invalid"),  # longer than ever issued
        ({"iat": None, "exp": NOW + 86_400}, "token-invalid"),
        ({"exp": None}, "token-invalid"),
        ({"exp": "tomorrow"}, "token-invalid"),
        ({"exp": True}, "token-invalid"),
        ({"aud": "https://other-gateway.test/v1"}, "token-wrong-audience"),
        ({"aud": ["https://a.test", "https://b.test"]}, "token-wrong-audience"),
        ({"aud": 7}, "token-invalid"),
        ({"iss": "https://evil.test"}, "token-wrong-issuer"),
        ({"iss": None}, "token-wrong-issuer"),
        ({"sub": "someone-else"}, "token-invalid"),
        ({"client_id": None}, "token-invalid"),
        ({"jti": None}, "token-invalid"),
        ({"scope": ["checks"]}, "token-invalid"),
    ],
)
def test_bad_claims(overrides, slug):
    assert _slug(_signed(_claims(**overrides))) == slug


def test_audience_list_naming_us_is_accepted():
    token = _signed(_claims(aud=["https://other.test", AUDIENCE]))
    assert VERIFIER.authenticate_request(f"Bearer {token}").client_id == "insurer-a"


def test_stripped_signature_and_truncation_are_refused():
    head, payload, _ = _signed().split(".")
    for token in (f"{head}.{payload}.", f"{head}.{payload}", f"{head}..", "a.b.c.d", "...."):
        assert _slug(token) == "token-invalid"


def test_tampered_payload_is_refused():
    head, _, sig = _signed().split(".")
    assert _slug(f"{head}.{_seg(_claims(scope='checks admin'))}.{sig}") == "token-invalid"


@pytest.mark.parametrize(
    "typ", ["tongban-answer+jwt", "tongban-citizen+jwt", "JWT", "application/at+jwt", None]
)
def test_other_kinds_of_token_are_refused_as_such(typ):
    header = {"alg": "SM2", "kid": KID} | ({"typ": typ} if typ else {})
    signing_input = f"{_seg(header)}.{_seg(_claims())}"
    token = f"{signing_input}.{_b64(GATEWAY_KEY.sign(signing_input.encode()))}"
    assert _slug(token) == "token-wrong-type"


def test_citizen_token_is_not_an_access_token():
    idp = SM2PrivateKey.generate()
    token = mint_citizen_token(
        idp, ID_NUMBER, issuer="https://idp.test", audience=AUDIENCE, now=NOW
    )
    with pytest.raises(InvalidToken) as info:
        VERIFIER.authenticate_request(f"Bearer {token}")
    assert info.value.slug == "token-wrong-type"
    assert ID_NUMBER not in str(info.value.to_problem())


def test_require_scope():
    principal = Principal("insurer-a", frozenset({"checks"}), "t-1")
    require_scope(principal, "checks")
    with pytest.raises(InsufficientScope) as info:
        require_scope(principal, "checks", "audit:read")
    assert info.value.to_problem()["required_scope"] == "audit:read"
    assert info.value.status == 403


def test_verifier_refuses_unknown_algorithms():
    with pytest.raises(ValueError):
        AccessTokenVerifier(issuer=ISSUER, audience=AUDIENCE, keys={}, algorithms=("HS256",))
    with pytest.raises(ValueError):
        TokenIssuer(GATEWAY_KEY, issuer=ISSUER, audience=AUDIENCE, lifetime=10**6)


def test_slugs_are_distinct_and_stable():
    classes = [
        getattr(oauth, name) for name in oauth.__all__ if name.startswith(("Token", "Invalid"))
    ]
    classes.append(InsufficientScope)
    slugs = {cls.slug for cls in classes if isinstance(cls, type) and hasattr(cls, "slug")}
    assert slugs == {
        "token-invalid",
        "token-missing",
        "token-expired",
        "token-not-yet-valid",
        "token-wrong-type",
        "token-wrong-issuer",
        "token-wrong-audience",
        "token-replayed",
        "token-revoked",
        "insufficient-scope",
    }


# --- over HTTP ---------------------------------------------------------------------------


@pytest.fixture
def http(tmp_path):
    registry = ClientRegistry("sqlite://")
    registry.create_schema()
    app = Flask("oauth-access-test")
    install_problem_handlers(app, 64 * 1024, logging.getLogger("oauth-access-test"))
    init_oauth(app, registry, ISSUER_OBJ, token_endpoint=f"{ISSUER}/oauth/token", verifier=VERIFIER)

    @app.get("/v1/audit/entries")
    @require_token("audit:read")
    def entries():
        return jsonify([])

    yield app.test_client()
    registry.engine.dispose()


def test_http_401_is_problem_json_with_a_bearer_challenge(http):
    resp = http.get(
        "/v1/audit/entries",
        headers={"Authorization": "Bearer x.y.z", "X-Request-Id": "req-12345678"},
    )

    assert resp.status_code == 401
    assert resp.mimetype == "application/problem+json"
    assert resp.json["type"] == PROBLEM_BASE + "token-invalid"
    assert resp.json["instance"] == "req-12345678"
    assert resp.headers["WWW-Authenticate"].startswith(
        'Bearer realm="tongban", error="invalid_token"'
    )


def test_http_missing_token_challenge_has_no_error_code(http):
    resp = http.get("/v1/audit/entries")

    assert resp.status_code == 401
    assert resp.json["type"] == PROBLEM_BASE + "token-missing"
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="tongban"'


def test_http_403_names_the_missing_scope(http):
    resp = http.get("/v1/audit/entries", headers={"Authorization": f"Bearer {_signed()}"})

    assert resp.status_code == 403
    assert resp.json["type"] == PROBLEM_BASE + "insufficient-scope"
    assert resp.json["required_scope"] == "audit:read"
    assert 'error="insufficient_scope", scope="audit:read"' in resp.headers["WWW-Authenticate"]
