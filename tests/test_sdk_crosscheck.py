"""The SDK (``client/``, tongban-client) carries its own Merkle-proof, JOSE and SM2
verification so that a requester needs nothing of the server; this is the differential
test that the two implementations agree: on every proof of small trees, on tampered
proofs, and on tokens signed by either side, SM2 and ES256."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tongban_client import merkle as sdk_merkle
from tongban_client.errors import AnswerRejected, ProofRejected
from tongban_client.jose import sign_compact as sdk_sign
from tongban_client.jose import verify_compact as sdk_verify
from tongban_client.keys import load_private_key as sdk_private_key
from tongban_client.keys import public_key_from_jwk

from tongban.audit import merkle
from tongban.primitives.errors import TongbanError
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.jws import jwks, key_from_jwk
from tongban.primitives.jws import sign_compact as server_sign
from tongban.primitives.jws import verify_compact as server_verify

SIZES = range(1, 34)


def _tree(size: int, rng: random.Random) -> merkle.MerkleTree:
    entries = (rng.randbytes(rng.randrange(0, 40)) for _ in range(size))
    return merkle.MerkleTree(merkle.leaf_hash(e) for e in entries)


def _accepts(func: Callable[..., bytes], root: bytes, *args: Any) -> bool:
    try:
        return func(*args) == root
    except (ProofRejected, merkle.ProofError, ValueError):
        return False


def _tampered(proof: list[bytes], rng: random.Random) -> list[list[bytes]]:
    out: list[list[bytes]] = [[*proof, rng.randbytes(32)]]
    if proof:
        out.append(proof[:-1])
        flipped = bytearray(proof[0])
        flipped[rng.randrange(32)] ^= 1 << rng.randrange(8)
        out.append([bytes(flipped), *proof[1:]])
        out.append([proof[0][:31], *proof[1:]])
    return out


def test_inclusion_proofs_agree() -> None:
    rng = random.Random(17)
    for size in SIZES:
        tree = _tree(size, rng)
        root = tree.root(size)
        for index in range(size):
            leaf, proof = tree.leaf(index), tree.inclusion_proof(index, size)
            assert sdk_merkle.root_from_inclusion(index, size, leaf, proof) == root
            assert merkle.root_from_inclusion(index, size, leaf, proof) == root
            for bad in _tampered(proof, rng):
                args = (index, size, leaf, bad)
                ours = _accepts(merkle.root_from_inclusion, root, *args)
                sdk = _accepts(sdk_merkle.root_from_inclusion, root, *args)
                assert ours == sdk is False, (size, index)
        assert sdk_merkle.leaf_hash(b"entry") == merkle.leaf_hash(b"entry")


def test_consistency_proofs_agree() -> None:
    rng = random.Random(18)
    for second in SIZES:
        tree = _tree(second, rng)
        new_root = tree.root(second)
        for first in range(1, second + 1):
            old_root, proof = tree.root(first), tree.consistency_proof(first, second)
            assert sdk_merkle.root_from_consistency(first, second, old_root, proof) == new_root
            assert merkle.verify_consistency(first, second, old_root, new_root, proof)
            for bad in _tampered(proof, rng):
                ours = merkle.verify_consistency(first, second, old_root, new_root, bad)
                sdk = _accepts(
                    sdk_merkle.root_from_consistency, new_root, first, second, old_root, bad
                )
                assert ours == sdk is False, (first, second)


def _keys() -> list[tuple[str, Any]]:
    return [("SM2", SM2PrivateKey.generate()), ("ES256", ec.generate_private_key(ec.SECP256R1()))]


def _public(key: Any) -> Any:
    return key.public_key if isinstance(key, SM2PrivateKey) else key.public_key()


@pytest.mark.parametrize("alg", ["SM2", "ES256"])
def test_tokens_signed_by_either_side_verify_on_the_other(alg: str) -> None:
    key = dict(_keys())[alg]
    jwk = jwks({"k1": _public(key)})["keys"][0]
    server_keys = {"k1": key_from_jwk(jwk)}
    sdk_keys = {"k1": public_key_from_jwk(jwk)}
    payload = {"iss": "https://gw", "result": "yes", "n": 1}
    typ = "tongban-answer+jwt"

    by_server = server_sign(payload, key, typ=typ, kid="k1")
    assert sdk_verify(by_server, sdk_keys, typ=typ)[1] == payload
    # The SDK's own key object for the same key (it reads the PKCS#8 PEM the server writes).
    sdk_key = sdk_private_key(key.to_pem()) if isinstance(key, SM2PrivateKey) else key
    by_sdk = sdk_sign(payload, sdk_key, typ=typ, kid="k1")
    assert server_verify(by_sdk, server_keys.get, typ=typ, algorithms=(alg,))[1] == payload

    head, body, sig = by_server.split(".")
    forged = [
        f"{head}.{body}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}",  # another signature
        f"{head}.{body[:-2]}xx.{sig}",  # another payload
        f"{head}.{body}",  # no signature
    ]
    for token in forged:
        with pytest.raises(AnswerRejected):
            sdk_verify(token, sdk_keys, typ=typ)
        with pytest.raises(TongbanError):
            server_verify(token, server_keys.get, typ=typ, algorithms=(alg,))
    for wrong_typ in ("at+jwt", "JWT"):
        with pytest.raises(AnswerRejected):
            sdk_verify(by_server, sdk_keys, typ=wrong_typ)
        with pytest.raises(TongbanError):
            server_verify(by_server, server_keys.get, typ=wrong_typ, algorithms=(alg,))
