"""Compact JWS: round trips, every rejection path, time/audience claims, JWKS, PyJWT interop."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any, cast

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tongban.primitives import jws
from tongban.primitives.errors import Unauthenticated
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.pyjwt_sm2 import pyjwt_with_sm2

TYP = "tongban-answer+jwt"
PAYLOAD = {"sub": "q-1", "answer": True, "iat": 1_700_000_000, "exp": 1_700_000_060}
SM2_KEY = SM2PrivateKey.generate()
P256_KEY = ec.generate_private_key(ec.SECP256R1())
KEYS: dict[str, Any] = {"sm2": SM2_KEY.public_key, "p256": P256_KEY.public_key()}
ALL_ALGS = ("SM2", "ES256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: Any) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _verify(token: str, *, typ: str = TYP, algorithms=ALL_ALGS):
    return jws.verify_compact(token, KEYS.get, typ=typ, algorithms=algorithms)


def _reject(token: str, detail: str, **kwargs: Any) -> None:
    with pytest.raises(Unauthenticated, match=detail):
        _verify(token, **kwargs)


def _sm2_signed(header: dict[str, Any], payload_segment: str) -> str:
    """A token genuinely SM2-signed over an arbitrary (possibly hostile) header."""
    signing_input = f"{_segment(header)}.{payload_segment}"
    return f"{signing_input}.{_b64(SM2_KEY.sign(signing_input.encode()))}"


@pytest.mark.parametrize(
    ("key", "kid", "alg"), [(SM2_KEY, "sm2", "SM2"), (P256_KEY, "p256", "ES256")]
)
def test_round_trip(key, kid, alg):
    token = jws.sign_compact(PAYLOAD, key, typ=TYP, kid=kid)

    header, payload = _verify(token)

    assert header == {"alg": alg, "kid": kid, "typ": TYP}
    assert payload == PAYLOAD
    assert len(base64.urlsafe_b64decode(token.split(".")[2] + "==")) == 64  # raw r || s


def test_payload_is_compact_sorted_json():
    token = jws.sign_compact({"b": 1, "a": "数据"}, SM2_KEY, typ=TYP, kid="sm2")

    raw = base64.urlsafe_b64decode(token.split(".")[1] + "==")

    assert raw == '{"a":"数据","b":1}'.encode()


def test_sign_rejects_nan_and_foreign_keys():
    with pytest.raises(ValueError, match="JSON compliant"):
        jws.sign_compact({"x": float("nan")}, SM2_KEY, typ=TYP, kid="sm2")
    with pytest.raises(TypeError, match="SM2 or P-256"):
        jws.sign_compact(PAYLOAD, ec.generate_private_key(ec.SECP384R1()), typ=TYP, kid="k")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_rejected(alg):
    token = f"{_segment({'alg': alg, 'typ': TYP, 'kid': 'sm2'})}.{_segment(PAYLOAD)}."

    _reject(token, "algorithm not allowed", algorithms=(*ALL_ALGS, alg))


def test_alg_outside_allowed_set_is_rejected():
    token = jws.sign_compact(PAYLOAD, SM2_KEY, typ=TYP, kid="sm2")

    _reject(token, "algorithm not allowed", algorithms=("ES256",))


def test_allowed_algorithms_as_bare_string_is_not_substring_matched():
    token = _sm2_signed({"alg": "SM", "typ": TYP, "kid": "sm2"}, _segment(PAYLOAD))

    _reject(token, "algorithm not allowed", algorithms="SM2")
    assert _verify(GOOD, algorithms="SM2")[1] == PAYLOAD


@pytest.mark.parametrize("typ", [None, "JWT", "tongban-answer+JWT", TYP + " "])
def test_wrong_or_missing_typ_is_rejected(typ):
    header = {"alg": "SM2", "kid": "sm2"} | ({} if typ is None else {"typ": typ})

    _reject(_sm2_signed(header, _segment(PAYLOAD)), "unexpected typ")


def test_unknown_or_missing_kid_is_rejected():
    unknown = jws.sign_compact(PAYLOAD, SM2_KEY, typ=TYP, kid="retired")
    missing = _sm2_signed({"alg": "SM2", "typ": TYP}, _segment(PAYLOAD))
    not_str = _sm2_signed({"alg": "SM2", "typ": TYP, "kid": 7}, _segment(PAYLOAD))

    _reject(unknown, "unknown kid")
    _reject(missing, "missing kid")
    _reject(not_str, "missing kid")


def test_es256_header_over_sm2_key_is_rejected():
    token = _sm2_signed({"alg": "ES256", "typ": TYP, "kid": "sm2"}, _segment(PAYLOAD))

    _reject(token, "key does not match alg")


def test_sm2_header_over_p256_key_is_rejected():
    token = jws.sign_compact(PAYLOAD, P256_KEY, typ=TYP, kid="p256")
    _, payload_seg, sig = token.split(".")
    relabelled = f"{_segment({'alg': 'SM2', 'typ': TYP, 'kid': 'p256'})}.{payload_seg}.{sig}"

    _reject(relabelled, "key does not match alg")


def test_hs256_with_public_key_as_secret_is_rejected():
    header = _segment({"alg": "HS256", "typ": TYP, "kid": "sm2"})
    signing_input = f"{header}.{_segment(PAYLOAD)}"
    secret = SM2_KEY.public_key.to_bytes()
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()

    _reject(f"{signing_input}.{_b64(mac)}", "algorithm not allowed", algorithms=("HS256", "SM2"))


def test_stripped_signature_is_rejected():
    head, body, _ = jws.sign_compact(PAYLOAD, SM2_KEY, typ=TYP, kid="sm2").split(".")

    _reject(f"{head}.{body}.", "signature does not verify")


@pytest.mark.parametrize(("key", "kid"), [(SM2_KEY, "sm2"), (P256_KEY, "p256")])
def test_modified_payload_is_rejected(key, kid):
    head, _, sig = jws.sign_compact(PAYLOAD, key, typ=TYP, kid=kid).split(".")
    forged = _segment({**PAYLOAD, "answer": False})

    _reject(f"{head}.{forged}.{sig}", "signature does not verify")


def test_signature_from_other_key_is_rejected():
    token = jws.sign_compact(PAYLOAD, SM2PrivateKey.generate(), typ=TYP, kid="sm2")

    _reject(token, "signature does not verify")


GOOD = jws.sign_compact(PAYLOAD, SM2_KEY, typ=TYP, kid="sm2")
GOOD_HEAD, GOOD_BODY, GOOD_SIG = GOOD.split(".")
MALFORMED = {
    "empty": "",
    "one-segment": GOOD_HEAD,
    "two-segments": f"{GOOD_HEAD}.{GOOD_BODY}",
    "four-segments": f"{GOOD}.{GOOD_SIG}",
    "bad-alphabet": f"{GOOD_HEAD}!.{GOOD_BODY}.{GOOD_SIG}",
    "padded-header": f"{GOOD_HEAD}=.{GOOD_BODY}.{GOOD_SIG}",
    # Standard base64 has "+" and "/"; a signature may contain neither, so append one.
    "std-base64-sig": f"{GOOD_HEAD}.{GOOD_BODY}.{GOOD_SIG[:-1]}+",
    "extra-char": f"{GOOD_HEAD}A.{GOOD_BODY}.{GOOD_SIG}",
    "header-not-json": f"{_b64(b'{alg')}.{GOOD_BODY}.{GOOD_SIG}",
    "header-array": f"{_segment(['SM2'])}.{GOOD_BODY}.{GOOD_SIG}",
    "header-not-utf8": _b64(b"\xff\xfe") + f".{GOOD_BODY}.{GOOD_SIG}",
    "header-nan": _b64(b'{"alg":NaN}') + f".{GOOD_BODY}.{GOOD_SIG}",
    "too-long": "a" * 70_000 + ".b.c",
}


@pytest.mark.parametrize("token", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_tokens_are_rejected(token):
    _reject(token, "malformed token")


def test_non_canonical_base64_is_rejected():
    # The last char of a 64-byte signature carries 4 unused bits; setting one must not pass.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    tweaked = GOOD_SIG[:-1] + alphabet[alphabet.index(GOOD_SIG[-1]) ^ 1]

    _reject(f"{GOOD_HEAD}.{GOOD_BODY}.{tweaked}", "malformed token")


def test_duplicate_header_member_is_rejected():
    head = _b64(f'{{"alg":"SM2","typ":"{TYP}","kid":"sm2","kid":"p256"}}'.encode())

    _reject(f"{head}.{GOOD_BODY}.{GOOD_SIG}", "malformed token")


def test_crit_header_is_rejected():
    token = _sm2_signed({"alg": "SM2", "typ": TYP, "kid": "sm2", "crit": ["b64"]}, GOOD_BODY)

    _reject(token, "critical header")


@pytest.mark.parametrize("body", [_segment([1, 2]), _b64(b"not json")])
def test_signed_but_non_object_payload_is_rejected(body):
    _reject(_sm2_signed({"alg": "SM2", "typ": TYP, "kid": "sm2"}, body), "malformed payload")


def test_resolver_errors_propagate():
    def broken(kid: str) -> None:
        raise RuntimeError("key store down")

    with pytest.raises(RuntimeError, match="key store down"):
        jws.verify_compact(GOOD, broken, typ=TYP, algorithms=ALL_ALGS)


NOW = 1_700_000_030.0


def test_time_claims_accept_valid_window():
    jws.check_time_claims({**PAYLOAD, "nbf": NOW}, now=NOW)


@pytest.mark.parametrize(
    ("claims", "detail"),
    [
        ({"iat": NOW, "exp": NOW - 5}, "token expired"),
        ({"iat": NOW, "exp": NOW - 60}, "token expired"),
        ({"iat": NOW, "exp": NOW + 60, "nbf": NOW + 6}, "not yet valid"),
        ({"iat": NOW + 6, "exp": NOW + 60}, "issued in the future"),
        ({"exp": NOW + 60}, "missing iat"),
        ({"iat": NOW}, "missing exp"),
        ({"iat": NOW, "exp": "tomorrow"}, "exp must be a NumericDate"),
        ({"iat": NOW, "exp": True}, "exp must be a NumericDate"),
        ({"iat": float("inf"), "exp": NOW + 60}, "iat must be a NumericDate"),
    ],
)
def test_time_claims_reject(claims, detail):
    with pytest.raises(Unauthenticated, match=detail):
        jws.check_time_claims(claims, now=NOW)


def test_time_claims_leeway_and_optional_requirements():
    jws.check_time_claims({"iat": NOW, "exp": NOW - 4}, now=NOW)  # within 5 s leeway
    jws.check_time_claims({}, now=NOW, require=())
    with pytest.raises(Unauthenticated, match="missing exp"):
        jws.check_time_claims({}, now=NOW, require="exp")
    with pytest.raises(Unauthenticated, match="token expired"):
        jws.check_time_claims({"iat": NOW, "exp": NOW - 4}, now=NOW, leeway=0)


@pytest.mark.parametrize("aud", ["dept-b", ["dept-a", "dept-b"]])
def test_audience_accepts(aud):
    jws.check_audience({"aud": aud}, "dept-b")


@pytest.mark.parametrize(
    ("payload", "detail"),
    [({}, "missing aud"), ({"aud": "dept-a"}, "wrong audience"), ({"aud": [1]}, "malformed")],
)
def test_audience_rejects(payload, detail):
    with pytest.raises(Unauthenticated, match=detail):
        jws.check_audience(payload, "dept-b")


def test_jwks_round_trip_for_both_key_types():
    doc = jws.jwks(KEYS)

    by_kid = {k["kid"]: k for k in doc["keys"]}

    assert by_kid["sm2"]["crv"] == "SM2" and by_kid["p256"]["crv"] == "P-256"
    assert by_kid["p256"]["alg"] == "ES256" and by_kid["p256"]["use"] == "sig"
    assert jws.key_from_jwk(by_kid["sm2"]) == KEYS["sm2"]
    assert jws.key_from_jwk(by_kid["p256"]) == KEYS["p256"]


def test_jwks_verifies_tokens_through_parsed_keys():
    resolved = {k["kid"]: jws.key_from_jwk(k) for k in jws.jwks(KEYS)["keys"]}
    token = jws.sign_compact(PAYLOAD, P256_KEY, typ=TYP, kid="p256")

    _, payload = jws.verify_compact(token, resolved.get, typ=TYP, algorithms=ALL_ALGS)

    assert payload == PAYLOAD


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"d": "AAAA"}, "private key material"),
        ({"crv": "P-384"}, "unsupported JWK"),
        ({"alg": "SM2"}, "unsupported JWK"),
        ({"x": "AAAA"}, "32 bytes"),
        ({"y": _b64(b"\x01" * 32)}, "not on the curve|Invalid EC key"),
    ],
)
def test_key_from_jwk_rejects(change, message):
    jwk = {**jws.jwks({"p256": KEYS["p256"]})["keys"][0], **change}

    with pytest.raises(ValueError, match=message):
        jws.key_from_jwk(jwk)


def test_jwks_rejects_other_key_types():
    with pytest.raises(TypeError, match="SM2 or P-256"):
        jws.jwks({"x": cast(Any, ec.generate_private_key(ec.SECP384R1()).public_key())})


def test_pyjwt_verifies_our_sm2_token():
    token = jws.sign_compact(PAYLOAD, SM2_KEY, typ=TYP, kid="sm2")
    pyjws = pyjwt_with_sm2()

    by_object = pyjws.decode_complete(token, key=cast(Any, KEYS["sm2"]), algorithms=["SM2"])
    by_jwk = pyjws.decode_complete(token, key=json.dumps(KEYS["sm2"].to_jwk()), algorithms=["SM2"])

    assert json.loads(by_object["payload"]) == PAYLOAD
    assert by_jwk["header"] == {"alg": "SM2", "kid": "sm2", "typ": TYP}


def test_pyjwt_rejects_tampered_sm2_token():
    head, _, sig = jws.sign_compact(PAYLOAD, SM2_KEY, typ=TYP, kid="sm2").split(".")
    forged = f"{head}.{_segment({**PAYLOAD, 'answer': False})}.{sig}"

    with pytest.raises(jwt.InvalidSignatureError):
        pyjwt_with_sm2().decode_complete(forged, key=cast(Any, KEYS["sm2"]), algorithms=["SM2"])


def test_pyjwt_signed_sm2_token_verifies_here():
    body = json.dumps(PAYLOAD).encode()
    headers = {"typ": TYP, "kid": "sm2"}

    token = pyjwt_with_sm2().encode(body, cast(Any, SM2_KEY), algorithm="SM2", headers=headers)

    assert _verify(token)[1] == PAYLOAD


def test_pyjwt_globals_are_untouched():
    pyjwt_with_sm2()

    with pytest.raises(NotImplementedError):
        jwt.PyJWS().get_algorithm_by_name("SM2")
