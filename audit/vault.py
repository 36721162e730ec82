"""Keyed pseudonyms for subjects, and the vault that can turn them back into ID numbers.

Entries name a subject only by ``HMAC-SM3(pseudonym_key, ID number)``. The vault row
(encrypted with SM4-GCM) is what links a pseudonym to a person for an officer's review;
erasing it unlinks the person without touching a single hashed byte of the log.
"""

from __future__ import annotations

from primitives.gm import hmac_sm3, sm4_decrypt, sm4_encrypt

__all__ = ["Pseudonymizer"]


class Pseudonymizer:
    def __init__(self, pseudonym_key: bytes, vault_key: bytes) -> None:
        if len(pseudonym_key) < 16 or len(vault_key) != 16:
            raise ValueError("pseudonym key ≥ 16 bytes, vault key exactly 16 (SM4)")
        self._key = pseudonym_key
        self._vault_key = vault_key

    def pseudonym(self, id_number: str) -> str:
        return hmac_sm3(self._key, id_number.encode("ascii")).hex()

    def seal(self, pseudonym: str, id_number: str) -> bytes:
        return sm4_encrypt(self._vault_key, id_number.encode("ascii"), pseudonym.encode())

    def open(self, pseudonym: str, sealed: bytes) -> str:
        return sm4_decrypt(self._vault_key, sealed, pseudonym.encode()).decode("ascii")
