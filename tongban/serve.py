"""Run a WSGI app until SIGTERM or Ctrl-C, then stop cleanly; over TLS when given a context.

Request lines go to the ``werkzeug`` logger with the target masked
(:func:`tongban.access_log.mask_target`: no query string, no ID-shaped digits) and without
werkzeug's ANSI colours.

With ``tls`` (an adapter's :func:`tongban.tls.server_context`, or the requester side's
context), the listening socket stays a plain one and every connection's TLS handshake
runs in that connection's own thread, within :data:`~tongban.tls.HANDSHAKE_TIMEOUT`
seconds, so a client that never finishes its handshake holds one thread, not the accept
loop. A handshake that fails, plain HTTP sent to the TLS port, no client certificate, one
from another CA, one naming another party than the pinned one, an expired one, is refused
(the connection dropped, nothing answered) and logged on ``tongban.tls`` as one line
saying which certificate and why (:func:`tongban.tls.describe_tls_error`).

Idle keep-alive connections are closed after :data:`KEEPALIVE_TIMEOUT` seconds (the
gateway's department client drops its own idle connections sooner, adapters/client.py).
"""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import threading
from types import FrameType
from typing import Any

from flask import Flask
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from .access_log import mask_target
from .boundary import CommandFailed, scrub
from .tls import HANDSHAKE_TIMEOUT, describe_tls_error

__all__ = ["KEEPALIVE_TIMEOUT", "Server", "check_can_listen", "make_server", "serve"]

#: Seconds an idle keep-alive connection stays open on the server (also the longest
#: wait for one read or write of a request in progress).
KEEPALIVE_TIMEOUT = 5.0

log = logging.getLogger("tongban")
tls_log = logging.getLogger("tongban.tls")


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


class _Handler(WSGIRequestHandler):
    """werkzeug's handler with HTTP/1.1 keep-alive closed after the server's timeout; the
    close of an idle connection is not an error worth a log line."""

    protocol_version = "HTTP/1.1"
    timeout = KEEPALIVE_TIMEOUT

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """werkzeug's request line with the target masked (:func:`mask_target`): no query
        string and no ID-shaped digits reach the log, whatever the client put in the URL."""
        target = mask_target(getattr(self, "path", "") or "")
        line = f"{self.command} {target} {self.request_version}"
        self.log("info", '"%s" %s %s', line.translate(self._control_char_table), code, size)

    def log_error(self, format: str, *args: Any) -> None:
        if format.startswith("Request timed out"):
            return  # an idle keep-alive connection reached KEEPALIVE_TIMEOUT
        super().log_error(format, *args)


class Server(ThreadedWSGIServer):
    """werkzeug's threaded server, with the TLS handshake and its refusals per connection."""

    def __init__(
        self,
        host: str,
        port: int,
        app: Any,
        *,
        tls: ssl.SSLContext | None = None,
        name: str = "server",
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        # StreamRequestHandler applies its class's timeout to the connection's socket.
        handler = type("Handler", (_Handler,), {"timeout": keepalive_timeout})
        super().__init__(host, port, app, handler=handler)
        # werkzeug reads ssl_context for wsgi.url_scheme ("https") and SSL_CLIENT_CERT; the
        # listening socket is not wrapped (werkzeug would shake hands in the accept loop).
        self.ssl_context = tls
        self.tls = tls
        self.name = name
        self.keepalive_timeout = keepalive_timeout
        self.handshake_timeout = handshake_timeout
        self.refusals = 0

    def _handshake(self, request: socket.socket, address: Any) -> ssl.SSLSocket | None:
        assert self.tls is not None
        conn: ssl.SSLSocket | None = None
        try:
            request.settimeout(self.handshake_timeout)
            conn = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
            conn.do_handshake()
            conn.settimeout(None)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.refusals += 1
            if conn is not None:
                conn.close()
            reason = describe_tls_error(exc, whose="the client's certificate")
            quiet = isinstance(exc, TimeoutError | ConnectionError) and not isinstance(
                exc, ssl.SSLError
            )
            where = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "a client"
            tls_log.log(
                logging.INFO if quiet else logging.WARNING,
                "%s refused a TLS connection from %s: %s",
                self.name,
                where,
                scrub(reason),
            )
            return None
        return conn

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        conn = self._handshake(request, client_address)
        if conn is None:
            return
        try:
            handler: Any = self.RequestHandlerClass
            handler(conn, client_address, self)
        finally:
            self.shutdown_request(conn)


def make_server(
    host: str,
    port: int,
    app: Any,
    *,
    tls: ssl.SSLContext | None = None,
    name: str = "server",
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
) -> Server:
    """A threaded server for ``app`` on ``host:port`` (0: any free port), HTTPS with
    ``tls``; call ``serve_forever()`` (tests run it in a thread)."""
    return Server(host, port, app, tls=tls, name=name, keepalive_timeout=keepalive_timeout)


def serve(
    app: Flask, host: str, port: int, name: str, *, tls: ssl.SSLContext | None = None
) -> None:
    """Serve ``app`` until SIGTERM or Ctrl-C; over TLS with ``tls`` (see the module)."""
    check_can_listen(host, port, name)
    try:
        server = make_server(host, port, app, tls=tls, name=name)
    except (SystemExit, OSError) as exc:  # lost a race for the port since the check
        raise CommandFailed(f"{name} cannot listen on {host}:{port}") from exc
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        if not stopping.is_set():
            stopping.set()
            # shutdown() blocks until serve_forever returns, so call it off this thread.
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheme = "http" if tls is None else "https"
    log.info("%s listening on %s://%s:%d", name, scheme, host, server.server_port)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
