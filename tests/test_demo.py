"""``tongban demo`` as a real process tree: it comes up, reports healthy, and leaves nothing
behind — neither on SIGTERM nor when the supervisor itself is killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tongban.config import DEPARTMENTS

pytestmark = pytest.mark.slow

STARTUP = 90.0  # seconds: generation of 1,500 citizens plus six processes starting
POLL = 0.2


@dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log: Path
    port: int

    def tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-3000:]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes_mentioning(needle: str) -> list[int]:
    """Live processes (zombies have an empty cmdline) whose command line contains needle."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone while we looked, or not ours to read
            continue
        if needle.encode() in cmdline:
            found.append(int(entry.name))
    return found


@contextmanager
def _demo(tmp_path: Path) -> Iterator[Demo]:
    data_dir = (tmp_path / "demo-data").resolve()
    log = tmp_path / "demo.log"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    argv = [
        sys.executable,
        "-m",
        "tongban",
        "demo",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--population",
        "1500",
        "--seed",
        "5",
    ]
    with log.open("wb") as out:
        # A session of its own: the supervisor and every child share one process group,
        # which teardown can kill in one call whatever state the test left them in.
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield Demo(proc, data_dir, log, port)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        for pid in _processes_mentioning(str(data_dir)):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _wait_until_up(demo: Demo) -> dict[str, Any]:
    """Poll until demo.json exists and the gateway reports all five departments reachable."""
    deadline = time.monotonic() + STARTUP
    manifest = demo.data_dir / "demo.json"
    last: object = None
    with httpx.Client(trust_env=False, timeout=2.0) as http:
        while time.monotonic() < deadline:
            code = demo.proc.poll()
            assert code is None, f"demo exited with {code}:\n{demo.tail()}"
            if manifest.exists():
                doc: dict[str, Any] = json.loads(manifest.read_text(encoding="utf-8"))
                try:
                    health = http.get(f"{doc['gateway']}/healthz").json()
                except httpx.HTTPError as exc:
                    last = exc
                else:
                    last = health
                    reachable = {
                        name for name, r in health.get("departments", {}).items() if r["reachable"]
                    }
                    if health.get("status") == "ok" and reachable == set(DEPARTMENTS):
                        return doc
            time.sleep(POLL)
    pytest.fail(f"demo not healthy within {STARTUP:.0f} s (last: {last!r}):\n{demo.tail()}")


def test_demo_comes_up_and_stops_cleanly_on_sigterm(tmp_path: Path):
    with _demo(tmp_path) as demo:
        doc = _wait_until_up(demo)

        assert {"gateway", "adapters", "clients"} <= set(doc)
        assert doc["gateway"] == f"http://127.0.0.1:{demo.port}"
        assert set(doc["adapters"]) == set(DEPARTMENTS)
        assert len(set(doc["adapters"].values())) == len(DEPARTMENTS)
        assert isinstance(doc["clients"], dict)
        assert (demo.data_dir / "truth.jsonl").is_file()
        assert len(_processes_mentioning(str(demo.data_dir))) >= 1 + len(DEPARTMENTS) + 1
        # The gateway runs as production does: gunicorn with the read-deadline worker.
        cmdlines = [
            Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            for pid in _processes_mentioning(str(demo.data_dir))
        ]
        assert any(b"tongban.gunicorn_worker.DeadlineThreadWorker" in c for c in cmdlines)
        # The gateway's access log (gunicorn) names the path, never the query string.
        assert (
            httpx.get(doc["gateway"] + "/no-such-page?subject=1", trust_env=False).status_code
            == 404
        )

        demo.proc.send_signal(signal.SIGTERM)
        code = demo.proc.wait(timeout=15)

        assert code == 0, demo.tail()
        assert _processes_mentioning(str(demo.data_dir)) == []
        assert "demo stopped" in demo.tail()
        log = demo.log.read_text(encoding="utf-8", errors="replace")
        assert '"GET /no-such-page HTTP/1.1" 404' in log
        assert "subject=1" not in log
        assert "\x1b[" not in log


def test_children_die_with_a_killed_supervisor(tmp_path: Path):
    with _demo(tmp_path) as demo:
        _wait_until_up(demo)
        children = [p for p in _processes_mentioning(str(demo.data_dir)) if p != demo.proc.pid]
        # Five adapters, and the gateway's gunicorn master and its worker.
        assert len(children) == len(DEPARTMENTS) + 2

        demo.proc.kill()  # SIGKILL: the supervisor gets no chance to clean up
        demo.proc.wait(timeout=5)

        deadline = time.monotonic() + 5.0
        while (alive := _processes_mentioning(str(demo.data_dir))) and time.monotonic() < deadline:
            time.sleep(POLL)
        assert alive == [], f"orphans survived: {alive}"


def _audit_verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    return subprocess.run(
        [sys.executable, "-m", "tongban", "audit", "verify", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_a_restart_on_another_port_keeps_the_log_and_the_credentials(tmp_path: Path):
    """`tongban demo --port A`, stop, `tongban demo --port B` on the same data directory:
    the log keeps the origin it was created with (every checkpoint is for one log, and the
    witnesses keep cosigning), and no requester's secret changes."""
    docs = []
    for _ in range(2):
        with _demo(tmp_path) as demo:
            docs.append(_wait_until_up(demo))
            demo.proc.send_signal(signal.SIGTERM)
            assert demo.proc.wait(timeout=15) == 0, demo.tail()

    first, second = docs
    assert first["gateway"] != second["gateway"]
    assert second["clients"] == first["clients"]
    stored = json.loads((tmp_path / "demo-data" / "clients.json").read_text(encoding="utf-8"))
    assert stored["clients"] == first["clients"]
    proc = _audit_verify(tmp_path / "demo-data")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["ok"] is True and summary["findings"] == []
    # Each run's first checkpoint, at least, was cosigned by every department.
    assert all(summary["cosignatures"].get(d, 0) >= 2 for d in DEPARTMENTS), summary
