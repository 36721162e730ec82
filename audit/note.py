"""Checkpoints as C2SP signed notes, signed with SM2.

    <origin>
    <tree size>
    <base64 root hash>

    — <name> <base64(4-byte key id || 64-byte SM2 r||s)>
    — <witness name> <...>

The signed message is the note body (the three lines, each ending in a newline). The
gateway signs first; department adapters acting as witnesses add their signatures over the
same body once they have checked it is consistent with what they saw before. Signatures
are SM3withSM2 (GM/T 0009, default user id), the 4-byte key id is the C2SP formula with an
unregistered-type marker (see :meth:`SM2PublicKey.c2sp_key_id`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from tongban.primitives.gm import SM2PrivateKey, SM2PublicKey

__all__ = ["Checkpoint", "NoteError", "NoteSignature", "SignedNote", "sign_line"]

_DASH = "\u2014"  # the em dash C2SP uses to start a signature line
_MAX_NOTE = 16 * 1024


class NoteError(ValueError):
    """The text is not a well-formed signed checkpoint."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse_body(cls, body: str) -> Checkpoint:
        lines = body.split("\n")
        if len(lines) < 4 or lines[-1] != "" or not lines[0]:
            raise NoteError("checkpoint body must be origin, size and root lines")
        origin, size_text, root_text = lines[0], lines[1], lines[2]
        if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
            raise NoteError("checkpoint size must be a decimal number")
        try:
            root = base64.b64decode(root_text, validate=True)
        except binascii.Error as exc:
            raise NoteError("checkpoint root must be base64") from exc
        if len(root) != 32:
            raise NoteError("checkpoint root must be 32 bytes")
        return cls(origin, int(size_text), root)


@dataclass(frozen=True, slots=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        blob = base64.b64encode(self.key_id + self.signature).decode()
        return f"{_DASH} {self.name} {blob}\n"

    def verifies(self, body: str, key: SM2PublicKey) -> bool:
        return key.c2sp_key_id(self.name) == self.key_id and key.verify(
            body.encode("utf-8"), self.signature
        )


def sign_line(body: str, name: str, key: SM2PrivateKey) -> NoteSignature:
    return NoteSignature(name, key.public_key.c2sp_key_id(name), key.sign(body.encode("utf-8")))


@dataclass(frozen=True, slots=True)
class SignedNote:
    body: str
    signatures: tuple[NoteSignature, ...]

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint.parse_body(self.body)

    def text(self) -> str:
        return self.body + "\n" + "".join(s.line() for s in self.signatures)

    def with_signature(self, signature: NoteSignature) -> SignedNote:
        others = tuple(s for s in self.signatures if s.name != signature.name)
        return SignedNote(self.body, (*others, signature))

    def verified_by(self, keys: Mapping[str, SM2PublicKey]) -> dict[str, bool]:
        """For each named key: does a signature line by that name verify?"""
        out: dict[str, bool] = {}
        for name, key in keys.items():
            out[name] = any(s.name == name and s.verifies(self.body, key) for s in self.signatures)
        return out

    @classmethod
    def parse(cls, text: str) -> SignedNote:
        if len(text) > _MAX_NOTE:
            raise NoteError("note too large")
        body, sep, rest = text.partition("\n\n")
        if not sep:
            raise NoteError("a signed note has a blank line before its signatures")
        body += "\n"
        Checkpoint.parse_body(body)
        signatures = []
        for line in rest.split("\n"):
            if not line:
                continue
            parts = line.split(" ")
            if len(parts) != 3 or parts[0] != _DASH:
                raise NoteError("signature lines are '— name base64'")
            try:
                blob = base64.b64decode(parts[2], validate=True)
            except binascii.Error as exc:
                raise NoteError("signature must be base64") from exc
            if len(blob) != 4 + 64:
                raise NoteError("an SM2 note signature is a 4-byte key id and 64 bytes")
            signatures.append(NoteSignature(parts[1], blob[:4], blob[4:]))
        if not signatures:
            raise NoteError("a signed note needs at least one signature")
        return cls(body, tuple(signatures))
