"""Run a WSGI app on loopback until SIGTERM or Ctrl-C, then stop cleanly."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from flask import Flask
from werkzeug.serving import make_server

__all__ = ["serve"]


def serve(app: Flask, host: str, port: int, name: str) -> None:
    server = make_server(host, port, app, threaded=True)
    log = logging.getLogger("tongban")
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        if not stopping.is_set():
            stopping.set()
            # shutdown() blocks until serve_forever returns, so call it off this thread.
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("%s listening on http://%s:%d", name, host, server.server_port)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
