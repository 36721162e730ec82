"""Coalescing: concurrent single checks that need the same predicate from the same
department share one signed batch request.

Every request to a department costs four SM2 operations (the gateway signs, the adapter
verifies, signs its answer, the gateway verifies). Under load many checks ask the same
department the same predicate at the same moment; the first to arrive becomes the leader
and sends whatever has queued — its own subject and everyone who arrived meanwhile — as
one batch, so the signatures are shared. At low load a batch is just one subject, so no
one ever waits for a timer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tongban.primitives.wire import Tri

from .protocol import MAX_BATCH

__all__ = ["Coalescer"]

BatchFn = Callable[[str, str, Mapping[str, str], list[str]], list[Tri]]


class _Slot:
    __slots__ = ("error", "lock", "result")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.result = Tri.UNKNOWN
        self.error: BaseException | None = None


@dataclass
class _Lane:
    waiting: list[tuple[str, _Slot]] = field(default_factory=list)
    busy: bool = False


class Coalescer:
    def __init__(self, send_batch: BatchFn) -> None:
        self._send = send_batch
        self._lanes: dict[tuple[str, str, tuple[tuple[str, str], ...]], _Lane] = {}
        self._lock = threading.Lock()

    def evaluate(
        self, department: str, predicate: str, params: Mapping[str, str], subject: str
    ) -> Tri:
        key = (department, predicate, tuple(sorted(params.items())))
        slot = _Slot()
        with self._lock:
            lane = self._lanes.setdefault(key, _Lane())
            lane.waiting.append((subject, slot))
            leader = not lane.busy
            if leader:
                lane.busy = True
        if leader:
            self._lead(lane, department, predicate, params)
        slot.lock.acquire()
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _lead(
        self, lane: _Lane, department: str, predicate: str, params: Mapping[str, str]
    ) -> None:
        while True:
            with self._lock:
                batch, lane.waiting = lane.waiting[:MAX_BATCH], lane.waiting[MAX_BATCH:]
                if not batch:
                    lane.busy = False
                    return
            subjects = list(dict.fromkeys(s for s, _ in batch))
            try:
                results = dict(
                    zip(subjects, self._send(department, predicate, params, subjects), strict=True)
                )
            except BaseException as exc:  # every waiter learns why, none hangs
                for _, slot in batch:
                    slot.error = exc
                    slot.lock.release()
                continue
            for subject, slot in batch:
                slot.result = results[subject]
                slot.lock.release()
