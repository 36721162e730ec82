"""The command-line sequence of docs/cli.md without ``tongban demo``: ``generate``, ``keys init``,
``adapter serve``, ``gateway serve``, then a check, ``audit verify`` and ``citizen-token``
with the credentials ``keys init`` wrote; ``keys init`` is idempotent; server logs that go
to a file carry no ANSI colour escapes."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from tongban.boundary import make_log_handler
from tongban.cli import main
from tongban.config import Settings
from tongban.keys import SIGNING_PARTIES
from tongban.provision import DEMO_CLIENTS, init_data_dir
from tongban.wiring import build_registry

POPULATION = 300
ESC = "\x1b["


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _key_files(data: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((data / "keys").iterdir())}


# --- keys init --------------------------------------------------------------------------


def test_keys_init_creates_keys_and_credentials_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    data = tmp_path / "data"

    assert main(["keys", "init", "--data-dir", str(data)]) == 0
    first = json.loads(capsys.readouterr().out)
    keys = _key_files(data)
    creds = json.loads((data / "clients.json").read_text())["clients"]

    assert sorted(first["keys_created"]) == sorted(SIGNING_PARTIES)
    assert sorted(first["clients_registered"]) == sorted(DEMO_CLIENTS)
    assert (data / "clients.json").stat().st_mode & 0o777 == 0o600
    for party in SIGNING_PARTIES:
        assert (data / "keys" / f"{party}.key").stat().st_mode & 0o777 == 0o600
    assert "client_secret" not in json.dumps(first)  # the summary never prints a secret

    assert main(["keys", "init", "--data-dir", str(data)]) == 0
    second = json.loads(capsys.readouterr().out)

    assert second["keys_created"] == [] and second["clients_registered"] == []
    assert second["clients_reissued"] == []
    assert _key_files(data) == keys  # never overwritten
    assert json.loads((data / "clients.json").read_text())["clients"] == creds  # not rotated
    registry = build_registry(Settings(data_dir=data))
    try:
        for client_id, c in creds.items():
            client = registry.get(client_id)
            assert client is not None and registry.check_secret(
                client, client_id, c["client_secret"]
            )
    finally:
        registry.engine.dispose()


def test_keys_init_keeps_the_secrets_an_older_demo_wrote(tmp_path: Path):
    """Data directories from before clients.json keep their secrets from demo.json."""
    data = tmp_path / "data"
    creds = init_data_dir(data).clients
    (data / "clients.json").unlink()
    (data / "demo.json").write_text(json.dumps({"gateway": "http://x", "clients": creds}))

    again = init_data_dir(data)

    assert again.clients == creds
    assert again.clients_reissued == ()


def test_keys_init_reissues_only_a_lost_secret(tmp_path: Path):
    data = tmp_path / "data"
    creds = init_data_dir(data).clients
    doc = json.loads((data / "clients.json").read_text())
    del doc["clients"]["insurer-a"]
    (data / "clients.json").write_text(json.dumps(doc))

    again = init_data_dir(data)

    assert again.clients_reissued == ("insurer-a",)
    assert again.clients["insurer-a"] != creds["insurer-a"]
    assert {k: v for k, v in again.clients.items() if k != "insurer-a"} == {
        k: v for k, v in creds.items() if k != "insurer-a"
    }


# --- plain-text logs --------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _log_through(stream: io.StringIO) -> str:
    logger = logging.getLogger("test-first-run.werkzeug")
    handler = make_log_handler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        # What werkzeug logs for a 404: its request line in yellow.
        logger.warning('"%s" %s %s', "\x1b[33mGET /nope HTTP/1.1\x1b[0m", "404", "-")
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_logs_to_a_file_have_no_ansi_escapes_but_a_terminal_keeps_colour():
    plain = _log_through(io.StringIO())
    assert '"GET /nope HTTP/1.1" 404 -' in plain and ESC not in plain
    assert ESC in _log_through(_Terminal())


# --- the docs/cli.md sequence, as real processes ---------------------------------------------


@contextmanager
def _server(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tongban", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def _wait_healthy(http: httpx.Client, url: str, proc: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        with suppress(httpx.HTTPError):
            resp = http.get(url + "/healthz")
            if resp.status_code == 200:
                return resp.json()
        time.sleep(0.2)
    pytest.fail(f"{url} not healthy:\n{log.read_text(errors='replace')[-3000:]}")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tongban", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=_env(),
        timeout=180,
        check=False,
    )


@pytest.mark.slow
def test_the_readme_sequence_works_without_the_demo(tmp_path: Path):
    data = tmp_path / "data"
    gen = _cli(
        "generate", "--population", str(POPULATION), "--seed", "7", "--out", str(data),
        "--truth", str(data / "truth.jsonl"), "--workers", "1",
    )  # fmt: skip
    assert gen.returncode == 0, gen.stderr[-2000:]
    init = _cli("keys", "init", "--data-dir", str(data))
    assert init.returncode == 0, init.stderr
    secrets = json.loads((data / "clients.json").read_text())["clients"]
    with (data / "truth.jsonl").open(encoding="utf-8") as fh:
        subject = json.loads(fh.readline())["id_number"]

    health_port, gateway_port = _free_port(), _free_port()
    health_log, gateway_log = tmp_path / "health.log", tmp_path / "gateway.log"
    health_url = f"http://127.0.0.1:{health_port}"
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    with (
        httpx.Client(trust_env=False, timeout=10) as http,
        _server(
            ["adapter", "serve", "--department", "health", "--port", str(health_port),
             "--data-dir", str(data)],
            health_log,
        ) as health,
    ):  # fmt: skip
        _wait_healthy(http, health_url, health, health_log)
        with _server(
            ["gateway", "serve", "--port", str(gateway_port), "--data-dir", str(data),
             "--adapter", f"health={health_url}"],
            gateway_log,
        ) as gateway:  # fmt: skip
            health_doc = _wait_healthy(http, gateway_url, gateway, gateway_log)
            assert health_doc["departments"]["health"]["reachable"] is True
            assert http.get(gateway_url + "/no-such-page").status_code == 404
            edu = secrets["edu-bureau"]
            token = http.post(
                gateway_url + "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(edu["client_id"], edu["client_secret"]),
            )
            assert token.status_code == 200, token.text
            check = http.post(
                gateway_url + "/v1/checks",
                headers={"Authorization": f"Bearer {token.json()['access_token']}"},
                json={
                    "subject": {"id_number": subject},
                    "claim": "birth_registered",
                    "purpose": "school_enrollment",
                },
            )
            assert check.status_code == 200, check.text
            # police is not connected: a conjunction with it is never a confident answer
            assert check.json()["result"] in ("no", "undetermined")
        assert gateway.returncode == 0, gateway_log.read_text(errors="replace")[-3000:]

    verify = _cli("audit", "verify", "--data-dir", str(data))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    summary = json.loads(verify.stdout)
    assert summary["ok"] and summary["entries"] >= 2 and summary["cosignatures"]["health"] >= 1
    # This gateway trusts no citizen identity provider (only `tongban demo` enables the
    # demo's): citizen-token refuses in one line rather than mint a token it would refuse.
    minted = _cli("citizen-token", subject, "--data-dir", str(data))
    assert minted.returncode == 2 and minted.stdout == "", minted.stderr
    assert "not a production login" in minted.stderr and subject not in minted.stderr

    for log in (health_log, gateway_log):
        text = log.read_text(encoding="utf-8", errors="replace")
        assert ESC not in text, f"ANSI escapes in {log.name}"
        assert subject not in text  # no ID number in any log line
    assert '"GET /no-such-page HTTP/1.1" 404' in gateway_log.read_text(encoding="utf-8")
