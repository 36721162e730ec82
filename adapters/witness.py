"""A department adapter as a witness of the gateway's audit log.

It remembers the last checkpoint it cosigned, demands a consistency proof from that one to
the new one, and cosigns only if the gateway signed the new note and the proof verifies.
A smaller tree (rollback) or the same size with another root (split view) is refused, and
the refusal says which: a witness that stays silent helps nobody.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Protocol

from tongban.audit.merkle import verify_consistency
from tongban.audit.note import NoteError, NoteSignature, SignedNote, sign_line
from tongban.primitives.errors import BadRequest, Conflict
from tongban.primitives.gm import SM2PrivateKey, SM2PublicKey

from .store import DepartmentStore

__all__ = ["MemoryWitnessState", "MetaWitnessState", "Witness", "WitnessRefused", "WitnessState"]


class WitnessRefused(Conflict):
    slug = "witness-refused"
    title = "The witness refused to cosign"


class WitnessState(Protocol):
    def load(self) -> tuple[int, bytes] | None: ...

    def save(self, size: int, root: bytes, note: str | None = None) -> None: ...

    def note(self) -> str | None:
        """The last cosigned checkpoint, with the gateway's and this witness's signatures."""
        ...


class MemoryWitnessState:
    """Keeps the last cosigned (size, root) in memory: a witness that starts fresh each
    run (tests, benchmarks)."""

    def __init__(self) -> None:
        self.value: tuple[int, bytes] | None = None
        self.text: str | None = None

    def load(self) -> tuple[int, bytes] | None:
        return self.value

    def save(self, size: int, root: bytes, note: str | None = None) -> None:
        self.value = (size, root)
        self.text = note

    def note(self) -> str | None:
        return self.text


class MetaWitnessState:
    """Keeps the last cosigned (size, root) in the department store's meta table."""

    KEY = "witness_checkpoint"

    def __init__(self, store: DepartmentStore) -> None:
        self.store = store

    def load(self) -> tuple[int, bytes] | None:
        raw = self.store.get_meta(self.KEY)
        if raw is None:
            return None
        doc = json.loads(raw)
        return int(doc["size"]), bytes.fromhex(doc["root"])

    def save(self, size: int, root: bytes, note: str | None = None) -> None:
        doc: dict[str, object] = {"size": size, "root": root.hex()}
        if note is not None:
            doc["note"] = note
        self.store.set_meta(self.KEY, json.dumps(doc))

    def note(self) -> str | None:
        raw = self.store.get_meta(self.KEY)
        note = json.loads(raw).get("note") if raw is not None else None
        return note if isinstance(note, str) else None


class Witness:
    def __init__(
        self,
        name: str,
        key: SM2PrivateKey,
        *,
        origin: str,
        gateway_name: str,
        gateway_key: SM2PublicKey,
        state: WitnessState,
    ) -> None:
        self.name = name
        self.key = key
        self.origin = origin
        self.gateway_name = gateway_name
        self.gateway_key = gateway_key
        self.state = state
        self._lock = threading.Lock()

    def cosign(self, note_text: str, from_size: int, proof: Sequence[bytes]) -> NoteSignature:
        try:
            note = SignedNote.parse(note_text)
            checkpoint = note.checkpoint
        except NoteError as exc:
            raise BadRequest(f"note: {exc}") from exc
        if checkpoint.origin != self.origin:
            raise WitnessRefused("the note is for another log", reason="wrong-origin")
        if not note.verified_by({self.gateway_name: self.gateway_key})[self.gateway_name]:
            raise WitnessRefused("the gateway's signature does not verify", reason="bad-signature")
        with self._lock:
            last = self.state.load()
            if last is not None:
                last_size, last_root = last
                if checkpoint.size < last_size:
                    raise WitnessRefused(
                        f"rollback: size {checkpoint.size} is below {last_size} already seen",
                        reason="rollback",
                        last_size=last_size,
                    )
                if checkpoint.size == last_size and checkpoint.root != last_root:
                    raise WitnessRefused(
                        "split view: same size, different root", reason="split-view",
                        last_size=last_size,
                    )  # fmt: skip
                if from_size != last_size:
                    raise WitnessRefused(
                        f"need a consistency proof from size {last_size}",
                        reason="need-proof",
                        last_size=last_size,
                    )
                if not verify_consistency(
                    last_size, checkpoint.size, last_root, checkpoint.root, proof
                ):
                    raise WitnessRefused(
                        "the consistency proof does not verify", reason="inconsistent",
                        last_size=last_size,
                    )  # fmt: skip
            signature = sign_line(note.body, self.name, self.key)
            # Kept whole, so that an auditor can ask what this witness last saw
            # (``GET /v1/witness/checkpoint``): a log cut below it is then caught even
            # if its own checkpoints were cut with it.
            gateway = tuple(s for s in note.signatures if s.name == self.gateway_name)
            mine = SignedNote(note.body, (*gateway, signature))
            self.state.save(checkpoint.size, checkpoint.root, mine.text())
        return signature

    def last_checkpoint(self) -> str | None:
        """The last checkpoint this witness cosigned, signed by the gateway and by it."""
        with self._lock:
            return self.state.note()
