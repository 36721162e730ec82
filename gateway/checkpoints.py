"""Signed, witnessed checkpoints of the audit log, produced every few seconds.

The gateway signs a checkpoint of the current tree and asks each department adapter to
cosign it. A witness that last saw size m gets a consistency proof from m; if it says it
saw another size (after a restart on either side) the request is retried once from there.
A witness that refuses or is down leaves its signature off this checkpoint; the refusal
reason is logged, since a refusal is evidence of a split view or rollback.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping

from adapters.client import Transport
from audit.log import AuditLog
from audit.note import Checkpoint, NoteError, NoteSignature, SignedNote, sign_line
from primitives.errors import DepartmentUnavailable
from primitives.gm import SM2PrivateKey, SM2PublicKey

__all__ = ["Checkpointer"]

log = logging.getLogger("tongban.checkpoints")


class Checkpointer:
    def __init__(
        self,
        audit: AuditLog,
        key: SM2PrivateKey,
        *,
        name: str,
        witnesses: Mapping[str, SM2PublicKey],
        transport: Transport | None,
        interval: float = 2.0,
        timeout: float = 2.0,
    ) -> None:
        self.audit = audit
        self.key = key
        self.name = name
        self.witnesses = dict(witnesses)
        self.transport = transport
        self.interval = interval
        self.timeout = timeout
        self._seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self.checkpoint()
        self._thread = threading.Thread(target=self._loop, name="checkpointer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.checkpoint()
            except Exception:  # a failed round must not end checkpointing
                log.exception("checkpoint round failed")

    def checkpoint(self, *, force: bool = False) -> SignedNote:
        """Sign the current tree, gather cosignatures, store and return the note."""
        with self._lock:
            size = self.audit.refresh()
            latest = self.audit.latest_checkpoint()
            if latest is not None and latest.checkpoint.size == size and not force:
                signed = {s.name for s in latest.signatures}
                if signed >= set(self.witnesses) or self.transport is None:
                    return latest
                # Same tree, but some witness has not cosigned yet (it was down): ask again.
            root = self.audit.root(size)
            body = Checkpoint(self.audit.origin, size, root).body()
            note = SignedNote(body, (sign_line(body, self.name, self.key),))
            previous = latest.checkpoint.size if latest is not None else 0
            for witness in self.witnesses:
                signature = self._cosign(witness, note, size, self._seen.get(witness, previous))
                if signature is not None:
                    note = note.with_signature(signature)
            self.audit.store_checkpoint(note)
            return note

    def _cosign(
        self, witness: str, note: SignedNote, size: int, from_size: int
    ) -> NoteSignature | None:
        if self.transport is None:
            return None
        for _attempt in range(2):
            from_size = min(from_size, size)
            request = {
                "note": note.text(),
                "from_size": from_size,
                "consistency_path": [h.hex() for h in self.audit.consistency_proof(from_size, size)]
                if from_size
                else [],
            }
            try:
                status, body = self.transport.cosign(witness, request, self.timeout)
            except DepartmentUnavailable:
                log.warning("witness %s unreachable", witness)
                return None
            reply = _json(body)
            if status == 200:
                return self._accept(witness, note, size, reply)
            last = reply.get("last_size")
            if reply.get("reason") == "need-proof" and isinstance(last, int) and last <= size:
                from_size = last
                continue
            log.error("witness %s refused: %s", witness, reply.get("detail", status))
            return None
        return None

    def _accept(
        self, witness: str, note: SignedNote, size: int, reply: Mapping[str, object]
    ) -> NoteSignature | None:
        line = reply.get("cosignature")
        try:
            signature = SignedNote.parse(note.body + "\n" + str(line)).signatures[0]
        except NoteError:
            log.error("witness %s returned a malformed cosignature", witness)
            return None
        if signature.name != witness or not signature.verifies(note.body, self.witnesses[witness]):
            log.error("witness %s returned a cosignature that does not verify", witness)
            return None
        self._seen[witness] = size
        return signature


def _json(body: bytes) -> dict[str, object]:
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
