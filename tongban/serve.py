"""Run a WSGI app on loopback until SIGTERM or Ctrl-C, then stop cleanly.

Request lines go to the ``werkzeug`` logger; the command line's handler
(:func:`tongban.boundary.configure_logging`) strips werkzeug's ANSI colours from them
unless stderr is a terminal."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from types import FrameType

from flask import Flask
from werkzeug.serving import make_server

from .boundary import CommandFailed

__all__ = ["serve"]


def check_can_listen(host: str, port: int, name: str) -> None:
    """Raise CommandFailed (one line) if ``host:port`` cannot be bound, before werkzeug
    tries: it prints its own two lines and exits instead of raising."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug does
            probe.bind(address)
    except OSError as exc:  # the port is taken, or the address is not this host's
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise CommandFailed(
            f"{name} cannot listen on {host}:{port}: {reason} (pass another --port)"
        ) from exc


def serve(app: Flask, host: str, port: int, name: str) -> None:
    check_can_listen(host, port, name)
    try:
        server = make_server(host, port, app, threaded=True)
    except SystemExit as exc:  # lost a race for the port since the check
        raise CommandFailed(f"{name} cannot listen on {host}:{port}") from exc
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
