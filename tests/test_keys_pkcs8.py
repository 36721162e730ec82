"""SM2 private keys on disk are unencrypted PKCS#8 PEM (issue 18, part 1).

The system ``openssl`` (OpenSSL 3, which knows SM2) is the outside judge: it reads what
tongban writes and derives the same public key, and what it generates tongban loads and
signs with (the signature checked by pure-Python gmssl). Old files (tongban's JSON, SEC1)
are converted in place, once, keeping the key; bad files give one line naming the file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gmssl import sm2 as gmssl_sm2

from tongban.cli import main
from tongban.keys import KeyRing
from tongban.primitives import gm
from tongban.primitives.errors import TongbanError
from tongban.primitives.gm import KeyFileError, SM2PrivateKey, SM2PublicKey

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="no openssl command")
MSG = "跨部门数据共享 key file".encode()


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    assert OPENSSL is not None
    done = subprocess.run(
        [OPENSSL, *args], input=stdin, capture_output=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def _openssl_knows_sm2() -> bool:
    if OPENSSL is None:
        return False
    done = subprocess.run(
        [OPENSSL, "ecparam", "-name", "SM2"], capture_output=True, check=False, timeout=60
    )
    return done.returncode == 0


needs_sm2_openssl = pytest.mark.skipif(not _openssl_knows_sm2(), reason="openssl without SM2")


def _old_json(key: SM2PrivateKey) -> bytes:
    return json.dumps({"kty": "SM2", "d": key.to_hex()}).encode()


def _gmssl_verifies(public: SM2PublicKey, sig: bytes) -> bool:
    crypt = gmssl_sm2.CryptSM2(private_key="", public_key="")
    crypt.public_key = f"{public.x:064x}{public.y:064x}"  # not via __init__: lstrip("04")
    return crypt.verify_with_sm3(sig.hex(), MSG) is True


# --- what tongban writes -----------------------------------------------------------------


def test_a_written_key_is_pkcs8_pem_0600_with_no_temp_file_left(tmp_path: Path):
    key, path = SM2PrivateKey.generate(), tmp_path / "keys" / "gateway.key"

    gm.save_private_key(key, path)

    text = path.read_text("ascii")
    assert text.startswith("-----BEGIN PRIVATE KEY-----\n")
    assert text.endswith("-----END PRIVATE KEY-----\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["gateway.key"]
    assert key.to_hex() not in text
    assert gm.load_private_key(path) == key


def test_the_encoding_is_byte_for_byte_tongsuos():
    from tongsuopy.crypto import serialization
    from tongsuopy.crypto.asymciphers import ec

    edges = [SM2PrivateKey(1), SM2PrivateKey(0xFF), SM2PrivateKey(gm.SM2_N - 2)]
    for key in [*edges, *(SM2PrivateKey.generate() for _ in range(8))]:
        theirs = ec.derive_private_key(key.d, ec.SM2())
        assert key.to_pem() == theirs.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        assert key.public_key.to_pem() == theirs.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        loaded = serialization.load_pem_private_key(key.to_pem(), password=None)
        assert loaded.private_numbers().private_value == key.d


@needs_sm2_openssl
def test_openssl_reads_the_key_tongban_writes_and_derives_the_same_public_key(tmp_path: Path):
    ring = KeyRing(tmp_path / "keys")
    key = ring.ensure("gateway")
    path = tmp_path / "keys" / "gateway.key"

    text = _openssl("pkey", "-in", str(path), "-noout", "-text").decode()
    structure = _openssl("asn1parse", "-in", str(path)).decode()
    public_pem = _openssl("pkey", "-in", str(path), "-pubout")
    rewritten = _openssl("pkey", "-in", str(path))

    assert text.startswith("Private-Key: (256 bit)")
    assert "ASN1 OID: SM2" in text
    assert "id-ecPublicKey" in structure and ":sm2" in structure.lower()
    assert SM2PublicKey.from_pem(public_pem) == key.public_key == ring.public("gateway")
    assert public_pem == key.public_key.to_pem()
    assert rewritten == path.read_bytes()  # openssl writes exactly what tongban wrote


@needs_sm2_openssl
def test_openssl_reads_the_public_key_pem(tmp_path: Path):
    key = SM2PrivateKey.generate()
    (tmp_path / "pub.pem").write_bytes(key.public_key.to_pem())

    text = _openssl("pkey", "-pubin", "-in", str(tmp_path / "pub.pem"), "-noout", "-text")

    assert b"ASN1 OID: SM2" in text
    assert key.public_key.to_bytes().hex()[:30] in text.decode().replace(":", "").replace(
        "\n", ""
    ).replace(" ", "")


# --- what openssl writes ----------------------------------------------------------------


@needs_sm2_openssl
@pytest.mark.parametrize(
    "make",
    [
        ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:SM2"],
        ["genpkey", "-algorithm", "SM2"],
        ["ecparam", "-name", "SM2", "-genkey"],  # a parameters block, then the key
    ],
    ids=["genpkey-ec", "genpkey-sm2", "ecparam"],
)
def test_a_key_openssl_generates_is_loaded_and_signs(tmp_path: Path, make: list[str]):
    path = tmp_path / "openssl.key"
    path.write_bytes(_openssl(*make))
    path.chmod(0o600)
    before = path.read_bytes()

    key = gm.load_private_key(path)
    sig = key.sign(MSG)

    public = SM2PublicKey.from_pem(_openssl("pkey", "-in", str(path), "-pubout"))
    assert key.public_key == public
    assert _gmssl_verifies(public, sig)
    assert public.verify(MSG, sig, backend=gm.get_backend("tongsuo"))
    assert path.read_bytes() == before  # PKCS#8 already: never rewritten


@needs_sm2_openssl
def test_a_pkcs8_key_from_topk8_loads(tmp_path: Path):
    sec1 = _openssl("ec", stdin=_openssl("ecparam", "-name", "SM2", "-genkey", "-noout"))
    pkcs8 = _openssl("pkcs8", "-topk8", "-nocrypt", stdin=sec1)
    path = tmp_path / "k.pem"
    path.write_bytes(pkcs8)

    key = gm.load_private_key(path)

    assert _gmssl_verifies(key.public_key, key.sign(MSG))
    assert key.public_key == SM2PublicKey.from_pem(_openssl("pkey", "-pubout", stdin=pkcs8))


# --- old files ----------------------------------------------------------------------------


def test_an_old_json_key_is_converted_on_load_once_and_keeps_signing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    key, path = SM2PrivateKey.generate(), tmp_path / "idp.key"
    path.write_bytes(_old_json(key))
    path.chmod(0o640)
    old_inode = path.stat().st_ino

    with caplog.at_level(logging.INFO, logger="tongban.primitives.gm"):
        loaded = gm.load_private_key(path)
        converted = path.read_bytes()
        again = gm.load_private_key(path)

    assert loaded == again == key
    assert converted == key.to_pem()
    assert path.read_bytes() == converted  # converting twice changes nothing
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the mode it had
    assert path.stat().st_ino != old_inode  # renamed over, never rewritten in place
    assert os.listdir(tmp_path) == ["idp.key"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and str(path) in lines[0] and "PKCS#8" in lines[0]
    assert caplog.records[0].levelno == logging.INFO
    assert key.to_hex() not in caplog.text
    assert _gmssl_verifies(key.public_key, again.sign(MSG))


@needs_sm2_openssl
def test_a_sec1_key_is_converted_and_openssl_agrees(tmp_path: Path):
    path = tmp_path / "sec1.key"
    sec1 = _openssl("ec", stdin=_openssl("ecparam", "-name", "SM2", "-genkey", "-noout"))
    assert b"BEGIN SM2 PRIVATE KEY" in sec1 or b"BEGIN EC PRIVATE KEY" in sec1
    path.write_bytes(sec1)

    key = gm.load_private_key(path)

    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert SM2PublicKey.from_pem(_openssl("pkey", "-in", str(path), "-pubout")) == key.public_key
    assert _openssl("pkey", "-in", str(path), "-pubout") == _openssl("pkey", "-pubout", stdin=sec1)


def test_convert_false_leaves_the_file_alone(tmp_path: Path):
    key, path = SM2PrivateKey.generate(), tmp_path / "k.key"
    path.write_bytes(_old_json(key))

    assert gm.load_private_key(path, convert=False) == key
    assert path.read_bytes() == _old_json(key)


def test_a_key_file_that_cannot_be_rewritten_still_loads_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    """A key directory the service may read but not write (tests run as root, so the
    refusal is simulated where the temporary file would be created)."""
    key, path = SM2PrivateKey.generate(), tmp_path / "k.key"
    path.write_bytes(_old_json(key))

    def refused(*args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(gm, "_write_new", refused)
    with caplog.at_level(logging.INFO, logger="tongban.primitives.gm"):
        assert gm.load_private_key(path) == key

    assert path.read_bytes() == _old_json(key)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "Permission denied" in caplog.text and "tongban keys convert" in caplog.text
    assert str(path) in caplog.text and key.to_hex() not in caplog.text


# Each worker waits for the go file, so all eight load (and convert) at the same moment.
_WORKER = """
import os, sys, time
from tongban.primitives import gm
path, go = sys.argv[1:]
while not os.path.exists(go):
    time.sleep(0.001)
print(gm.load_private_key(path).to_hex())
"""


def test_workers_converting_at_once_agree_and_leave_one_good_file(tmp_path: Path):
    """Eight processes (gunicorn workers starting together) load one old file at once."""
    key, path, go = SM2PrivateKey.generate(), tmp_path / "keys" / "gateway.key", tmp_path / "go"
    path.parent.mkdir()
    path.write_bytes(_old_json(key))
    path.chmod(0o640)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(8)
    ]
    time.sleep(1.0)  # let them import and reach the barrier
    go.touch()
    results = [w.communicate(timeout=120) for w in workers]

    assert [w.returncode for w in workers] == [0] * 8, [e.decode() for _, e in results]
    assert {out.decode().strip() for out, _ in results} == {key.to_hex()}
    assert path.read_bytes() == key.to_pem()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # its mode, kept
    assert os.listdir(path.parent) == ["gateway.key"]  # no temporary file left behind


def test_a_file_replaced_while_converting_is_not_clobbered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A converter that finds the file changed since it read it leaves the newer file."""
    old, new, path = SM2PrivateKey.generate(), SM2PrivateKey.generate(), tmp_path / "k.key"
    path.write_bytes(_old_json(old))
    real = gm._write_new

    def meanwhile(*args: object, **kwargs: object) -> str:
        monkeypatch.setattr(gm, "_write_new", real)
        gm.save_private_key(new, path)  # an operator replaces the key mid-conversion
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gm, "_write_new", meanwhile)

    assert gm.load_private_key(path) == old  # what it read
    monkeypatch.undo()
    assert gm.load_private_key(path) == new  # the file is the newer key, untouched
    assert sorted(os.listdir(tmp_path)) == ["k.key"]


def test_keys_convert_command_converts_old_files_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    keys, envelope = tmp_path / "keys", tmp_path / "federation" / "envelope"
    keys.mkdir()
    envelope.mkdir(parents=True)
    old, new, node = SM2PrivateKey.generate(), SM2PrivateKey.generate(), SM2PrivateKey.generate()
    (keys / "gateway.key").write_bytes(_old_json(old))
    gm.save_private_key(new, keys / "police.key")
    (envelope / "supernode-0.sm2").write_bytes(_old_json(node))

    assert main(["keys", "convert", "--data-dir", str(tmp_path)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["keys", "convert", "--data-dir", str(tmp_path)]) == 0
    second = json.loads(capsys.readouterr().out)

    assert first["converted"] == [str(keys / "gateway.key"), str(envelope / "supernode-0.sm2")]
    assert first["unchanged"] == [str(keys / "police.key")] and first["refused"] == []
    assert second["converted"] == [] and len(second["unchanged"]) == 3
    assert (keys / "gateway.key").read_bytes() == old.to_pem()
    assert gm.load_private_key(envelope / "supernode-0.sm2") == node


def test_keys_convert_names_a_bad_file_in_one_line_and_converts_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    keys = tmp_path / "keys"
    keys.mkdir()
    key = SM2PrivateKey.generate()
    (keys / "gateway.key").write_bytes(_old_json(key))
    (keys / "broken.key").write_bytes(key.to_pem()[:100])

    assert main(["keys", "convert", "--data-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()

    assert json.loads(captured.out)["refused"] == [str(keys / "broken.key")]
    assert captured.err.count("\n") == 1 and str(keys / "broken.key") in captured.err
    assert "Traceback" not in captured.err and key.to_hex() not in captured.err
    assert gm.load_private_key(keys / "gateway.key", convert=False) == key
    assert (keys / "gateway.key").read_bytes() == key.to_pem()


def test_keys_convert_without_keys_names_the_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    assert main(["keys", "convert", "--data-dir", str(tmp_path)]) == 2
    assert f"no SM2 key files in {tmp_path}" in capsys.readouterr().err


# --- files tongban refuses ------------------------------------------------------------------


def _p256_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _encrypted_pem(key: SM2PrivateKey) -> bytes:
    from tongsuopy.crypto import serialization
    from tongsuopy.crypto.asymciphers import ec

    pem: bytes = ec.derive_private_key(key.d, ec.SM2()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    return pem


def _ed25519_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _mismatched_public(key: SM2PrivateKey) -> bytes:
    other = SM2PrivateKey.generate().public_key.to_bytes()
    der = key.to_der().replace(key.public_key.to_bytes(), other)
    return gm._pem("PRIVATE KEY", der)


KEY = SM2PrivateKey.generate()
BAD_FILES = {
    "p256": (_p256_pem(), "P-256"),
    "ed25519": (_ed25519_pem(), "Ed25519"),
    "encrypted": (_encrypted_pem(KEY), "encrypted"),
    "truncated": (KEY.to_pem()[:120], "truncated"),
    "cut-der": (gm._pem("PRIVATE KEY", KEY.to_der()[:-7]), "truncated DER"),
    "not-base64": (KEY.to_pem().replace(b"M", b"*", 1), "not base64"),
    "public-only": (KEY.public_key.to_pem(), "PUBLIC KEY"),
    "wrong-public": (_mismatched_public(KEY), "does not belong"),
    "der": (KEY.to_der(), "DER, not PEM"),
    "empty": (b"", "not PEM"),
    "garbage": (b"hello " + KEY.to_hex().encode(), "not PEM"),
    "old-json-bad-d": (b'{"kty": "SM2", "d": "' + KEY.to_hex()[:-1].encode() + b'"}', "d is not"),
    "old-json-other": (b'{"kty": "RSA", "n": "abc"}', "old-format"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_key_file_is_one_line_naming_the_file_and_never_the_key(tmp_path: Path, name: str):
    content, reason = BAD_FILES[name]
    path = tmp_path / f"{name}.key"
    path.write_bytes(content)

    with pytest.raises(KeyFileError) as info:
        gm.load_private_key(path)

    detail = info.value.detail
    assert isinstance(info.value, TongbanError) and isinstance(info.value, ValueError)
    assert detail.startswith(f"{path}: ") and reason in detail, detail
    assert "\n" not in detail
    assert KEY.to_hex() not in detail and KEY.to_hex()[:16] not in detail
    assert path.read_bytes() == content  # a refused file is never rewritten


@needs_sm2_openssl
def test_a_legacy_encrypted_sec1_key_is_refused_as_encrypted(tmp_path: Path):
    sec1 = _openssl("ecparam", "-name", "SM2", "-genkey", "-noout")
    path = tmp_path / "k.key"
    path.write_bytes(_openssl("ec", "-aes128", "-passout", "pass:x", stdin=sec1))
    assert b"Proc-Type: 4,ENCRYPTED" in path.read_bytes()

    with pytest.raises(KeyFileError, match="an encrypted key") as info:
        gm.load_private_key(path)
    assert info.value.detail.startswith(f"{path}: ")


def test_the_command_line_shows_a_bad_gateway_key_as_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """`tongban keys init` over a data directory whose gateway key is a P-256 key."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "gateway.key").write_bytes(_p256_pem())

    assert main(["keys", "init", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err

    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"tongban: {keys / 'gateway.key'}: ") and "P-256" in err


def test_public_pem_refuses_other_curves():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = p256.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    with pytest.raises(ValueError, match="P-256"):
        SM2PublicKey.from_pem(pem)
