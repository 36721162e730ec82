"""Signed, witnessed checkpoints of the audit log, produced every few seconds.

The gateway signs a checkpoint of the current tree and asks each department adapter to
cosign it. A witness that last saw size m gets a consistency proof from m; if it says it
saw another size (after a restart on either side) the request is retried once from there.
A witness that refuses or is down leaves its signature off this checkpoint; the refusal
reason is logged, since a refusal is evidence of a split view or rollback.

Every gunicorn worker runs a checkpointer over the one shared log. Rounds are serialised
across processes (a PostgreSQL advisory lock, or a file lock beside a SQLite store), and
each round signs the size it reads under that lock, so checkpoint sizes only grow and a
witness never sees one worker's older tree after another's newer one. The background
loop skips a round that another worker is running instead of queueing behind it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from tongban.adapters.client import Transport, cosign
from tongban.audit.log import AuditLog
from tongban.audit.note import Checkpoint, NoteError, NoteSignature, SignedNote, sign_line
from tongban.primitives.errors import DepartmentUnavailable
from tongban.primitives.gm import SM2PrivateKey, SM2PublicKey

__all__ = ["Checkpointer", "default_quorum"]

log = logging.getLogger("tongban.checkpoints")
_PG_ROUND_LOCK = 0x7B_C4EC  # advisory lock id: one checkpoint round at a time, all workers
# Refusals that mean the witness saw another log than ours: never retried, never ignored.
_DIVERGED = frozenset({"rollback", "split-view", "inconsistent"})


def default_quorum(witnesses: int) -> int:
    """Cosignatures a checkpoint needs to count as witnessed, unless configured: a majority."""
    return witnesses // 2 + 1


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
        quorum: int | None = None,
    ) -> None:
        self.audit = audit
        self.key = key
        self.name = name
        self.witnesses = dict(witnesses)
        self.transport = transport
        self.interval = interval
        self.timeout = timeout
        # Cosignatures a checkpoint needs to count as witnessed: by default a majority.
        self.quorum = quorum if quorum else default_quorum(len(self.witnesses))
        #: Why the log is not what the witnesses saw (None while it is): a witness that
        #: cosigned a larger tree, or another root at the same size. Sticky until restart.
        self.diverged: str | None = None
        self._seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        # Ask every witness now, even if the stored checkpoint looks complete: a log whose
        # tail was cut together with its checkpoints is caught only by a witness that
        # remembers the larger tree.
        self.checkpoint(force=True)
        self._thread = threading.Thread(target=self._loop, name="checkpointer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._round(force=False, wait=False)
            except Exception:  # a failed round must not end checkpointing
                log.exception("checkpoint round failed")

    def checkpoint(self, *, force: bool = False) -> SignedNote:
        """Sign the current tree, gather cosignatures, store and return the note."""
        note = self._round(force=force, wait=True)
        assert note is not None  # a waiting round always runs
        return note

    def _round(self, *, force: bool, wait: bool) -> SignedNote | None:
        with self._lock, self._exclusive(wait) as mine:
            if not mine:
                return None  # another worker is checkpointing this very moment
            return self._round_locked(force)

    @contextlib.contextmanager
    def _exclusive(self, wait: bool) -> Iterator[bool]:
        """Hold the cross-process round lock; yield False if ``wait`` is off and it is
        taken. In-memory SQLite lives in one process, so the thread lock suffices."""
        if self.audit.dialect == "postgresql":
            # A transaction-scoped lock: a worker killed mid-round releases it with its
            # connection, so a crash never wedges checkpointing.
            with self.audit.engine.connect() as conn, conn.begin():
                fn = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
                got = conn.execute(text(f"SELECT {fn}(:k)"), {"k": _PG_ROUND_LOCK}).scalar()
                yield wait or bool(got)
            return
        database = make_url(self.audit.url).database
        if self.audit.dialect != "sqlite" or database in (None, "", ":memory:"):
            yield True
            return
        with Path(f"{database}.checkpoint-lock").open("a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _round_locked(self, force: bool) -> SignedNote:
        size = self.audit.refresh()
        latest = self.audit.latest_checkpoint()
        signed = {s.name for s in latest.signatures} if latest is not None else set()
        complete = signed >= set(self.witnesses) or self.transport is None
        if latest is not None and latest.checkpoint.size == size and not force and complete:
            return latest
        # Otherwise a new size, or the same tree some witness has not cosigned yet (it was
        # down): sign and ask again.
        root = self.audit.root(size)
        body = Checkpoint(self.audit.origin, size, root).body()
        note = SignedNote(body, (sign_line(body, self.name, self.key),))
        previous = latest.checkpoint.size if latest is not None else 0
        for witness in self.witnesses:
            # A witness that cosigned the latest stored checkpoint (perhaps for another
            # worker) saw that size; otherwise start from what it last told us.
            seen = previous if witness in signed else self._seen.get(witness, previous)
            signature = self._cosign(witness, note, size, seen)
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
                status, body = cosign(self.transport, witness, request, self.timeout)
            except DepartmentUnavailable:
                log.warning("witness %s unreachable", witness)
                return None
            reply = _json(body)
            if status == 200:
                return self._accept(witness, note, size, reply)
            last = reply.get("last_size")
            reason = reply.get("reason")
            if reason == "need-proof" and isinstance(last, int) and last <= size:
                from_size = last
                continue
            log.error("witness %s refused: %s", witness, reply.get("detail", status))
            if reason in _DIVERGED or (reason == "need-proof" and isinstance(last, int)):
                self._diverged(witness, str(reason), last, size)
            return None
        return None

    def _diverged(self, witness: str, reason: str, last: object, size: int) -> None:
        if isinstance(last, int) and last > size:
            detail = f"witness {witness} cosigned {last} entries, the log has {size}"
        elif reason == "split-view" and isinstance(last, int):
            detail = f"witness {witness} cosigned another tree of {last} entries (split view)"
        else:
            detail = f"witness {witness} refused the log ({reason})"
        if self.diverged is None:
            log.critical("audit log behind its witnesses: %s; refusing to serve", detail)
        self.diverged = self.diverged or detail

    def status(self) -> dict[str, object]:
        """The latest checkpoint as officers and metrics see it: its size, who cosigned,
        whether that meets the quorum, and whether the log diverged from a witness."""
        latest = self.audit.latest_checkpoint()
        cosigners = (
            sorted(s.name for s in latest.signatures if s.name in self.witnesses)
            if latest is not None
            else []
        )
        return {
            "size": latest.checkpoint.size if latest is not None else 0,
            "cosigners": cosigners,
            "quorum": self.quorum,
            "witnessed": len(cosigners) >= self.quorum,
            "diverged": self.diverged,
        }

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
