"""Where the demo and a single-host deployment keep SM2 keys.

``DIR/keys/<party>.key`` holds a party's SM2 private key (unencrypted PKCS#8 PEM, mode
0600: ``openssl pkey -in FILE -noout -text`` reads it; an older file is converted when it
is loaded, see :func:`tongban.primitives.gm.load_private_key`) and
``DIR/keys/<party>.jwk.json`` its public JWK. Each process reads only its own private key
and the public keys of its peers, as it would on separate machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tongban.gateway.key_changes import ROTATABLE as KEY_ROTATIONS
from tongban.primitives.gm import (
    SM2PrivateKey,
    SM2PublicKey,
    load_or_create_private_key,
    load_private_key,
)

from .config import DEPARTMENTS

__all__ = ["ROTATABLE", "SIGNING_PARTIES", "KeyRing", "init_hint"]

#: Every SM2 key of a single-host deployment: the gateway's three roles, the demo identity
#: provider, and one per department (``tongban keys init`` creates these).
SIGNING_PARTIES = ("gateway", "gateway-answers", "gateway-tokens", "idp", *DEPARTMENTS)


#: The signing keys ``tongban keys rotate --signing`` replaces, and for how long the old
#: public key stays published (gateway/key_changes.py says why).
ROTATABLE = KEY_ROTATIONS


def init_hint(data_dir: Path) -> str:
    """How to get the keys of ``data_dir``."""
    return f"run `tongban keys init --data-dir {data_dir}`"


class KeyRing:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def ensure(self, party: str) -> SM2PrivateKey:
        """Create the party's key pair if absent; publish its public JWK."""
        self.directory.mkdir(parents=True, exist_ok=True)
        key = load_or_create_private_key(self.directory / f"{party}.key")
        public = self.directory / f"{party}.jwk.json"
        jwk = key.public_key.to_jwk(kid=key.public_key.key_id)
        if not public.exists() or json.loads(public.read_text()) != jwk:
            tmp = public.with_suffix(".tmp")
            tmp.write_text(json.dumps(jwk, indent=2) + "\n")
            tmp.replace(public)
        return key

    def secret(self, name: str, size: int = 32) -> bytes:
        """A symmetric key (pseudonyms, vault), created on first use, mode 0600."""
        path = self.directory / f"{name}.secret"
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(size))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # atomic; never overwrites a key another process made
            tmp.unlink()
        value = bytes.fromhex(path.read_text().strip())
        if len(value) != size:
            raise ValueError(f"{path.name}: expected {size} bytes")
        return value

    def p256(self, party: str) -> ec.EllipticCurvePrivateKey:
        """A P-256 key for ES256 answers (for requesters without SM2), PEM, mode 0600."""
        path = self.directory / f"{party}.p256.pem"
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            tmp.unlink()
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path.name}: not an EC key")
        return key

    def missing(self, *, private: Iterable[str] = (), public: Iterable[str] = ()) -> list[str]:
        """The parties whose private key (``NAME.key``) or public JWK is absent."""
        absent = [p for p in private if not (self.directory / f"{p}.key").exists()]
        absent += [p for p in public if not (self.directory / f"{p}.jwk.json").exists()]
        return list(dict.fromkeys(absent))

    def require(self, *, private: Iterable[str] = (), public: Iterable[str] = ()) -> None:
        """Raise :class:`~tongban.boundary.MissingPrerequisite` naming what is absent and
        the command that creates it; the ring lives at ``DATA_DIR/keys``."""
        from .boundary import MissingPrerequisite

        absent = self.missing(private=private, public=public)
        if not absent:
            return
        where = self.directory.absolute()
        hint = init_hint(where.parent)
        if not (where.is_dir() and any(where.glob("*.key"))):
            raise MissingPrerequisite(f"no keys in {where}: {hint}")
        raise MissingPrerequisite(f"no key for {', '.join(absent)} in {where}: {hint}")

    def private(self, party: str) -> SM2PrivateKey:
        return load_private_key(self.directory / f"{party}.key")

    def public(self, party: str) -> SM2PublicKey:
        path = self.directory / f"{party}.jwk.json"
        try:
            return SM2PublicKey.from_jwk(json.loads(path.read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(f"no public key for {party} in {self.directory}") from None
