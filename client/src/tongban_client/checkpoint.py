"""The audit log's checkpoints: C2SP signed notes, verified against a pinned gateway key.

    <origin>
    <tree size>
    <base64 root hash>

    — <name> <base64(4-byte key id || 64-byte SM2 r||s)>
    — <witness name> <...>

The signed message is the body (the three lines, each with its newline). The gateway
signs first; department adapters acting as witnesses add their cosignatures. A signature
line counts for a key only if its 4-byte key id is the one that key has under the line's
name (``SHA-256(name || 0x0A || 0xFF || "tongban/SM3withSM2" || 04 || x || y)[:4]``) and
its SM3withSM2 signature verifies.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from ._gm import SM2PublicKey
from .errors import CheckpointRejected

__all__ = ["Checkpoint", "NoteSignature", "parse_note", "verify_note"]

_DASH = "\u2014"  # the em dash C2SP uses to start a signature line
_MAX_NOTE = 16 * 1024


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes

    def verifies(self, body: str, key: SM2PublicKey) -> bool:
        return key.c2sp_key_id(self.name) == self.key_id and key.verify(
            body.encode("utf-8"), self.signature
        )


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint: ``size`` entries with Merkle root ``root``, under log ``origin``.

    ``signers`` names the signature lines that verified with the keys it was checked
    against (the pinned gateway key's line first, then witnesses), once :func:`verify_note`
    returned it; ``text`` is the note as served, to store and present later."""

    origin: str
    size: int
    root: bytes
    text: str
    signers: tuple[str, ...] = ()

    @property
    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def _signature_line(line: str) -> NoteSignature:
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != _DASH or not parts[1]:
        raise CheckpointRejected("signature lines are '\u2014 name base64'")
    try:
        blob = base64.b64decode(parts[2], validate=True)
    except binascii.Error:
        raise CheckpointRejected("note signature must be base64") from None
    if len(blob) != 4 + 64:
        raise CheckpointRejected("an SM2 note signature is a 4-byte key id and 64 bytes")
    return NoteSignature(parts[1], blob[:4], blob[4:])


def parse_note(text: str) -> tuple[Checkpoint, tuple[NoteSignature, ...]]:
    """Split a signed note into its checkpoint and signature lines; nothing is verified."""
    if not isinstance(text, str) or len(text) > _MAX_NOTE:
        raise CheckpointRejected("checkpoint too large")
    body, sep, rest = text.partition("\n\n")
    if not sep:
        raise CheckpointRejected("a signed note has a blank line before its signatures")
    lines = body.split("\n")
    if len(lines) < 3 or not lines[0]:
        raise CheckpointRejected("checkpoint body must be origin, size and root lines")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not (size_text.isascii() and size_text.isdigit()) or (
        size_text != "0" and size_text.startswith("0")
    ):
        raise CheckpointRejected("checkpoint size must be a decimal number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        raise CheckpointRejected("checkpoint root must be base64") from None
    if len(root) != 32:
        raise CheckpointRejected("checkpoint root must be 32 bytes")
    checkpoint = Checkpoint(origin, int(size_text), root, text)
    if checkpoint.body != body + "\n":
        # Extension lines, or a root in non-canonical base64: not what the gateway signs.
        raise CheckpointRejected("checkpoint body is not in the gateway's form")
    signatures = [_signature_line(line) for line in rest.split("\n") if line]
    if not signatures:
        raise CheckpointRejected("a signed note needs at least one signature")
    return checkpoint, tuple(signatures)


def verify_note(
    text: str,
    gateway_key: SM2PublicKey,
    *,
    gateway_name: str | None = None,
    origin: str | None = None,
    witnesses: Mapping[str, SM2PublicKey] | None = None,
    quorum: int = 0,
) -> Checkpoint:
    """Parse ``text`` and require a signature by ``gateway_key`` (under ``gateway_name``,
    if given: else under any name); with ``origin``, the log's name must match; with
    ``witnesses`` (name -> key), at least ``quorum`` of them must have cosigned."""
    checkpoint, signatures = parse_note(text)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointRejected("checkpoint is of another log (origin)")
    body = checkpoint.body
    by_gateway = [
        s.name
        for s in signatures
        if (gateway_name is None or s.name == gateway_name) and s.verifies(body, gateway_key)
    ]
    if not by_gateway:
        raise CheckpointRejected("no signature by the pinned gateway key verifies")
    cosigned = [
        name
        for name, key in (witnesses or {}).items()
        if any(s.name == name and s.verifies(body, key) for s in signatures)
    ]
    if len(cosigned) < quorum:
        raise CheckpointRejected(
            f"checkpoint cosigned by {len(cosigned)} of the pinned witnesses, {quorum} needed"
        )
    return Checkpoint(
        checkpoint.origin, checkpoint.size, checkpoint.root, text, (by_gateway[0], *cosigned)
    )
