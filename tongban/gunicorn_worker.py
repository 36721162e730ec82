"""A gunicorn gthread worker that cuts off slow clients.

Stock gthread hands a connection to a pool thread as soon as its first byte arrives; the
thread then reads the request head and body with blocking reads and no overall deadline,
so a few clients dribbling one byte a second (slowloris) hold every thread and the
gateway stops answering. This worker gives each request a deadline
(``Settings.request_read_timeout``, ``TONGBAN_REQUEST_READ_TIMEOUT``, default 10 s) from
the moment a thread takes it: a reaper thread shuts the read side of a socket whose
request is still being handled at its deadline, the blocked read returns end-of-file,
gunicorn drops the connection and the thread is free again. A response already being
computed or written is unaffected (only reading is shut); the connection is then not
kept alive.

It also honours connection holds (:mod:`tongban.holds`): when a response asked for one
(a throttled token request), the kept-alive connection goes back to the poller only when
the hold ends, so its next request waits on the client's side and holds no thread; and
a new connection from an address under a hold is accepted but not read before the hold
ends.

    gunicorn -w 1 --threads 32 -k tongban.gunicorn_worker.DeadlineThreadWorker \\
        'tongban.wsgi:gateway()'
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from concurrent import futures
from typing import Any

from gunicorn.workers.gthread import ThreadWorker  # type: ignore[import-untyped]

from .config import Settings
from .holds import source_held_until, take_hold

__all__ = ["DeadlineThreadWorker"]

_REAP_EVERY = 0.25


class DeadlineThreadWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn is untyped (Any)
    def init_process(self) -> None:
        self.read_timeout = Settings.from_env().request_read_timeout
        self._deadlines: dict[socket.socket, float] = {}
        self._deadline_lock = threading.Lock()
        self._hold_until: dict[Any, float] = {}  # set by pool threads, read by the loop
        # The loop's only: (until, n, conn, new): a kept-alive connection, or a new one.
        self._held: list[tuple[float, int, Any, bool]] = []
        self._held_order = itertools.count()
        threading.Thread(target=self._reap, name="slow-client-reaper", daemon=True).start()
        super().init_process()  # runs the worker's loop; returns only when it stops

    def handle(self, conn: Any) -> Any:
        sock = conn.sock
        take_hold()  # a request this thread served under another server asked nothing
        with self._deadline_lock:
            self._deadlines[sock] = time.monotonic() + self.read_timeout
        try:
            result = super().handle(conn)
        finally:
            with self._deadline_lock:
                self._deadlines.pop(sock, None)
        hold = take_hold()
        if hold > 0 and result is True:  # kept alive (not closed, not deferred)
            with self._deadline_lock:
                self._hold_until[conn] = time.monotonic() + hold
        return result

    def finish_request(self, conn: Any, fs: Any) -> None:
        """The main loop's turn for a finished request: a held connection waits in
        ``_held`` instead of going back to the poller."""
        with self._deadline_lock:
            until = self._hold_until.pop(conn, None)
        if until is not None and self.alive and not fs.cancelled() and fs.result() is True:
            heapq.heappush(self._held, (until, next(self._held_order), conn, False))
            return
        super().finish_request(conn, fs)

    def enqueue_req(self, conn: Any) -> None:
        """A new connection from a held address waits in ``_held`` (on the loop's
        thread: gthread enqueues from there only)."""
        if not conn.initialized and self.alive and isinstance(conn.client, tuple):
            until = source_held_until(str(conn.client[0]))
            if until > time.monotonic():
                heapq.heappush(self._held, (until, next(self._held_order), conn, True))
                return
        super().enqueue_req(conn)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        if self._held:
            timeout = max(0.0, min(timeout, self._held[0][0] - time.monotonic()))
        super().wait_for_and_dispatch_events(timeout)
        self._release_held()

    def _release_held(self) -> None:
        """Connections whose hold has ended (all of them once the worker stops) go on: a
        new one to a thread, a kept-alive one the ordinary keep-alive way (back to the
        poller, or straight to a thread when its next request was read ahead)."""
        now = time.monotonic()
        while self._held and (self._held[0][0] <= now or not self.alive):
            _, _, conn, new = heapq.heappop(self._held)
            if new:
                super().enqueue_req(conn)
                continue
            kept: futures.Future[bool] = futures.Future()
            kept.set_result(True)
            super().finish_request(conn, kept)

    def _reap(self) -> None:
        while True:
            time.sleep(_REAP_EVERY)
            now = time.monotonic()
            with self._deadline_lock:
                late = [s for s, deadline in self._deadlines.items() if deadline <= now]
                for sock in late:
                    del self._deadlines[sock]
            for sock in late:
                with contextlib.suppress(OSError):  # already closed by its own thread
                    sock.shutdown(socket.SHUT_RD)
