"""Connection holds (tongban.holds) in the production server: real gunicorn with tongban's
deadline worker, the real gateway, and a flood of wrong secrets on loopback.

A 429 of the token endpoint holds its connection: the next request on it is read only
after the hold. An address refused as such has its new connections held too. Neither
costs a thread: the gateway keeps answering other connections meanwhile, and they are
answered first."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tongban.config import Settings
from tongban.gateway.oauth.throttle import CLIENT_BUCKET, SOURCE_BUCKET
from tongban.holds import MAX_HOLD_SECONDS
from tongban.keys import KeyRing
from tongban.provision import migrate
from tongban.wiring import build_registry

from .gunicorn_gateway import gunicorn_gateway

ROOT = Path(__file__).resolve().parent.parent
THREADS = 4  # fewer threads than held connections: a hold must not take one
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Server:
    url: str
    secret: str  # edu-bureau's
    log: Path  # gunicorn's and the app's log


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("holds")
    settings = Settings(data_dir=data)
    KeyRing(settings.keys_dir).ensure("gateway")
    migrate(settings)
    registry = build_registry(settings)
    secret = str(registry.register_client("edu-bureau", "Edu", scopes=("checks",)).secret)
    registry.register_client("flooded", "Flooded", scopes=("checks",))
    registry.engine.dispose()
    with gunicorn_gateway(data, threads=THREADS) as port:
        yield Server(f"http://127.0.0.1:{port}", secret, data / "gunicorn.log")


def _client(source: str) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(local_address=source), timeout=30, trust_env=False
    )


def _token(http: httpx.Client, url: str, client_id: str, secret: str) -> httpx.Response:
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return http.post(
        url + "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )


def _timed(call: object) -> tuple[httpx.Response, float, float]:
    """(response, seconds taken, monotonic time it ended)."""
    started = time.monotonic()
    resp = call()  # type: ignore[operator]
    ended = time.monotonic()
    return resp, ended - started, ended


def _until_refused(http: httpx.Client, url: str, ids: Iterator[str], tries: int) -> httpx.Response:
    for _ in range(tries):
        resp = _token(http, url, next(ids), "wrong")
        if resp.status_code == 429:
            return resp
        assert resp.status_code == 401, resp.text
    pytest.fail(f"no 429 in {tries} wrong secrets")


def test_a_refused_connection_is_held_and_others_are_served_meanwhile(server: Server) -> None:
    flood, other = _client("127.0.0.21"), _client("127.0.0.22")
    with flood, other:
        # Both connections exist before the refusal; "other" is a requester nearby.
        assert other.get(server.url + "/healthz").status_code == 200
        refused = _until_refused(
            flood, server.url, iter(lambda: "flooded", None), int(CLIENT_BUCKET.burst) + 10
        )
        assert refused.json()["limit"] == "client"
        hold = min(float(refused.headers["Retry-After"]), MAX_HOLD_SECONDS)

        # More flood requests than the worker has threads, each on its own held
        # connection, and then the requester: it is answered while they all wait.
        with ThreadPoolExecutor(2) as pool:
            held = pool.submit(_timed, lambda: _token(flood, server.url, "flooded", "wrong"))
            time.sleep(0.1)
            token, _, token_done = _timed(
                lambda: _token(other, server.url, "edu-bureau", server.secret)
            )
            again, took, again_done = held.result()
        assert token.status_code == 200, token.text
        assert again.status_code == 429
        assert took >= hold * 0.9
        assert token_done < again_done


def test_an_address_refused_as_such_has_its_new_connections_held(server: Server) -> None:
    source = "127.0.0.31"
    with _client(source) as flood:
        # Made-up client ids: no client bucket runs dry, the address's does.
        ids = (f"made-up-{i}" for i in range(10**6))
        refused = _until_refused(flood, server.url, ids, int(SOURCE_BUCKET.burst) + 10)
    assert refused.json()["limit"] == "source"
    hold = min(float(refused.headers["Retry-After"]), MAX_HOLD_SECONDS)

    def fresh(address: str) -> tuple[httpx.Response, float, float]:
        with _client(address) as http:  # a new connection
            return _timed(lambda: http.get(server.url + "/healthz"))

    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(fresh, source)
        time.sleep(0.1)
        neighbour, _, neighbour_done = fresh("127.0.0.32")
        again, took, again_done = held.result()
    assert neighbour.status_code == again.status_code == 200
    assert took >= (hold - 0.1) * 0.9
    assert neighbour_done < again_done

    # After the hold the address is served again without delay.
    time.sleep(hold)
    _, took_later, _ = fresh(source)
    assert took_later < hold


def test_the_apps_info_logs_reach_gunicorns_log(server: Server) -> None:
    """Under gunicorn, tongban.* records go where gunicorn's error log goes (before, every
    record below WARNING was dropped), in its format, and name no person."""
    text = server.log.read_text("utf-8", errors="replace")
    ready = [line for line in text.splitlines() if "gateway ready (pid" in line]
    assert ready, text[-2000:]
    assert "[INFO]" in ready[0]  # gunicorn's format: "[date] [pid] [INFO] ..."
