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

    gunicorn -w 1 --threads 32 -k tongban.gunicorn_worker.DeadlineThreadWorker \\
        'tongban.wsgi:gateway()'
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker  # type: ignore[import-untyped]

from .config import Settings

__all__ = ["DeadlineThreadWorker"]

_REAP_EVERY = 0.25


class DeadlineThreadWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn is untyped (Any)
    def init_process(self) -> None:
        self.read_timeout = Settings.from_env().request_read_timeout
        self._deadlines: dict[socket.socket, float] = {}
        self._deadline_lock = threading.Lock()
        threading.Thread(target=self._reap, name="slow-client-reaper", daemon=True).start()
        super().init_process()  # runs the worker's loop; returns only when it stops

    def handle(self, conn: Any) -> Any:
        sock = conn.sock
        with self._deadline_lock:
            self._deadlines[sock] = time.monotonic() + self.read_timeout
        try:
            return super().handle(conn)
        finally:
            with self._deadline_lock:
                self._deadlines.pop(sock, None)

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
