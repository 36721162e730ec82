"""JWT attack suite against a whole gateway over HTTP: requester access tokens (the bearer
check in front of every requester route), citizen tokens, and ``private_key_jwt`` client
assertions at the token endpoint. Every attack must be refused with 401 (400 for a client
assertion, as RFC 6749 section 5.2 says) and its exact problem ``type``; none may reach the
pipeline (the audit log does not grow) or echo what it carried.

The unit tests (``test_oauth_access.py``, ``test_oauth_token.py``, ``test_oauth_citizen.py``)
test the verifiers with a fixed clock; this suite attacks the gateway as deployed, with
the keys ``build_gateway`` made and published, including the gateway's *other* valid keys
(answers, checkpoints, ES256) and a department's key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tongban.gateway.oauth import (
    ACCESS_TOKEN_TYPE,
    CITIZEN_TOKEN_TYPE,
    AuthMethod,
    sign_client_assertion,
)
from tongban.keys import KeyRing
from tongban.primitives.errors import PROBLEM_BASE
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.jws import PrivateKey, jwks, sign_compact

from .hostile_harness import ADULT, PUBLIC_URL, Hostile, build_hostile, check_body

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_URL = PUBLIC_URL + "/oauth/token"
SM2_CLIENT = SM2PrivateKey.generate()
P256_CLIENT = ec.generate_private_key(ec.SECP256R1())
OTHER_CLIENT = SM2PrivateKey.generate()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _seg(obj: object) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


@dataclass
class Keys:
    """The gateway's keys as ``build_gateway`` made them, plus strangers."""

    token: SM2PrivateKey  # signs access tokens
    token_kid: str
    answers: SM2PrivateKey  # signs answers and consent artefacts (published in the JWKS)
    checkpoints: SM2PrivateKey  # signs predicate requests and checkpoints (published)
    es256: ec.EllipticCurvePrivateKey  # ES256 answers (published)
    department: SM2PrivateKey  # a department adapter's key
    attacker: SM2PrivateKey
    idp: SM2PrivateKey


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    h = build_hostile(tmp_path_factory.mktemp("attacks-jwt"))
    assert h.gateway.oauth is not None
    registry = h.gateway.oauth.registry
    registry.register_client(
        "bank-sm", "Bank (SM2)", scopes=["checks"], auth_method=AuthMethod.PRIVATE_KEY_JWT,
        jwks=jwks({"sm-1": SM2_CLIENT.public_key}), alg="SM2",
    )  # fmt: skip
    registry.register_client(
        "bank-es", "Bank (ES256)", scopes=["checks"], auth_method=AuthMethod.PRIVATE_KEY_JWT,
        jwks=jwks({"es-1": P256_CLIENT.public_key()}), alg="ES256",
    )  # fmt: skip
    registry.register_client(
        "bank-other", "Another bank", scopes=["checks"], auth_method=AuthMethod.PRIVATE_KEY_JWT,
        jwks=jwks({"ot-1": OTHER_CLIENT.public_key}), alg="SM2",
    )  # fmt: skip
    yield h
    h.close()


@pytest.fixture(scope="module")
def keys(gw: Hostile) -> Keys:
    ring = KeyRing(gw.settings.keys_dir)
    assert gw.gateway.oauth is not None
    return Keys(
        token=ring.private("gateway-tokens"),
        token_kid=gw.gateway.oauth.issuer.kid,
        answers=ring.private("gateway-answers"),
        checkpoints=ring.private("gateway"),
        es256=ring.p256("gateway"),
        department=ring.ensure("health"),
        attacker=SM2PrivateKey.generate(),
        idp=gw.idp,
    )


# --- requester access tokens -------------------------------------------------------------


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": PUBLIC_URL,
        "sub": "edu-bureau",
        "aud": PUBLIC_URL + "/v1",
        "client_id": "edu-bureau",
        "scope": "checks checks:batch",
        "iat": now - 5,
        "exp": now + 240,
        "jti": f"forged-{time.perf_counter_ns()}",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(key: PrivateKey, kid: str, claims: dict[str, Any], typ: str = ACCESS_TOKEN_TYPE) -> str:
    return sign_compact(claims, key, typ=typ, kid=kid)


def _raw_sm2(key: SM2PrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Any header, honestly signed with ``key``: for headers sign_compact never writes."""
    signing_input = f"{_seg(header)}.{_seg(claims)}"
    return f"{signing_input}.{_b64(key.sign(signing_input.encode()))}"


def _hs256(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = f"{_seg(header)}.{_seg(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _pem(public_bytes: bytes) -> bytes:
    body = base64.encodebytes(public_bytes).decode().replace("\n", "")
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n".encode()


def _confusion_secrets(gw: Hostile, k: Keys) -> list[bytes]:
    """Every public form of the token key an HS/RS-confused verifier might use as secret."""
    public = k.token.public_key
    jwk = public.to_jwk(k.token_kid)
    return [
        public.to_bytes(),
        _pem(public.to_bytes()),
        json.dumps(jwk).encode(),
        json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode(),
        gw.client.get("/.well-known/jwks.json").get_data(),
    ]


Attack = Callable[[Hostile, Keys], list[str]]
H = {"typ": ACCESS_TOKEN_TYPE}


def _head(k: Keys, **extra: Any) -> dict[str, Any]:
    return {"alg": "SM2", "typ": ACCESS_TOKEN_TYPE, "kid": k.token_kid, **extra}


ACCESS_ATTACKS: dict[str, tuple[Attack, str]] = {
    "alg-none": (lambda gw, k: [
        f"{_seg({**H, 'alg': alg, 'kid': k.token_kid})}.{_seg(_claims())}.{sig}"
        for alg in ("none", "None", "NONE", "nOnE") for sig in ("", _b64(b"x"))
    ], "token-invalid"),
    "hs256-keyed-with-public-key": (lambda gw, k: [
        _hs256(secret, {**H, "alg": alg, "kid": k.token_kid}, _claims())
        for secret in _confusion_secrets(gw, k) for alg in ("HS256", "HS384", "HS512")
        if alg == "HS256"
    ], "token-invalid"),
    "rs256-es256-header-over-sm2-signature": (lambda gw, k: [
        _raw_sm2(k.token, _head(k, alg=alg), _claims()) for alg in ("RS256", "ES256", "PS256")
    ], "token-invalid"),
    "kid-of-another-gateway-key": (lambda gw, k: [
        _signed(k.answers, k.answers.public_key.key_id, _claims()),
        _signed(k.checkpoints, k.checkpoints.public_key.key_id, _claims()),
        _signed(k.es256, "es256-answers", _claims()),
    ], "token-invalid"),
    "token-kid-signed-by-another-valid-key": (lambda gw, k: [
        _signed(k.answers, k.token_kid, _claims()),
        _signed(k.department, k.token_kid, _claims()),
        _signed(k.es256, k.token_kid, _claims()),
        _signed(k.attacker, k.token_kid, _claims()),
    ], "token-invalid"),
    "kid-pointing-elsewhere": (lambda gw, k: [
        _signed(k.attacker, kid, _claims())
        for kid in ("../../keys/gateway-tokens", "http://evil.test/k", "' OR '1'='1", "x" * 300,
                    k.token_kid.upper(), k.token_kid + " ")
    ] + [
        _raw_sm2(k.token, _head(k, kid=kid), _claims()) for kid in (None, 7, ["a"], {"k": 1}, "")
    ], "token-invalid"),
    "embedded-jwk-jku-x5u-x5c": (lambda gw, k: [
        _raw_sm2(k.attacker, _head(k, kid=k.attacker.public_key.key_id, **extra), _claims())
        for extra in (
            {"jwk": k.attacker.public_key.to_jwk()},
            {"jku": "http://127.0.0.1:1/jwks.json"},
            {"x5u": "http://127.0.0.1:1/cert.pem"},
            {"x5c": [_b64(k.attacker.public_key.to_bytes())]},
        )
    ] + [_raw_sm2(k.attacker, _head(k, jwk=k.attacker.public_key.to_jwk()), _claims())],
        "token-invalid"),
    "crit-header": (lambda gw, k: [
        _raw_sm2(k.token, _head(k, crit=crit, **{"exp-check": False}), _claims())
        for crit in (["exp-check"], ["b64"], [])
    ] + [_raw_sm2(k.token, _head(k, crit=["b64"], b64=False), _claims())], "token-invalid"),
    "expired": (lambda gw, k: [
        _signed(k.token, k.token_kid, _claims(iat=int(time.time()) - 400,
                                               exp=int(time.time()) - 100)),
    ], "token-expired"),
    "future-nbf": (lambda gw, k: [
        _signed(k.token, k.token_kid, _claims(nbf=int(time.time()) + 120)),
    ], "token-not-yet-valid"),
    "future-iat": (lambda gw, k: [
        _signed(k.token, k.token_kid, _claims(iat=int(time.time()) + 120,
                                               exp=int(time.time()) + 200)),
    ], "token-not-yet-valid"),
    "lifetime-beyond-issuer-cap": (lambda gw, k: [
        _signed(k.token, k.token_kid, _claims(exp=int(time.time()) + 86_400)),
        _signed(k.token, k.token_kid, _claims(iat=None, exp=int(time.time()) + 86_400)),
    ], "token-invalid"),
    "wrong-audience": (lambda gw, k: [
        _signed(k.token, k.token_kid, _claims(aud=aud))
        for aud in (PUBLIC_URL, PUBLIC_URL + "/oauth/token", "http://other.test/v1",
                    [PUBLIC_URL], "edu-bureau")
    ], "token-wrong-audience"),
    "wrong-issuer": (lambda gw, k: [
        _signed(k.token, k.token_kid, _claims(iss=iss))
        for iss in ("http://evil.test", gw.settings.idp_issuer, gw.settings.gateway_issuer, None)
    ], "token-wrong-issuer"),
    "stripped-signature": (lambda gw, k: [
        t.rsplit(".", 1)[0] + suffix
        for t in [_signed(k.token, k.token_kid, _claims())]
        for suffix in (".", "", "..", ".AAAA")
    ], "token-invalid"),
    "tampered-payload": (lambda gw, k: [
        f"{p[0]}.{_seg(_claims(scope='checks admin audit:read'))}.{p[2]}"
        for p in [_signed(k.token, k.token_kid, _claims()).split(".")]
    ], "token-invalid"),
    "token-for-another-client": (lambda gw, k: [
        _signed(k.token, k.token_kid, _claims(sub="insurer-a")),  # sub != client_id
        _signed(k.token, k.token_kid, _claims(client_id="bank-sm")),
    ], "token-invalid"),
    "truncated": (lambda gw, k: [
        t[:n] for t in [gw.token("edu-bureau")] for n in (10, len(t) // 2, len(t) - 1)
    ], "token-invalid"),
    "not-base64": (lambda gw, k: [
        "e30.e30.%%%", "a.b.c", "....", "eyJ.eyJ.eyJ", "A" * 40, "a.b.c.d.e",
        f"{_b64(b'{not json')}.{_seg(_claims())}.AAAA", f"{_b64(bytes([0xff, 0xfe]))}.e30.AAAA",
        f"{_seg([1, 2])}.{_seg(_claims())}.AAAA",
    ], "token-invalid"),
    "huge": (lambda gw, k: [
        "A" * 70_000 + ".e30.AAAA",
        f"{_seg(_head(k))}.{'A' * 70_000}.AAAA",
        _raw_sm2(k.token, _head(k, pad="x" * 5000), _claims()),
    ], "token-invalid"),
}  # fmt: skip

WRONG_TYPE: dict[str, Attack] = {
    "typ-missing": lambda gw, k: [_raw_sm2(k.token, {"alg": "SM2", "kid": k.token_kid}, _claims())],
    "typ-wrong": lambda gw, k: [
        _signed(k.token, k.token_kid, _claims(), typ=typ)
        for typ in ("JWT", "application/at+jwt", "AT+JWT", "tongban-answer+jwt",
                    "client-authentication+jwt")
    ],
    "citizen-token-as-access-token": lambda gw, k: [gw.citizen()["Authorization"][7:]],
    "signed-answer-as-access-token": lambda gw, k: [
        gw.client.post("/v1/checks", json=check_body(), headers=gw.auth("edu-bureau"))
        .get_json()["answer"]
    ],
}  # fmt: skip


def _bearer_refused(gw: Hostile, token: str) -> str:
    """POST /v1/checks with ``token``: 401 problem+json with a challenge, nothing audited,
    nothing echoed. Returns the problem type's slug."""
    before = gw.audit_size()
    resp = gw.client.post(
        "/v1/checks", json=check_body(), headers={"Authorization": f"Bearer {token}"}
    )
    body = resp.get_json()
    assert resp.status_code == 401, (resp.status_code, body)
    assert resp.mimetype == "application/problem+json"
    assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="tongban"')
    text = resp.get_data(as_text=True) + resp.headers["WWW-Authenticate"]
    assert token[-12:] not in text and ADULT not in text
    assert gw.audit_size() == before
    assert body["type"].startswith(PROBLEM_BASE)
    return str(body["type"]).removeprefix(PROBLEM_BASE)


def test_the_genuine_token_is_accepted(gw: Hostile, keys: Keys):
    """The baseline every attack below is a mutation of: a token made by hand with the
    real key and claims is accepted, so refusals are about the mutation, not the setup."""
    token = _signed(keys.token, keys.token_kid, _claims())
    resp = gw.client.post(
        "/v1/checks", json=check_body(), headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 200, resp.get_json()


@pytest.mark.parametrize("attack", list(ACCESS_ATTACKS))
def test_access_token_attack_is_refused(gw: Hostile, keys: Keys, attack: str):
    make, slug = ACCESS_ATTACKS[attack]
    tokens = make(gw, keys)
    assert tokens
    for token in tokens:
        assert _bearer_refused(gw, token) == slug, token[:80]


@pytest.mark.parametrize("attack", list(WRONG_TYPE))
def test_another_kind_of_token_is_refused_as_such(gw: Hostile, keys: Keys, attack: str):
    for token in WRONG_TYPE[attack](gw, keys):
        assert _bearer_refused(gw, token) == "token-wrong-type"


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer", "Bearer ", "Basic ZWR1LWJ1cmVhdTp4", "Token abc", "Bearer a b",
     "Bearer \u202egnp.exe", "Bearer abc\x00def"],
)  # fmt: skip
def test_malformed_authorization_headers(gw: Hostile, authorization: str):
    resp = gw.client.post("/v1/checks", json=check_body(), headers={"Authorization": authorization})
    assert resp.status_code == 401
    assert resp.get_json()["type"] in {
        PROBLEM_BASE + "token-missing",
        PROBLEM_BASE + "token-invalid",
    }


def test_a_disabled_clients_live_token_is_revoked(gw: Hostile):
    assert gw.gateway.oauth is not None
    registry = gw.gateway.oauth.registry
    secret = registry.register_client("short-lived", "Short lived", scopes=["checks"]).secret
    resp = gw.client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=gw.basic("short-lived", str(secret)),
    )
    token = resp.get_json()["access_token"]
    registry.set_enabled("short-lived", False)
    assert _bearer_refused(gw, token) == "token-revoked"


# --- citizen tokens ------------------------------------------------------------------------


def _citizen_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "https://idp.tongban.example",
        "sub": ADULT,
        "aud": PUBLIC_URL,
        "iat": now - 5,
        "exp": now + 300,
        "jti": f"c-{time.perf_counter_ns()}",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _citizen(key: PrivateKey, kid: str, **overrides: Any) -> str:
    return sign_compact(_citizen_claims(**overrides), key, typ=CITIZEN_TOKEN_TYPE, kid=kid)


CITIZEN_ATTACKS: dict[str, tuple[Attack, str]] = {
    "alg-none": (lambda gw, k: [
        f"{_seg({'alg': 'none', 'typ': CITIZEN_TOKEN_TYPE, 'kid': k.idp.public_key.key_id})}"
        f".{_seg(_citizen_claims())}."
    ], "token-invalid"),
    "hs256-keyed-with-idp-public-key": (lambda gw, k: [
        _hs256(secret, {"alg": "HS256", "typ": CITIZEN_TOKEN_TYPE,
                        "kid": k.idp.public_key.key_id}, _citizen_claims())
        for secret in (k.idp.public_key.to_bytes(), json.dumps(k.idp.public_key.to_jwk()).encode())
    ], "token-invalid"),
    "signed-by-a-gateway-key": (lambda gw, k: [
        _citizen(k.token, k.token_kid), _citizen(k.answers, k.idp.public_key.key_id),
        _citizen(k.department, k.department.public_key.key_id),
    ], "token-invalid"),
    "expired": (lambda gw, k: [
        _citizen(k.idp, k.idp.public_key.key_id, iat=int(time.time()) - 900,
                 exp=int(time.time()) - 60)
    ], "token-expired"),
    "future-nbf": (lambda gw, k: [
        _citizen(k.idp, k.idp.public_key.key_id, nbf=int(time.time()) + 300)
    ], "token-not-yet-valid"),
    "wrong-audience": (lambda gw, k: [
        _citizen(k.idp, k.idp.public_key.key_id, aud=PUBLIC_URL + "/v1"),
        _citizen(k.idp, k.idp.public_key.key_id, aud="http://other-gateway.test"),
    ], "token-wrong-audience"),
    "wrong-issuer": (lambda gw, k: [
        _citizen(k.idp, k.idp.public_key.key_id, iss=PUBLIC_URL),
    ], "token-wrong-issuer"),
    "stripped-signature": (lambda gw, k: [
        _citizen(k.idp, k.idp.public_key.key_id).rsplit(".", 1)[0] + "."
    ], "token-invalid"),
    "signed-invalid-id-number": (lambda gw, k: [
        _citizen(k.idp, k.idp.public_key.key_id, sub=ADULT[:-1] + ("0" if ADULT[-1] != "0"
                                                                      else "1")),
        _citizen(k.idp, k.idp.public_key.key_id, sub="\uff11" * 18),  # full-width digits
    ], "token-invalid"),
    "access-token-as-citizen-token": (lambda gw, k: [gw.token("edu-bureau")],
                                      "token-wrong-type"),
}  # fmt: skip


@pytest.mark.parametrize("attack", list(CITIZEN_ATTACKS))
def test_citizen_token_attack_is_refused(gw: Hostile, keys: Keys, attack: str):
    make, slug = CITIZEN_ATTACKS[attack]
    rows = gw.consent_rows()
    for token in make(gw, keys):
        resp = gw.client.get("/v1/me/consents", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401, resp.get_json()
        assert resp.get_json()["type"] == PROBLEM_BASE + slug
        assert ADULT not in resp.get_data(as_text=True)
    assert gw.consent_rows() == rows


def test_the_genuine_citizen_token_is_accepted(gw: Hostile, keys: Keys):
    token = _citizen(keys.idp, keys.idp.public_key.key_id)
    resp = gw.client.get("/v1/me/consents", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200


# --- private_key_jwt client assertions at the token endpoint ------------------------------


def _assertion_claims(client_id: str = "bank-sm", **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "iat": now,
        "exp": now + 60,
        "jti": f"a-{time.perf_counter_ns()}",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _assert(gw: Hostile, assertion: str) -> tuple[int, dict[str, Any]]:
    resp = gw.client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )
    body = resp.get_json()
    assert isinstance(body, dict) and resp.mimetype == "application/json"
    return resp.status_code, body


def _sm2_assertion(key: SM2PrivateKey = SM2_CLIENT, kid: str = "sm-1", **overrides: Any) -> str:
    return sign_compact(
        _assertion_claims(**overrides), key, typ="client-authentication+jwt", kid=kid
    )


def _es_jwk_secret() -> bytes:
    return json.dumps(jwks({"es-1": P256_CLIENT.public_key()})["keys"][0]).encode()


def _es_pem() -> bytes:
    return P256_CLIENT.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


ASSERTION_ATTACKS: dict[str, tuple[Callable[[], list[str]], str]] = {
    "alg-none": (lambda: [
        f"{_seg({'alg': alg, 'typ': 'JWT', 'kid': kid})}.{_seg(_assertion_claims(cid))}."
        for alg in ("none", "None") for cid, kid in (("bank-sm", "sm-1"), ("bank-es", "es-1"))
    ], "token-invalid"),
    "hs256-keyed-with-client-public-key": (lambda: [
        _hs256(secret, {"alg": "HS256", "typ": "JWT", "kid": "es-1"},
               _assertion_claims("bank-es"))
        for secret in (_es_jwk_secret(), _es_pem())
    ] + [
        _hs256(SM2_CLIENT.public_key.to_bytes(), {"alg": "HS256", "typ": "JWT", "kid": "sm-1"},
               _assertion_claims())
    ], "token-invalid"),
    "kid-pointing-elsewhere": (lambda: [
        _sm2_assertion(kid="ot-1"), _sm2_assertion(kid="../sm-1"),
        _sm2_assertion(SM2PrivateKey.generate(), kid="sm-1"),
    ], "token-invalid"),
    "assertion-for-another-client": (lambda: [
        _sm2_assertion(OTHER_CLIENT, kid="ot-1"),  # bank-other's key, claims to be bank-sm
        _sm2_assertion(OTHER_CLIENT, kid="sm-1"),
    ], "token-invalid"),
    "embedded-jwk": (lambda: [
        _raw_sm2(OTHER_CLIENT, {"alg": "SM2", "typ": "client-authentication+jwt", "kid": "sm-1",
                                "jwk": OTHER_CLIENT.public_key.to_jwk()}, _assertion_claims())
    ], "token-invalid"),
    "crit-header": (lambda: [
        _raw_sm2(SM2_CLIENT, {"alg": "SM2", "typ": "client-authentication+jwt", "kid": "sm-1",
                              "crit": ["exp"]}, _assertion_claims())
    ], "token-invalid"),
    "expired": (lambda: [
        _sm2_assertion(iat=int(time.time()) - 300, exp=int(time.time()) - 60)
    ], "token-expired"),
    "future-nbf": (lambda: [_sm2_assertion(nbf=int(time.time()) + 300)], "token-not-yet-valid"),
    "wrong-audience": (lambda: [
        _sm2_assertion(aud=PUBLIC_URL + "/v1"), _sm2_assertion(aud="http://gw.test/oauth/token/"),
        _sm2_assertion(aud="http://evil.test/oauth/token"),
    ], "token-wrong-audience"),
    "wrong-issuer": (lambda: [_sm2_assertion(iss="bank-other")], "token-invalid"),
    "stripped-signature": (lambda: [
        _sm2_assertion().rsplit(".", 1)[0] + ".", _sm2_assertion().rsplit(".", 1)[0],
    ], "token-invalid"),
    "typ-wrong": (lambda: [
        sign_compact(_assertion_claims(), SM2_CLIENT, typ=typ, kid="sm-1")
        for typ in ("at+jwt", "tongban-citizen+jwt", "tongban-answer+jwt")
    ], "token-wrong-type"),
}  # fmt: skip


@pytest.mark.parametrize("attack", list(ASSERTION_ATTACKS))
def test_client_assertion_attack_is_refused(gw: Hostile, attack: str):
    make, slug = ASSERTION_ATTACKS[attack]
    for assertion in make():
        status, body = _assert(gw, assertion)
        assert (status, body.get("error")) == (400, "invalid_client"), body
        if "." in assertion.rstrip("."):
            assert body.get("type") == PROBLEM_BASE + slug, (attack, body)


def test_replayed_assertion_is_refused(gw: Hostile):
    assertion = sign_client_assertion(SM2_CLIENT, "bank-sm", TOKEN_URL, kid="sm-1")
    status, body = _assert(gw, assertion)
    assert status == 200, body
    token = body["access_token"]
    assert (
        gw.client.get("/v1/claims", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    )

    for _ in range(3):
        status, body = _assert(gw, assertion)
        assert (status, body["type"]) == (400, PROBLEM_BASE + "token-replayed")


def test_genuine_es256_assertion_is_accepted(gw: Hostile):
    status, body = _assert(gw, sign_client_assertion(P256_CLIENT, "bank-es", TOKEN_URL, kid="es-1"))
    assert status == 200, body
