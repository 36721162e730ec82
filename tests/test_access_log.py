"""Access-log lines never hold a query string or an ID number (finding 5).

The attack: an ID number put in a URL (``?subject=<ID>``, or a path segment) and the
server's request line printed as werkzeug and gunicorn print it by default. Both of
tongban's servers are driven here with such requests and their log lines read back.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
from flask import Flask
from gunicorn.config import Config  # type: ignore[import-untyped]

from tongban.access_log import ACCESS_LOG_FORMAT, MaskedAccessLogger, mask_target
from tongban.serve import Server

ID = "150102199305160016"
OLD_ID = "150102930516001"
ID_SHAPED = re.compile(r"\d{17}[\dXx]|\d{15}")


@pytest.mark.parametrize(
    ("target", "masked"),
    [
        (f"/v1/audit/entries?subject={ID}&limit=2", "/v1/audit/entries?…"),
        (f"/v1/people/{ID}/x", "/v1/people/[id]/x"),
        (f"/v1/people/{ID[:-1]}X", "/v1/people/[id]"),
        (f"/v1/people/{OLD_ID}", "/v1/people/[id]"),
        ("/v1/checks", "/v1/checks"),
        ("/v1/audit/entries/12345", "/v1/audit/entries/12345"),  # an index is not an ID
        ("/v1/x?", "/v1/x?…"),
        (f"https://gw.example/me/?error={ID}", "https://gw.example/me/?…"),
    ],
)
def test_mask_target(target: str, masked: str) -> None:
    assert mask_target(target) == masked


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def werkzeug_lines() -> Iterator[tuple[str, list[str]]]:
    app = Flask("probe")

    @app.get("/v1/audit/entries")
    def entries() -> str:
        return "ok"

    server = Server("127.0.0.1", 0, app, name="probe")
    records = _Records()
    logger = logging.getLogger("werkzeug")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(records)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", records.lines
    finally:
        server.shutdown()
        server.server_close()
        logger.removeHandler(records)
        logger.setLevel(old_level)


def test_werkzeug_request_lines_are_masked(werkzeug_lines: tuple[str, list[str]]) -> None:
    url, lines = werkzeug_lines
    with httpx.Client(trust_env=False, timeout=5) as client:
        assert client.get(f"{url}/v1/audit/entries?subject={ID}&limit=2").status_code == 200
        assert client.get(f"{url}/v1/people/{ID}").status_code == 404
        assert client.get(f"{url}/v1/audit/entries?code=s3cret-code").status_code == 200
    requests = [line for line in lines if '"GET ' in line]
    assert len(requests) == 3, lines
    assert '"GET /v1/audit/entries?… HTTP/1.1" 200' in requests[0]
    assert '"GET /v1/people/[id] HTTP/1.1" 404' in requests[1]
    text = "\n".join(lines)
    assert not ID_SHAPED.search(text), text
    assert "subject" not in text and "s3cret-code" not in text


def test_gunicorn_atoms_are_masked() -> None:
    cfg = Config()
    cfg.set("accesslog", "-")
    # Every atom an operator might put in a format, the dangerous ones included.
    fmt = (
        ACCESS_LOG_FORMAT
        + " %(r)s %(q)s %(f)s %({authorization}i)s %({cookie}i)s %({query_string}e)s"
    )
    cfg.set("access_log_format", fmt)
    logger = MaskedAccessLogger(cfg)
    records = _Records()
    logger.access_log.addHandler(records)
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": f"/v1/people/{ID}?subject={ID}",
        "PATH_INFO": f"/v1/people/{ID}",
        "QUERY_STRING": f"subject={ID}",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_REFERER": f"https://gw.example/officer/?subject={ID}",
    }
    headers = [("Authorization", "Bearer tok-secret"), ("Cookie", "session=sess-secret")]
    req = SimpleNamespace(headers=headers)
    resp = SimpleNamespace(status="404 NOT FOUND", sent=12, headers=[])
    logger.access(resp, req, environ, dt.timedelta(milliseconds=3))
    assert len(records.lines) == 1
    line = records.lines[0]
    assert line.startswith('127.0.0.1 "GET /v1/people/[id] HTTP/1.1" 404 12 0.003000s')
    assert "GET /v1/people/[id]?… HTTP/1.1" in line
    assert "https://gw.example/officer/?…" in line
    assert not ID_SHAPED.search(line), line
    for secret in ("tok-secret", "sess-secret", "subject"):
        assert secret not in line, line
