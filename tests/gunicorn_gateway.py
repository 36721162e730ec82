"""The gateway as production runs it, for tests: real gunicorn with tongban's deadline
worker over ``tongban.wsgi:gateway()``, on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tongban.config import Settings
from tongban.provision import migrate

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def gunicorn_gateway(
    data: Path, *, threads: int, env: Mapping[str, str] | None = None
) -> Iterator[int]:
    """Serve the gateway of data directory ``data`` (keys made beforehand) with one worker
    of ``threads`` threads; yields its port once ``/healthz`` answers 200. What gunicorn
    and the app log goes to ``data/gunicorn.log``."""
    with gunicorn_gateway_process(data, threads=threads, env=env) as (port, _):
        yield port


@contextlib.contextmanager
def gunicorn_gateway_process(
    data: Path,
    *,
    threads: int,
    workers: int = 1,
    config: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """:func:`gunicorn_gateway` with ``workers`` workers and gunicorn's ``-c config``
    (``python:tongban.gunicorn_conf``: the shipped one) if given; yields the port and the
    gunicorn master."""
    port = free_port()
    full_env = {
        **os.environ,
        "TONGBAN_DATA_DIR": str(data),
        "TONGBAN_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "TONGBAN_CHECKPOINT_INTERVAL": "3600",
        **(env or {}),
    }
    migrate(Settings.from_env(full_env))  # the deployment's `tongban db upgrade`
    gunicorn = Path(sys.executable).parent / "gunicorn"
    log = (data / "gunicorn.log").open("wb")
    options = ["-c", config] if config is not None else []
    proc = subprocess.Popen(
        [str(gunicorn), *options, "-w", str(workers), "--threads", str(threads),
         "-k", "tongban.gunicorn_worker.DeadlineThreadWorker",
         "-b", f"127.0.0.1:{port}", "tongban.wsgi:gateway()"],
        env=full_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _healthy(port):
            assert proc.poll() is None, (data / "gunicorn.log").read_text()[-3000:]
            if time.monotonic() > deadline:
                pytest.fail("gunicorn did not come up")
            time.sleep(0.2)
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
