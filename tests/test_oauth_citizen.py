"""Citizen tokens: IdP-signed, typ tongban-citizen+jwt, sub a valid GB 11643 ID number."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask, jsonify

from tongban.gateway.oauth import (
    Citizen,
    CitizenTokenVerifier,
    ClientRegistry,
    InvalidToken,
    TokenIssuer,
    mint_citizen_token,
)
from tongban.gateway.oauth._jwt import key_id
from tongban.gateway.oauth.flask import current_citizen, init_oauth, require_citizen
from tongban.http_shell import install_problem_handlers
from tongban.primitives.errors import PROBLEM_BASE, InvalidIdNumber
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.idnumber import make_id
from tongban.primitives.jws import sign_compact

IDP = "https://idp.test"
GATEWAY = "https://gateway.test/v1"
NOW = 1_800_000_000
IDP_KEY = SM2PrivateKey.generate()
IDP_P256 = ec.generate_private_key(ec.SECP256R1())
ID_NUMBER = make_id("150622", dt.date(1985, 3, 9), 42)
VERIFIER = CitizenTokenVerifier(
    issuer=IDP,
    audience=GATEWAY,
    keys={
        IDP_KEY.public_key.key_id: IDP_KEY.public_key,
        key_id(IDP_P256.public_key()): IDP_P256.public_key(),
    },
    clock=lambda: NOW,
)


def _mint(key=IDP_KEY, number=ID_NUMBER, **kwargs) -> str:
    kwargs = {"issuer": IDP, "audience": GATEWAY, "now": NOW, **kwargs}
    return mint_citizen_token(key, number, **kwargs)


def _slug(token: str) -> str:
    with pytest.raises(InvalidToken) as info:
        VERIFIER.verify_citizen_token(f"Bearer {token}")
    assert ID_NUMBER not in str(info.value.to_problem())
    return info.value.slug


@pytest.mark.parametrize("key", [IDP_KEY, IDP_P256], ids=["SM2", "ES256"])
def test_citizen_token_round_trip(key):
    citizen = VERIFIER.verify_citizen_token(f"Bearer {_mint(key)}")

    assert citizen == Citizen(ID_NUMBER)
    assert ID_NUMBER not in repr(citizen) and ID_NUMBER[-4:] in repr(citizen)


def test_lowercase_check_digit_is_normalised():
    candidates = (make_id("110105", dt.date(1990, 1, day), 7) for day in range(1, 29))
    number = next(n for n in candidates if n.endswith("X"))
    claims = {"iss": IDP, "aud": GATEWAY, "sub": number.lower(), "iat": NOW, "exp": NOW + 60}
    token = sign_compact(claims, IDP_KEY, typ="tongban-citizen+jwt", kid=IDP_KEY.public_key.key_id)

    assert VERIFIER.verify(token).id_number == number


def test_wrong_idp_key_is_refused():
    impostor = SM2PrivateKey.generate()
    assert _slug(_mint(impostor)) == "token-invalid"  # unknown kid
    assert _slug(_mint(impostor, kid=IDP_KEY.public_key.key_id)) == "token-invalid"  # forged


@pytest.mark.parametrize(
    "sub", ["150622198503090421", "15062219850309042", "110105299001011234", 15062219850309042]
)
def test_bad_id_number_sub_is_refused(sub):
    claims = {"iss": IDP, "aud": GATEWAY, "sub": sub, "iat": NOW, "exp": NOW + 60}
    token = sign_compact(claims, IDP_KEY, typ="tongban-citizen+jwt", kid=IDP_KEY.public_key.key_id)

    with pytest.raises(InvalidToken) as info:
        VERIFIER.verify(token)
    assert info.value.slug == "token-invalid"
    assert str(sub) not in str(info.value.to_problem())


@pytest.mark.parametrize(
    ("kwargs", "slug"),
    [
        ({"issuer": "https://other-idp.test"}, "token-wrong-issuer"),
        ({"audience": "https://other-gateway.test"}, "token-wrong-audience"),
        ({"now": NOW - 3600}, "token-expired"),
        ({"now": NOW + 600}, "token-not-yet-valid"),
        ({"lifetime": 86_400}, "token-invalid"),
    ],
)
def test_citizen_claim_failures(kwargs, slug):
    assert _slug(_mint(**kwargs)) == slug


def test_access_token_is_not_a_citizen_token():
    issuer = TokenIssuer(IDP_KEY, issuer=IDP, audience=GATEWAY, clock=lambda: NOW)  # even same key
    assert _slug(issuer.issue("insurer-a", ["checks"]).access_token) == "token-wrong-type"


def test_minting_refuses_an_invalid_id_number():
    with pytest.raises(InvalidIdNumber) as info:
        _mint(number="150622198503090421")
    assert "150622198503090421" not in str(info.value.to_problem())


def test_require_citizen_over_http():
    registry = ClientRegistry("sqlite://")
    registry.create_schema()
    app = Flask("oauth-citizen-test")
    install_problem_handlers(app, 64 * 1024, logging.getLogger("oauth-citizen-test"))
    gateway = TokenIssuer(SM2PrivateKey.generate(), issuer="https://gateway.test", audience=GATEWAY)
    init_oauth(
        app,
        registry,
        gateway,
        token_endpoint="https://gateway.test/oauth/token",
        citizen_verifier=VERIFIER,
    )

    @app.get("/v1/me/access-log")
    @require_citizen
    def access_log():
        return jsonify(masked=repr(current_citizen()))

    http = app.test_client()
    ok = http.get("/v1/me/access-log", headers={"Authorization": f"Bearer {_mint()}"})
    refused = http.get("/v1/me/access-log")

    assert ok.status_code == 200 and ID_NUMBER not in ok.get_data(as_text=True)
    assert refused.status_code == 401
    assert (refused.json or {})["type"] == PROBLEM_BASE + "token-missing"
    registry.engine.dispose()


def test_the_demo_verifier_takes_its_own_typ_only():
    claims = {"iss": IDP, "aud": GATEWAY, "sub": ID_NUMBER, "iat": NOW, "exp": NOW + 60}
    for typ in ("JWT", "tongban-citizen+JWT", "at+jwt"):
        token = sign_compact(claims, IDP_KEY, typ=typ, kid=IDP_KEY.public_key.key_id)
        assert _slug(token) == "token-wrong-type"


def test_azp_must_name_the_audience_when_present():
    claims = {"iss": IDP, "aud": GATEWAY, "sub": ID_NUMBER, "iat": NOW, "exp": NOW + 60}
    kid = IDP_KEY.public_key.key_id
    for extra in ({"azp": "someone-else"}, {"aud": [GATEWAY, "https://other.test"]}):
        token = sign_compact({**claims, **extra}, IDP_KEY, typ="tongban-citizen+jwt", kid=kid)
        assert _slug(token) == "token-wrong-audience"


def test_a_verifier_needs_a_pinned_algorithm_and_a_typ():
    for kwargs in ({"algorithms": ()}, {"algorithms": ("HS256",)}, {"token_types": ()}):
        with pytest.raises(ValueError):
            CitizenTokenVerifier(issuer=IDP, audience=GATEWAY, keys={}, **kwargs)


def test_require_citizen_without_a_verifier_is_citizen_login_not_configured():
    registry = ClientRegistry("sqlite://")
    registry.create_schema()
    app = Flask("oauth-citizen-unconfigured")
    install_problem_handlers(app, 64 * 1024, logging.getLogger("oauth-citizen-test"))
    gateway = TokenIssuer(SM2PrivateKey.generate(), issuer="https://gateway.test", audience=GATEWAY)
    init_oauth(app, registry, gateway, token_endpoint="https://gateway.test/oauth/token")

    @app.get("/v1/me/access-log")
    @require_citizen
    def access_log():
        return jsonify(masked=repr(current_citizen()))

    resp = app.test_client().get(
        "/v1/me/access-log", headers={"Authorization": f"Bearer {_mint()}"}
    )
    assert resp.status_code == 503  # it was a RuntimeError, so a 500
    assert (resp.json or {})["type"] == PROBLEM_BASE + "citizen-login-not-configured"
    assert ID_NUMBER not in resp.get_data(as_text=True)
    registry.engine.dispose()
