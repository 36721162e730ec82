"""Signed answers: a compact JWS a requester verifies with /.well-known/jwks.json alone.

``sub`` is a pairwise pseudonym (HMAC-SM3 over requester and ID number), so two
requesters cannot link their answers about the same citizen, and no answer carries an ID
number or any attribute: only the claim, purpose, parameters and yes/no/undetermined.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from tongban.primitives.errors import BadRequest
from tongban.primitives.gm import SM2PrivateKey, SM2PublicKey, hmac_sm3
from tongban.primitives.jws import PublicKey, sign_compact
from tongban.primitives.rotation import KeySource, key_source

__all__ = ["ANSWER_TYP", "AnswerSigner"]

ANSWER_TYP = "tongban-answer+jwt"
ANSWER_LIFETIME = 600  # seconds


def _kid(key: ec.EllipticCurvePublicKey) -> str:
    from tongban.primitives.jws import jwks

    jwk = jwks({"x": key})["keys"][0]
    return f"es256-{jwk['x'][:16]}"


class AnswerSigner:
    def __init__(
        self,
        sm2_key: SM2PrivateKey | KeySource,
        *,
        issuer: str,
        pairwise_key: bytes,
        es256_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> None:
        """``sm2_key`` may rotate (a :class:`~tongban.primitives.rotation.FollowedKey`):
        answers are signed with its current key, and its retired keys stay published."""
        self._sm2 = key_source(sm2_key)
        self.es256_key = es256_key
        self.es256_kid = _kid(es256_key.public_key()) if es256_key is not None else None
        self.issuer = issuer
        self._pairwise = pairwise_key

    @property
    def sm2_key(self) -> SM2PrivateKey:
        """The SM2 key answers are signed with now."""
        return self._sm2.current()

    @property
    def sm2_kid(self) -> str:
        return self.sm2_key.public_key.key_id

    def public_keys(self) -> dict[str, PublicKey]:
        keys: dict[str, PublicKey] = dict(self._sm2.published())
        if self.es256_key is not None and self.es256_kid is not None:
            keys[self.es256_kid] = self.es256_key.public_key()
        return keys

    @property
    def sm2_public(self) -> SM2PublicKey:
        return self.sm2_key.public_key

    def pairwise(self, requester: str, id_number: str) -> str:
        return hmac_sm3(self._pairwise, f"{requester}\n{id_number}".encode()).hex()[:32]

    def sign(self, requester: str, claims: Mapping[str, Any], alg: str = "SM2") -> str:
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": requester,
            "iat": now,
            "exp": now + ANSWER_LIFETIME,
            "jti": secrets.token_urlsafe(16),
            **claims,
        }
        if alg == "SM2":
            key = self.sm2_key  # one key for the signature and its kid, whatever rotates
            return sign_compact(payload, key, typ=ANSWER_TYP, kid=key.public_key.key_id)
        if alg == "ES256" and self.es256_key is not None and self.es256_kid is not None:
            return sign_compact(payload, self.es256_key, typ=ANSWER_TYP, kid=self.es256_kid)
        raise BadRequest("answer_alg: expected SM2 or ES256")
