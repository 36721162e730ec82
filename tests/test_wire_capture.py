"""Nothing readable on the wire: a packet capture on the loopback interface while the demo
(``tongban demo --https``: HTTPS to the requester, mutual TLS 1.3 and the SM2/SM4
envelope between the gateway and the five adapters) answers 100 checks, a batch, a
statistic and a vertical training job.

Every frame on ``lo`` is read with an ``AF_PACKET`` raw socket (no tcpdump here; root
only). The TCP payloads of the demo's ports must hold no ID number used, in ASCII,
base64url or standard base64 (each of the three alignments) or hex, and no plaintext
JSON; every TCP stream to those ports must open with a TLS handshake record."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from tongban.adapters.builtin import builtin_names

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

STARTUP = 120.0
ETH_P_ALL = 0x0003


class Capture:
    """Every frame on ``lo`` in a background thread: (src port, dst port) -> payloads."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.sock.recv(262144)
            except TimeoutError:
                continue
            except OSError:
                return
            self.frames.append(frame)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def segments(self) -> Iterator[tuple[int, int, int, bytes]]:
        """(src port, dst port, TCP sequence number, payload) of every TCP segment."""
        for frame in self.frames:
            if len(frame) < 14:
                continue
            ethertype = struct.unpack("!H", frame[12:14])[0]
            ip = frame[14:]
            if ethertype == 0x0800 and len(ip) >= 20:
                if ip[9] != 6:
                    continue
                header = (ip[0] & 0x0F) * 4
                total = struct.unpack("!H", ip[2:4])[0]
                tcp = ip[header:total]
            elif ethertype == 0x86DD and len(ip) >= 40:
                if ip[6] != 6:
                    continue
                tcp = ip[40 : 40 + struct.unpack("!H", ip[4:6])[0]]
            else:
                continue
            if len(tcp) < 20:
                continue
            src, dst, seq = struct.unpack("!HHI", tcp[:8])
            payload = tcp[(tcp[12] >> 4) * 4 :]
            if payload:
                yield src, dst, seq, payload


def encodings(id_number: str) -> list[bytes]:
    """What an ID number looks like in each encoding a capture could hold: ASCII, hex in
    both cases, and the stable middle of its base64 and base64url encodings at each of the
    three alignments (the encoding of the bytes after 0, 1 or 2 leading bytes, without the
    characters that depend on those neighbours)."""
    raw = id_number.encode()
    out = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for lead in range(3):
        padded = b"\0" * lead + raw
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(padded).rstrip(b"=")
            # Characters that mix a leading or a trailing neighbour's bits are dropped.
            start = -(-lead * 4 // 3) + (1 if lead else 0)
            body = text[start : (len(padded) // 3) * 4]
            out.append(body)
    return [e for e in out if len(e) >= 12]


def test_encodings_find_an_id_number_inside_any_encoded_message() -> None:
    """The needle set itself: an ID number inside JSON, encoded whole at every offset,
    is found; so the capture assertions below can fail."""
    id_number = "11010519491231002X"
    needles = encodings(id_number)
    for prefix in ("", "a", "ab", '{"subjects":["', '{"s":"'):
        message = f'{prefix}{id_number}"]}}'.encode()
        for encoded in (
            base64.urlsafe_b64encode(message).rstrip(b"="),
            base64.b64encode(message),
            message.hex().encode(),
            message,
        ):
            assert any(n in encoded for n in needles), (prefix, encoded)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _demo(root: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path, int]]:
    data_dir = (root / "demo-data").resolve()
    log = root / "demo.log"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    argv = [
        sys.executable, "-m", "tongban", "demo", "--https", "--data-dir", str(data_dir),
        "--port", str(port), "--population", "1500", "--seed", "5",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield proc, data_dir, log, port
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _wait_up(proc: subprocess.Popen[bytes], data_dir: Path, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + STARTUP
    manifest = data_dir / "demo.json"
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        if manifest.exists():
            doc: dict[str, Any] = json.loads(manifest.read_text())
            try:
                health = httpx.get(
                    doc["gateway"] + "/healthz",
                    verify=ssl.create_default_context(cafile=doc["ca"]),
                    trust_env=False,
                    timeout=2,
                ).json()
            except httpx.HTTPError:
                health = {}
            reachable = {n for n, r in health.get("departments", {}).items() if r["reachable"]}
            if reachable == set(builtin_names()):
                return doc
        time.sleep(0.3)
    pytest.fail("demo not up:\n" + log.read_text(errors="replace")[-3000:])


def _token(http: httpx.Client, gateway: str, client: dict[str, str]) -> str:
    resp = http.post(
        gateway + "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client["client_id"], client["client_secret"]),
    )
    resp.raise_for_status()
    return str(resp.json()["access_token"])


def test_a_capture_of_the_demo_shows_no_id_number_and_no_json(tmp_path: Path) -> None:
    try:
        capture = Capture()
    except PermissionError:
        pytest.skip("opening a raw socket on lo needs root (CAP_NET_RAW)")
    try:
        with _demo(tmp_path) as (proc, data_dir, log, port):
            doc = _wait_up(proc, data_dir, log)
            assert doc["gateway"].startswith("https://")
            assert all(u.startswith("https://") for u in doc["adapters"].values())
            truth = [json.loads(line) for line in Path(doc["truth"]).read_text().splitlines()]
            people = [r["id_number"] for r in truth if "id_number" in r]
            assert len(people) >= 400
            born = [r["id_number"] for r in truth if r.get("claims", {}).get("birth_registered")]
            checked = born[:50] + [p for p in people if p not in set(born)][:50]
            assert len(checked) == 100
            with httpx.Client(
                verify=ssl.create_default_context(cafile=doc["ca"]), trust_env=False, timeout=60
            ) as http:
                gateway = doc["gateway"]
                edu = {
                    "Authorization": "Bearer " + _token(http, gateway, doc["clients"]["edu-bureau"])
                }
                results = []
                for subject in checked:
                    resp = http.post(gateway + "/v1/checks", headers=edu, json={
                        "subject": {"id_number": subject}, "claim": "birth_registered",
                        "purpose": "school_enrollment"})  # fmt: skip
                    assert resp.status_code == 200, resp.text
                    results.append(resp.json()["result"])
                assert "yes" in results and "no" in results  # real answers crossed the wire
                batch = people[100:400]
                resp = http.post(gateway + "/v1/checks/batch", headers=edu, json={
                    "claim": "birth_registered", "purpose": "school_enrollment",
                    "subjects": [{"id_number": s} for s in batch]})  # fmt: skip
                assert resp.status_code == 200, resp.text
                assert len(resp.json()["results"]) == len(batch)
                analyst = doc["clients"]["analyst"]
                auth = {"Authorization": "Bearer " + _token(http, gateway, analyst)}
                job = http.post(
                    gateway + "/v1/federation/jobs", headers=auth,
                    json={"kind": "vertical", "rounds": 1},
                )  # fmt: skip
                assert job.status_code in (200, 201, 202), job.text
                job_id = job.json()["id"]
            env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
            env["TONGBAN_CA_FILE"] = doc["ca"]
            stats = subprocess.run(
                [sys.executable, "-m", "tongban", "stats", "run", "births_by_district_year",
                 "--param", "year=2025", "--data-dir", str(data_dir), "--format", "csv"],
                capture_output=True, text=True, env=env, timeout=180, check=False,
            )  # fmt: skip
            assert stats.returncode == 0, stats.stdout + stats.stderr
            assert stats.stdout.startswith("district,year,value")
            with httpx.Client(
                verify=ssl.create_default_context(cafile=doc["ca"]), trust_env=False, timeout=60
            ) as http:
                deadline = time.monotonic() + 240
                status = ""
                while time.monotonic() < deadline:
                    auth = {"Authorization": "Bearer " + _token(http, gateway, analyst)}
                    body = http.get(f"{gateway}/v1/federation/jobs/{job_id}", headers=auth).json()
                    status = body["status"]
                    if status not in ("queued", "running"):
                        break
                    time.sleep(1)
                assert status == "done", body
            ports = {port, *(int(u.rsplit(":", 1)[1]) for u in doc["adapters"].values())}
            subjects = checked + batch + people[400::7]
    finally:
        capture.stop()

    streams: dict[tuple[int, int], list[tuple[int, bytes]]] = defaultdict(list)
    for src, dst, seq, payload in capture.segments():
        if src in ports or dst in ports:
            streams[(src, dst)].append((seq, payload))
    per_port: dict[int, int] = defaultdict(int)
    needles = {n for s in subjects for n in encodings(s)}
    # JSON keys, a JWS's header ({"alg", {"typ" in base64url), HTTP in clear. (Long enough
    # that random ciphertext does not hold them by chance.)
    plain = [b'"subject', b'"results"', b'"id_number"', b'"predicate"', b'"claim"',
             b"eyJhbGci", b"eyJ0eXAi", b"eyJraWQi", b"HTTP/1.1", b"POST /", b"Bearer "]  # fmt: skip
    for (src, dst), segments in streams.items():
        segments.sort()
        # Loopback shows each segment twice (out and in): keep one of each sequence number.
        data = b"".join(dict(segments).values())
        per_port[dst if dst in ports else src] += len(data)
        if dst in ports and data:
            assert data[0] == 0x16, f"a connection to port {dst} did not open with TLS"
        for needle in needles:
            assert needle not in data, f"an ID number ({needle!r}) on the wire {src}->{dst}"
        for marker in plain:
            assert marker not in data, f"plaintext {marker!r} on the wire {src}->{dst}"
    # Something real was captured on the gateway's and on every adapter's port.
    assert all(per_port[p] > 10_000 for p in ports), dict(per_port)
