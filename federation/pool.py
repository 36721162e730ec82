"""A background pool of Paillier obfuscators ``r^n mod n^2``.

Encrypting ``m`` under ``n`` with ``g = n + 1`` is ``(1 + m*n) * r^n mod n^2``. The factor
``r^n`` does not depend on ``m``, and it is the only expensive part: one 2048-bit exponent
modulo a 4096-bit number. Computing those ahead of time moves all exponentiations to an
offline phase, and the online phase (when a job arrives) becomes one multiplication per
ciphertext.

Why threads and not processes: gmpy2 >= 2.1 releases the GIL inside ``powmod`` when the
calling thread's context has ``allow_release_gil=True`` (the flag is per thread, so each
worker sets it). On the 2-core bench machine two such threads give about 2x one thread (noisy runs),
so threads use both cores without pickling 4096-bit integers across process boundaries or
forking a server process. ``bench/bench_paillier.py`` re-measures the speed-up every run.

Each obfuscator is used once: reusing ``r^n`` for two ciphertexts would let anyone divide
them and learn ``(1 + (m1 - m2) n)``, i.e. the difference of the two plaintexts.
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from types import TracebackType
from typing import Any

import gmpy2

__all__ = ["ObfuscatorPool", "PoolClosed", "random_obfuscator"]


class PoolClosed(RuntimeError):
    """The pool was closed, or a worker died, while a caller waited for an obfuscator."""


def random_obfuscator(n: Any, nsquare: Any) -> Any:
    """One fresh ``r^n mod n^2`` (an ``mpz``) with ``r`` uniform in ``Z_n^*``.

    ``r`` comes from :mod:`secrets` (the OS CSPRNG); an ``r`` sharing a factor with ``n``
    would factor the key, so it is astronomically unlikely, but checking costs one gcd.
    """
    while True:
        r = gmpy2.mpz(secrets.randbelow(int(n) - 1) + 1)
        if gmpy2.gcd(r, n) == 1:
            return gmpy2.powmod(r, n, nsquare)


class ObfuscatorPool:
    """Keeps up to ``size`` obfuscators for one public key, refilled by ``workers`` threads.

    ``take()`` blocks while the pool is empty; each take wakes the workers to replace what
    was taken. Use as a context manager, or call :meth:`close`, to stop the workers.
    """

    def __init__(self, public_key: Any, size: int, workers: int = 2) -> None:
        if type(size) is not int or size < 1:
            raise ValueError("size: expected a positive integer")
        if type(workers) is not int or workers < 1:
            raise ValueError("workers: expected a positive integer")
        self.public_key = public_key
        self.size = size
        self._n = gmpy2.mpz(public_key.n)
        self._nsquare = gmpy2.mpz(public_key.nsquare)
        self._items: deque[Any] = deque()
        self._in_flight = 0
        self._closed = False
        self._error: BaseException | None = None
        self._produced = 0
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, name=f"obfuscator-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    # -- workers ---------------------------------------------------------------------------

    def _work(self) -> None:
        # Per-thread context flag: without it every powmod would hold the GIL.
        gmpy2.get_context().allow_release_gil = True
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(
                        lambda: self._closed or len(self._items) + self._in_flight < self.size
                    )
                    if self._closed:
                        return
                    self._in_flight += 1
                value = random_obfuscator(self._n, self._nsquare)  # outside the lock
                with self._cond:
                    self._in_flight -= 1
                    self._items.append(value)
                    self._produced += 1
                    self._cond.notify_all()
        except BaseException as exc:  # surfaced to takers as PoolClosed, never a silent hang
            with self._cond:
                self._error = exc
                self._closed = True
                self._cond.notify_all()

    # -- consumers -------------------------------------------------------------------------

    def take_mpz(self, timeout: float | None = None) -> Any:
        """One obfuscator as a gmpy2 ``mpz`` (saves a conversion on the hot path)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                raise TimeoutError("obfuscator pool: none available in time")
            if not self._items:
                raise PoolClosed("obfuscator pool is closed") from self._error
            value = self._items.popleft()
            self._cond.notify_all()
        return value

    def take(self, timeout: float | None = None) -> int:
        """One obfuscator ``r^n mod n^2``, never handed out twice; blocks while empty."""
        return int(self.take_mpz(timeout))

    def available(self) -> int:
        """Obfuscators ready now."""
        with self._cond:
            return len(self._items)

    @property
    def produced(self) -> int:
        """Obfuscators computed since the pool started (shows that refilling happens)."""
        with self._cond:
            return self._produced

    def wait_full(self, timeout: float | None = None) -> bool:
        """Block until ``size`` obfuscators are ready; ``False`` on timeout or close."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or len(self._items) >= self.size, timeout)
            return not self._closed and len(self._items) >= self.size

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the workers (each finishes at most its current exponentiation)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> ObfuscatorPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
