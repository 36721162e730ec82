"""``SM2`` for PyJWT, so third parties can verify tongban's tokens with a stock library.

Needs the ``pyjwt`` extra (``pip install 'tongban[pyjwt]'``); tongban itself verifies with
:mod:`tongban.primitives.jws`, which checks ``typ`` and key types that PyJWT does not.
"""

from __future__ import annotations

import json
from typing import Any, Literal, overload

from tongban.primitives.extras import require_extra

require_extra("jwt", "pyjwt", "the PyJWT SM2 algorithm")

import jwt  # noqa: E402
from jwt.algorithms import Algorithm  # noqa: E402
from jwt.exceptions import InvalidKeyError  # noqa: E402
from jwt.types import JWKDict  # noqa: E402

from tongban.primitives.gm import SM2PrivateKey, SM2PublicKey  # noqa: E402

__all__ = ["PyJWTSM2Algorithm", "pyjwt_with_sm2"]


class PyJWTSM2Algorithm(Algorithm):
    """``SM2`` for PyJWT, so third parties can verify our tokens with a stock library.

    Keys may be :class:`SM2PublicKey`/:class:`SM2PrivateKey`, a JWK dict or JSON string,
    or the 65-byte uncompressed point.
    """

    def prepare_key(self, key: Any) -> SM2PublicKey | SM2PrivateKey:
        if isinstance(key, SM2PublicKey | SM2PrivateKey):
            return key
        try:
            if isinstance(key, bytes) and len(key) == 65:
                return SM2PublicKey.from_bytes(key)
            return self.from_jwk(key)
        except (ValueError, TypeError) as exc:
            raise InvalidKeyError("not an SM2 key") from exc

    def sign(self, msg: bytes, key: Any) -> bytes:
        if not isinstance(key, SM2PrivateKey):
            raise InvalidKeyError("SM2 signing needs an SM2PrivateKey")
        return key.sign(msg)

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        public = key.public_key if isinstance(key, SM2PrivateKey) else key
        return isinstance(public, SM2PublicKey) and public.verify(msg, sig)

    @overload
    @staticmethod
    def to_jwk(key_obj: Any, as_dict: Literal[True]) -> JWKDict: ...

    @overload
    @staticmethod
    def to_jwk(key_obj: Any, as_dict: Literal[False] = False) -> str: ...

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> JWKDict | str:
        public = key_obj.public_key if isinstance(key_obj, SM2PrivateKey) else key_obj
        if not isinstance(public, SM2PublicKey):
            raise InvalidKeyError("not an SM2 key")
        jwk: JWKDict = dict(public.to_jwk())
        return jwk if as_dict else json.dumps(jwk)

    @staticmethod
    def from_jwk(jwk: str | JWKDict) -> SM2PublicKey:
        doc = json.loads(jwk) if isinstance(jwk, str) else jwk
        if not isinstance(doc, dict):
            raise InvalidKeyError("JWK must be a JSON object")
        return SM2PublicKey.from_jwk(doc)


def pyjwt_with_sm2() -> jwt.PyJWS:
    """A fresh ``PyJWS`` limited to ES256 plus ``SM2``; PyJWT's globals stay untouched."""
    jws = jwt.PyJWS(algorithms=["ES256"])
    jws.register_algorithm("SM2", PyJWTSM2Algorithm())
    return jws
