"""Slow clients (slowloris) against the production server: real gunicorn, gthread, with
tongban's deadline worker, on a loopback port. Clients dribbling their headers or body a
byte at a time must not stop other requests being served, and are cut off after
``TONGBAN_REQUEST_READ_TIMEOUT``."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tongban.keys import KeyRing

from .gunicorn_gateway import gunicorn_gateway

READ_TIMEOUT = 2.0
THREADS = 8
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    data = tmp_path_factory.mktemp("slow-clients")
    KeyRing(data / "keys").ensure("gateway")
    env = {"TONGBAN_REQUEST_READ_TIMEOUT": str(READ_TIMEOUT)}
    with gunicorn_gateway(data, threads=THREADS, env=env) as port:
        yield port


def _get(port: int, path: str = "/healthz") -> tuple[int | str, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            resp.read()
            return resp.status, time.monotonic() - started
    except OSError as exc:
        return type(exc).__name__, time.monotonic() - started


class Slowloris(threading.Thread):
    """Sends a request one byte every ``gap`` seconds; records when the server cut it."""

    HEAD = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"a" * 200
    BODY = (b"POST /v1/checks HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200\r\n\r\n" + b" " * 200)  # fmt: skip

    def __init__(self, port: int, data: bytes, gap: float = 0.2, give_up: float = 20) -> None:
        super().__init__(daemon=True)
        self.port, self.data, self.gap, self.give_up = port, data, gap, give_up
        self.cut_after: float | None = None
        self.connected = threading.Event()

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port)) as conn:
            self.connected.set()
            started = time.monotonic()
            try:
                for i in range(len(self.data)):
                    conn.sendall(self.data[i : i + 1])
                    time.sleep(self.gap)
                    if time.monotonic() - started > self.give_up:
                        return
                    conn.setblocking(False)
                    try:
                        if conn.recv(1) == b"":  # the server closed on us
                            raise ConnectionResetError
                    except BlockingIOError:
                        pass
                    finally:
                        conn.setblocking(True)
            except OSError:
                self.cut_after = time.monotonic() - started


def _attack(port: int, count: int) -> list[Slowloris]:
    clients = [Slowloris(port, Slowloris.HEAD if i % 2 else Slowloris.BODY) for i in range(count)]
    for c in clients:
        c.start()
    for c in clients:
        assert c.connected.wait(5)
    time.sleep(0.5)  # let them all reach a worker thread
    return clients


def test_normal_requests_are_served_while_slow_clients_hold_connections(server: int):
    clients = _attack(server, THREADS - 2)

    latencies = []
    for _ in range(10):
        status, seconds = _get(server)
        assert status == 200
        latencies.append(seconds)
        time.sleep(0.1)

    assert max(latencies) < 1.0, latencies
    for c in clients:
        c.join(timeout=READ_TIMEOUT + 10)
    cut = [c.cut_after for c in clients]
    assert all(t is not None and t <= READ_TIMEOUT + 3 for t in cut), cut


def test_more_slow_clients_than_threads_delay_others_at_most_one_deadline(server: int):
    clients = _attack(server, THREADS + 4)

    status, seconds = _get(server)

    assert status == 200
    assert seconds <= READ_TIMEOUT + 2.5, seconds  # stock gthread: until the client finishes
    for c in clients:
        c.join(timeout=2 * READ_TIMEOUT + 10)
    assert all(c.cut_after is not None for c in clients)
