"""Replay caches: remember a token id until its expiry, refuse to see it twice."""

from __future__ import annotations

import heapq
import threading
import time
from typing import Protocol

__all__ = ["MemoryReplayCache", "ReplayCache"]


class ReplayCache(Protocol):
    def first_use(self, jti: str, expires_at: float) -> bool:
        """Record ``jti``; False if it was already recorded and has not expired."""
        ...


class MemoryReplayCache:
    """Process-local, thread-safe, bounded by expiry. Enough for one adapter process; the
    multi-worker gateway uses a database-backed cache with the same interface."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._seen: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._max = max_entries

    def first_use(self, jti: str, expires_at: float) -> bool:
        now = time.time()
        with self._lock:
            while self._expiry and self._expiry[0][0] < now:
                _, old = heapq.heappop(self._expiry)
                if self._seen.get(old, now + 1) < now:
                    del self._seen[old]
            if jti in self._seen:
                return False
            if len(self._seen) >= self._max:
                # Refusing is safe; forgetting an unexpired id would allow a replay.
                return False
            self._seen[jti] = expires_at
            heapq.heappush(self._expiry, (expires_at, jti))
            return True
