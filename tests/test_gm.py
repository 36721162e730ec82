"""SM2/SM3/SM4 helpers: known answers, backend interop, gmssl trap workarounds, key files."""

from __future__ import annotations

import hashlib
import os
import random
import stat
import sys

import pytest
from gmssl import sm2 as gmssl_sm2
from gmssl import sm3 as gmssl_sm3

from tongban.primitives import gm
from tongban.primitives.gm import SM2_N, SM2PrivateKey, SM2PublicKey

TONGSUO = gm.get_backend("tongsuo")
GMSSL = gm.get_backend("gmssl")
BACKENDS = [TONGSUO, GMSSL]
MSG = "跨部门数据共享 consent #42".encode()


def _key_with_prefix(prefix: str) -> SM2PrivateKey:
    """First key (deterministic scan over d = 1, 2, ...) whose public hex starts with prefix."""
    for d in range(1, 100_000):
        key = SM2PrivateKey(d)
        if f"{key.public_key.x:064x}".startswith(prefix):
            return key
    raise AssertionError("unreachable: prefixes of 1-2 hex digits are common")


def test_sm3_known_answer():
    assert gm.sm3(b"abc").hex() == (
        "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    )


@pytest.mark.parametrize("size", [0, 1, 55, 56, 64, 1000])
def test_sm3_matches_gmssl(size):
    data = bytes(range(256)) * 4
    assert gm.sm3(data[:size]).hex() == gmssl_sm3.sm3_hash(list(data[:size]))


def test_hmac_sm3_is_rfc2104_over_sm3():
    key, data = b"k" * 20, b"what do ya want for nothing?"
    padded = key.ljust(64, b"\0")
    inner = gm.sm3(bytes(b ^ 0x36 for b in padded) + data)
    expected = gm.sm3(bytes(b ^ 0x5C for b in padded) + inner)

    assert gm.hmac_sm3(key, data) == expected


def test_default_backend_is_tongsuo():
    assert gm.default_backend().name == "tongsuo"


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown SM2 backend"):
        gm.get_backend("openssl")


def test_default_backend_falls_back_to_gmssl_without_tongsuo(monkeypatch):
    for name in [m for m in sys.modules if m == "tongsuopy" or m.startswith("tongsuopy.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(gm, "_BACKENDS", {})

    backend = gm.default_backend()
    key = SM2PrivateKey(0xC0FFEE1234)  # public point now derived without tongsuopy

    assert backend.name == "gmssl"
    assert key.public_key.verify(MSG, key.sign(MSG))


@pytest.mark.parametrize("signer", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("verifier", BACKENDS, ids=lambda b: b.name)
def test_backends_interoperate_across_random_keys(signer, verifier):
    keys = [SM2PrivateKey.generate() for _ in range(20)]

    results = [k.public_key.verify(MSG, k.sign(MSG, signer), verifier) for k in keys]

    assert all(results)


@pytest.mark.parametrize("prefix", ["0", "4", "04"])
def test_keys_gmssl_would_lstrip_verify_in_both_backends(prefix):
    key = _key_with_prefix(prefix)
    pub = key.public_key
    raw_hex = f"{pub.x:064x}{pub.y:064x}"
    naive = gmssl_sm2.CryptSM2(private_key=key.to_hex(), public_key="04" + raw_hex)

    sigs = [key.sign(MSG, b) for b in BACKENDS]

    assert naive.public_key != raw_hex  # the trap is real for this key...
    for sig in sigs:  # ...and our workaround survives it
        assert all(pub.verify(MSG, sig, b) for b in BACKENDS)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_tampered_message_or_signature_fails(backend):
    key = SM2PrivateKey.generate()
    sig = key.sign(MSG, backend)
    flipped = bytes([sig[0]]) + bytes([sig[1] ^ 1]) + sig[2:]

    assert key.public_key.verify(MSG, sig, backend)
    assert not key.public_key.verify(MSG + b".", sig, backend)
    assert not key.public_key.verify(MSG, flipped, backend)
    assert not SM2PrivateKey.generate().public_key.verify(MSG, sig, backend)


_N = SM2_N.to_bytes(32, "big")
GARBAGE = {
    "empty": b"",
    "short": b"\x01" * 63,
    "long": b"\x01" * 65,
    "zeros": b"\x00" * 64,
    "ones": b"\xff" * 64,
    "r=n": _N + (1).to_bytes(32, "big"),
    "s=n": (1).to_bytes(32, "big") + _N,
    "r+s=n": (1).to_bytes(32, "big") + (SM2_N - 1).to_bytes(32, "big"),
    "hex-text": "zz" * 64,
    "none": None,
}


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("sig", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_signature_returns_false(backend, sig):
    pub = SM2PrivateKey(12345).public_key

    assert backend.verify(pub.x, pub.y, MSG, sig) is False


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_off_curve_point_returns_false(backend):
    key = SM2PrivateKey.generate()
    sig = key.sign(MSG, backend)

    assert backend.verify(key.public_key.x, key.public_key.y + 1, MSG, sig) is False


def test_gmssl_nonce_comes_from_secrets_not_random():
    key = SM2PrivateKey(0xABCDEF)
    naive = gmssl_sm2.CryptSM2(private_key=key.to_hex(), public_key="")
    naive.public_key = f"{key.public_key.x:064x}{key.public_key.y:064x}"
    state = random.getstate()
    try:
        random.seed(0)
        ours_1, naive_1 = GMSSL.sign(key.d, MSG), naive.sign_with_sm3(MSG)
        random.seed(0)
        ours_2, naive_2 = GMSSL.sign(key.d, MSG), naive.sign_with_sm3(MSG)
    finally:
        random.setstate(state)

    assert naive_1 == naive_2  # stock gmssl: the nonce is replayable from the seed
    assert ours_1 != ours_2


def test_gmssl_sign_retries_degenerate_nonce(monkeypatch):
    real = gmssl_sm2.CryptSM2.sign_with_sm3
    calls: list[str] = []

    def flaky(self, data, k):
        calls.append(k)
        return None if len(calls) == 1 else real(self, data, k)

    monkeypatch.setattr(gmssl_sm2.CryptSM2, "sign_with_sm3", flaky)
    key = SM2PrivateKey.generate()

    sig = GMSSL.sign(key.d, MSG)

    assert len(calls) == 2 and calls[0] != calls[1]
    assert key.public_key.verify(MSG, sig, TONGSUO)


@pytest.mark.parametrize("d", [0, -1, SM2_N - 1, SM2_N])
def test_private_scalar_out_of_range_is_rejected(d):
    with pytest.raises(ValueError, match="out of range"):
        SM2PrivateKey(d)


def test_private_key_hex_round_trip_and_repr_hides_secret():
    key = SM2PrivateKey.generate()

    assert SM2PrivateKey.from_hex(key.to_hex()) == key
    assert key.to_hex() not in repr(key) and str(key.d) not in repr(key)


@pytest.mark.parametrize("text", ["12", "1_" * 32, " " + "a" * 63, "g" * 64, "a" * 65])
def test_private_key_from_hex_is_strict(text):
    with pytest.raises(ValueError, match="64 hex digits"):
        SM2PrivateKey.from_hex(text)


def test_public_key_matches_pure_python_derivation():
    key = SM2PrivateKey.generate()

    assert (key.public_key.x, key.public_key.y) == gm._gmssl_public_point(key.d)
    assert key.public_key is key.public_key  # computed once


def test_public_key_bytes_round_trip():
    pub = SM2PrivateKey.generate().public_key

    encoded = pub.to_bytes()

    assert len(encoded) == 65 and encoded[0] == 4
    assert SM2PublicKey.from_bytes(encoded) == pub


def test_public_key_off_curve_or_compressed_is_rejected():
    pub = SM2PrivateKey.generate().public_key
    bad = pub.to_bytes()[:-1] + bytes([pub.to_bytes()[-1] ^ 1])

    with pytest.raises(ValueError, match="not on the SM2 curve"):
        SM2PublicKey.from_bytes(bad)
    with pytest.raises(ValueError, match="65 bytes"):
        SM2PublicKey.from_bytes(b"\x02" + pub.x.to_bytes(32, "big"))


def test_public_key_jwk_round_trip():
    pub = SM2PrivateKey.generate().public_key

    jwk = pub.to_jwk(kid="dept-a")

    assert jwk["kty"] == "EC" and jwk["crv"] == "SM2" and jwk["alg"] == "SM2"
    assert jwk["kid"] == "dept-a" and jwk["use"] == "sig"
    assert SM2PublicKey.from_jwk(jwk) == pub


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"crv": "P-256"}, "not an SM2 key"),
        ({"alg": "ES256"}, "another alg"),
        ({"d": "AAAA"}, "private key material"),
        ({"x": "AAAA"}, "32 bytes"),
        ({"x": None}, "32 bytes"),
    ],
)
def test_public_key_from_jwk_rejects(change, message):
    jwk = {**SM2PrivateKey.generate().public_key.to_jwk(), **change}

    with pytest.raises(ValueError, match=message):
        SM2PublicKey.from_jwk(jwk)


def test_from_jwk_rejects_non_canonical_coordinate():
    jwk = SM2PrivateKey.generate().public_key.to_jwk()
    last = jwk["x"][-1]
    # 32 bytes leave 2 unused bits in the last base64 character; setting one is malleable.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    jwk["x"] = jwk["x"][:-1] + alphabet[alphabet.index(last) | 1]

    with pytest.raises(ValueError, match="canonical"):
        SM2PublicKey.from_jwk(jwk)


def test_key_id_is_truncated_sm3_thumbprint():
    pub = SM2PrivateKey.generate().public_key
    jwk = pub.to_jwk()
    canonical = '{"crv":"SM2","kty":"EC","x":"' + jwk["x"] + '","y":"' + jwk["y"] + '"}'

    thumb = gm._b64url(gm.sm3(canonical.encode()))

    assert pub.thumbprint() == thumb
    assert pub.key_id == thumb[:16]
    assert SM2PrivateKey.generate().public_key.key_id != pub.key_id


def test_c2sp_key_id_formula():
    pub = SM2PrivateKey.generate().public_key
    preimage = b"gov.example/audit\n\xfftongban/SM3withSM2" + pub.to_bytes()

    key_id = pub.c2sp_key_id("gov.example/audit")

    assert key_id == hashlib.sha256(preimage).digest()[:4]
    assert pub.c2sp_key_id("gov.example/other") != key_id


@pytest.mark.parametrize("name", ["", "has space", "a+b", "tab\there"])
def test_c2sp_key_id_rejects_bad_names(name):
    with pytest.raises(ValueError, match="key names"):
        SM2PrivateKey(7).public_key.c2sp_key_id(name)


def test_save_private_key_is_0600_pkcs8_pem(tmp_path):
    key, path = SM2PrivateKey.generate(), tmp_path / "keys" / "signing.key"

    gm.save_private_key(key, path)

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes() == key.to_pem()  # tests/test_keys_pkcs8.py: openssl reads it
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----\n")
    assert gm.load_private_key(path) == key
    assert os.listdir(path.parent) == ["signing.key"]  # no temp files left behind


def test_save_private_key_replaces_existing(tmp_path):
    path = tmp_path / "k.json"
    gm.save_private_key(SM2PrivateKey.generate(), path)
    second = SM2PrivateKey.generate()

    gm.save_private_key(second, path)

    assert gm.load_private_key(path) == second


def test_load_or_create_creates_once_then_loads(tmp_path):
    path = tmp_path / "k.json"

    created = gm.load_or_create_private_key(path)
    loaded = gm.load_or_create_private_key(path)

    assert created == loaded
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["k.json"]


@pytest.mark.parametrize(
    "content", ['{"kty": "SM2", "d": "secret-ish-zz"}', "secret-ish-zz", '{"kty": "RSA"}']
)
def test_corrupt_key_file_error_does_not_echo(tmp_path, content):
    path = tmp_path / "k.json"
    path.write_text(content)

    with pytest.raises(ValueError) as info:
        gm.load_or_create_private_key(path)

    assert "secret-ish" not in str(info.value)


RFC8998_KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
RFC8998_IV = bytes.fromhex("00001234567800000000ABCD")
RFC8998_AAD = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
RFC8998_PT = bytes.fromhex("".join(c * 16 for c in "ABCDEFEA"))
RFC8998_CT = bytes.fromhex(
    "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
    "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
)
RFC8998_TAG = bytes.fromhex("83DE3541E4C2B58177E065A9BF7B62EC")


def test_sm4_gcm_rfc8998_known_answer():
    blob = RFC8998_IV + RFC8998_CT + RFC8998_TAG

    assert gm.sm4_decrypt(RFC8998_KEY, blob, RFC8998_AAD) == RFC8998_PT


def test_sm4_round_trip_with_fresh_nonce():
    key = os.urandom(16)

    first = gm.sm4_encrypt(key, b"balance=1024", aad=b"record-7")
    second = gm.sm4_encrypt(key, b"balance=1024", aad=b"record-7")

    assert first[:12] != second[:12]
    assert len(first) == 12 + len(b"balance=1024") + 16
    assert gm.sm4_decrypt(key, first, aad=b"record-7") == b"balance=1024"


@pytest.mark.parametrize("position", [0, 12, -1])  # nonce, body, tag
def test_sm4_detects_tampering(position):
    key = os.urandom(16)
    blob = bytearray(gm.sm4_encrypt(key, b"secret payload"))
    blob[position] ^= 0x80

    with pytest.raises(ValueError, match="decryption failed") as info:
        gm.sm4_decrypt(key, bytes(blob))

    assert "secret" not in str(info.value)


def test_sm4_wrong_key_aad_or_truncation_fails():
    key = os.urandom(16)
    blob = gm.sm4_encrypt(key, b"x", aad=b"a")

    for args in [(os.urandom(16), blob, b"a"), (key, blob, b"b"), (key, blob[:27], b"a")]:
        with pytest.raises(ValueError, match="decryption failed"):
            gm.sm4_decrypt(*args)


def test_sm4_rejects_bad_key_length():
    with pytest.raises(ValueError, match="16 bytes"):
        gm.sm4_encrypt(b"short", b"x")
