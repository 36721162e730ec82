"""Encrypted statistics end to end: analyst key → gateway → adapters (packed Paillier,
signed) → gateway sum → analyst decryption, against the generator's truth aggregates, on
SQLite and PostgreSQL department stores."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from phe import PaillierPrivateKey, PaillierPublicKey

from adapters.client import InProcessTransport, Reply
from adapters.protocol import AdapterCore, RequestSigner
from adapters.statistics import LocalStatistics, PoolCache
from federation.paillier import (
    OutOfBounds,
    PackingLayout,
    decrypt_vector,
    generate_keypair,
    public_key_to_jwk,
)
from federation.statistics import (
    REGISTRY,
    YEARS,
    Statistic,
    StatisticsRegistry,
    StatParam,
    UnknownStatistic,
)
from primitives.regions import DISTRICTS
from tongban.cli import build_parser
from tongban.stats import StatsError, parse_params, run_from_demo

from .conftest import Generated
from .gateway_harness import Harness, build_harness

NAMES = ("births_by_district_year", "allowance_total_by_district_year")
Keypair = tuple[PaillierPublicKey, PaillierPrivateKey]


@pytest.fixture(scope="session")
def keypair() -> Keypair:
    return generate_keypair(2048)


@pytest.fixture(scope="module")
def harness(
    population: Generated, party_keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    h = build_harness(tmp_path_factory.mktemp("stats-gateway"), population.urls, party_keys)
    yield h
    h.close()


def _truth(population: Generated) -> dict[tuple[str, str, str], int]:
    return {
        (str(c["aggregate"]), str(c["district"]), str(c["year"])): int(str(c["value"]))
        for c in population.cells()
    }


def _busy_years(truth: dict[tuple[str, str, str], int], name: str, n: int = 2) -> list[str]:
    per_year: dict[str, int] = {}
    for (agg, _, year), value in truth.items():
        if agg == name:
            per_year[year] = per_year.get(year, 0) + value
    return sorted(per_year, key=lambda y: -per_year[y])[:n]


def _submit(h: Harness, body: dict[str, Any], client: str = "analyst") -> Any:
    return h.client.post("/v1/statistics", json=body, headers=h.auth(client))


def _run(h: Harness, keypair: Keypair, name: str, year: str) -> dict[str, Any]:
    body = {
        "statistic": name,
        "params": {"year": year},
        "public_key": public_key_to_jwk(keypair[0]),
    }
    resp = _submit(h, body)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    job = resp.get_json()
    assert set(job) == {"id", "status"}
    assert resp.headers["Location"] == f"/v1/statistics/{job['id']}"
    got = h.client.get(resp.headers["Location"], headers=h.auth("analyst"))
    assert got.status_code == 200
    result: dict[str, Any] = got.get_json()
    return result


def _decrypt(keypair: Keypair, job: dict[str, Any]) -> list[int]:
    stat = REGISTRY.get(job["statistic"])
    layout = stat.layout(keypair[0].n, job["layout"]["parties"])
    assert job["layout"]["ciphertexts"] == layout.ciphertexts
    return decrypt_vector(keypair[1], [int(h, 16) for h in job["ciphertexts"]], layout)


# --- correctness against the truth --------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_decrypts_to_exactly_the_truth(
    harness: Harness, population: Generated, keypair: Keypair, name: str
):
    truth = _truth(population)
    years = _busy_years(truth, name)
    assert len(years) == 2
    for year in years:
        job = _run(harness, keypair, name, year)
        assert job["status"] == "done"
        assert job["threshold"] == 10
        assert job["cells"] == [{"district": d, "year": year} for d in DISTRICTS]
        stat = REGISTRY.get(name)
        assert job["departments"] == list(stat.departments)
        values = _decrypt(keypair, job)
        k = len(DISTRICTS)
        expected = [truth.get((name, d, year), 0) for d in DISTRICTS]
        assert values[:k] == expected
        assert sum(expected) > 0
        if not stat.counts_records:  # the count companion: payments per district
            assert len(values) == 2 * k
            assert all((c == 0) == (v == 0) for c, v in zip(values[k:], values[:k], strict=True))
            assert all(c <= v for c, v in zip(values[k:], values[:k], strict=True))


def test_sparse_years_match_too(harness: Harness, population: Generated, keypair: Keypair):
    truth = _truth(population)
    for year in ("2000", "2026"):
        job = _run(harness, keypair, "births_by_district_year", year)
        assert job["status"] == "done"
        expected = [truth.get(("births_by_district_year", d, year), 0) for d in DISTRICTS]
        assert _decrypt(keypair, job) == expected


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "slug"),
    [
        ({"statistic": "incomes_by_district"}, "unknown-statistic"),
        ({"statistic": 7}, "unknown-statistic"),
        ({"params": {"year": "1999"}}, "unknown-parameter"),
        ({"params": {"year": 2020}}, "unknown-parameter"),
        ({"params": {}}, "unknown-parameter"),
        ({"params": {"year": "2020", "district": "150102"}}, "unknown-parameter"),
        ({"public_key": {"kty": "DAJ"}}, "invalid-public-key"),
        ({"extra": 1}, "bad-request"),
    ],
)
def test_bad_jobs_are_400_problems(
    harness: Harness, keypair: Keypair, change: dict[str, Any], slug: str
):
    body = {
        "statistic": "births_by_district_year",
        "params": {"year": "2020"},
        "public_key": public_key_to_jwk(keypair[0]),
        **change,
    }
    resp = _submit(harness, body)
    assert resp.status_code == 400
    assert resp.mimetype == "application/problem+json"
    assert resp.get_json()["type"].endswith("/" + slug)


def test_private_key_members_are_refused(harness: Harness, keypair: Keypair):
    jwk = {**public_key_to_jwk(keypair[0]), "p": "AQ"}
    resp = _submit(harness, {"statistic": NAMES[0], "params": {"year": "2020"}, "public_key": jwk})
    assert resp.status_code == 400
    assert "private-key member" in resp.get_json()["detail"]


def test_missing_scope_is_403(harness: Harness, keypair: Keypair):
    body = {
        "statistic": NAMES[0],
        "params": {"year": "2020"},
        "public_key": public_key_to_jwk(keypair[0]),
    }
    resp = _submit(harness, body, client="edu-bureau")
    assert resp.status_code == 403
    other = harness.client.get("/v1/statistics/st-x", headers=harness.auth("edu-bureau"))
    assert other.status_code == 403
    assert harness.client.get("/v1/statistics/st-x").status_code == 401


def test_unknown_job_is_404(harness: Harness):
    resp = harness.client.get("/v1/statistics/st-nope", headers=harness.auth("analyst"))
    assert resp.status_code == 404


def test_registry_is_listed(harness: Harness):
    resp = harness.client.get("/v1/statistics", headers=harness.auth("analyst"))
    assert resp.status_code == 200
    body = resp.get_json()
    assert [s["name"] for s in body["statistics"]] == list(NAMES)
    assert body["threshold"] == 10
    assert body["statistics"][0]["params"] == {"year": list(YEARS)}


# --- failures: never a silently partial total ----------------------------------------------


def _transport(h: Harness) -> InProcessTransport:
    transport = h.gateway.departments.transport
    assert isinstance(transport, InProcessTransport)
    return transport


def test_a_department_that_is_down_fails_the_job_naming_it(
    harness: Harness, keypair: Keypair, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delitem(_transport(harness).cores, "hrss")
    job = _run(harness, keypair, "allowance_total_by_district_year", "2024")
    assert job["status"] == "failed"
    assert job["failed"] == [{"department": "hrss", "problem": "department-unavailable"}]
    assert "ciphertexts" not in job and "layout" not in job
    # a statistic of another department still works
    assert _run(harness, keypair, "births_by_district_year", "2024")["status"] == "done"


def _tamper(token: str) -> str:
    head, body, sig = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    first = payload["ciphertexts"][0]
    payload["ciphertexts"][0] = first[:-1] + ("1" if first[-1] != "1" else "2")
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return ".".join([head, base64.urlsafe_b64encode(raw).rstrip(b"=").decode(), sig])


def test_a_tampered_ciphertext_is_detected_by_the_signature(
    harness: Harness, keypair: Keypair, monkeypatch: pytest.MonkeyPatch
):
    transport = _transport(harness)
    original = transport.send

    def send(department: str, token: str, timeout: float) -> Reply:
        status, body = original(department, token, timeout)
        if department == "health" and status == 200:
            return status, _tamper(body.decode("ascii")).encode("ascii")
        return status, body

    monkeypatch.setattr(transport, "send", send)
    job = _run(harness, keypair, "births_by_district_year", "2024")
    assert job["status"] == "failed"
    assert job["failed"] == [{"department": "health", "problem": "unauthenticated"}]


# --- audit ------------------------------------------------------------------------------


def test_audit_has_the_job_and_no_plaintext(
    harness: Harness, population: Generated, keypair: Keypair
):
    name = "allowance_total_by_district_year"
    truth = _truth(population)
    year = _busy_years(truth, name, 1)[0]
    job = _run(harness, keypair, name, year)
    assert job["status"] == "done"
    audit = harness.gateway.audit
    assert audit is not None
    entries = [e.entry for e in audit.entries({}, limit=200)[0] if e.entry.get("job") == job["id"]]
    by_kind = {e["kind"]: e for e in entries}
    assert set(by_kind) == {"statistic", "statistic_done"}
    start, done = by_kind["statistic"], by_kind["statistic_done"]
    assert start["index"] < done["index"]
    assert start["requester"] == "analyst" and start["statistic"] == name
    assert start["params"] == {"year": year}
    assert start["key"].startswith("paillier-") and start["key"] == job["key"]
    assert done["result"] == "done" and done["departments"] == ["hrss"]
    assert len(done["ciphertexts_sm3"]) == 64
    text = json.dumps(entries)
    for (agg, _, y), value in truth.items():
        if agg == name and y == year and value >= 1000:
            assert str(value) not in text
    assert 'ciphertexts"' not in text


# --- the adapter side -------------------------------------------------------------------


def test_registry_refuses_duplicates():
    registry = StatisticsRegistry()
    stat = REGISTRY.get(NAMES[0])
    registry.register(stat)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(stat)
    with pytest.raises(UnknownStatistic):
        registry.get("nope")


def test_adapter_refuses_a_statistic_of_another_department(
    harness: Harness, party_keys, keypair: Keypair
):
    core = _transport(harness).cores["health"]
    signer = RequestSigner(party_keys["gateway"], issuer=harness.settings.gateway_issuer)
    token, _ = signer.sign_statistic(
        "health", NAMES[1], {"year": "2024"}, "st-1", public_key_to_jwk(keypair[0]), 1
    )
    with pytest.raises(UnknownStatistic):
        core.handle(token)
    token, _ = signer.sign_statistic(
        "health", NAMES[0], {"year": "2024"}, "st-1", public_key_to_jwk(keypair[0]), 0
    )
    with pytest.raises(Exception, match="parties"):
        core.handle(token)


def test_adapter_refuses_values_above_the_bound(harness: Harness, keypair: Keypair):
    tiny = StatisticsRegistry()
    tiny.register(
        Statistic(
            "births_by_district_year",
            "tiny bound",
            ("health",),
            (StatParam("year", YEARS),),
            tuple(DISTRICTS),
            value_bound=1,
        )
    )
    local = LocalStatistics(harness.stores["health"], registry=tiny)
    with pytest.raises(OutOfBounds):
        local.contribute(NAMES[0], {"year": "2024"}, public_key_to_jwk(keypair[0]), 1)
    local.pools.close()


def test_pool_cache_is_bounded(keypair: Keypair):
    other, _ = generate_keypair(2048)
    cache = PoolCache(max_keys=1, size=2, workers=1)
    try:
        first = cache.get(keypair[0])
        assert cache.get(keypair[0]) is first
        cache.get(other)
        assert len(cache) == 1
    finally:
        cache.close()


def test_layout_for_the_shipped_statistics_fits_one_ciphertext(keypair: Keypair):
    for stat in REGISTRY:
        layout: PackingLayout = stat.layout(keypair[0].n)
        assert layout.ciphertexts == 1 and layout.parties == len(stat.departments)


# --- the CLI ------------------------------------------------------------------------------


def _demo_dir(h: Harness, tmp_path: Path) -> Path:
    demo = {
        # authlib refuses plain http except to localhost (the demo runs on 127.0.0.1)
        "gateway": "http://localhost",
        "clients": {"analyst": {"client_id": "analyst", "client_secret": h.secrets["analyst"]}},
    }
    (tmp_path / "demo.json").write_text(json.dumps(demo))
    return tmp_path


def test_cli_stats_run_csv_decrypts_and_suppresses(
    harness: Harness, population: Generated, keypair: Keypair, tmp_path: Path
):
    args = build_parser().parse_args(
        ["stats", "run", NAMES[0], "--param", "year=2024", "--data-dir", str(tmp_path),
         "--format", "csv"]
    )  # fmt: skip
    assert args.func.__name__ == "_stats_run" and args.param == ["year=2024"]
    truth = _truth(population)
    lines: list[str] = []
    for name in NAMES:
        year = _busy_years(truth, name, 1)[0]
        lines.clear()
        code = run_from_demo(
            _demo_dir(harness, tmp_path),
            name,
            [f"year={year}"],
            "csv",
            transport=httpx.WSGITransport(app=harness.app),
            keypair=keypair,
            out=lines.append,
        )
        assert code == 0
        rows = list(csv.reader(io.StringIO(lines[0])))
        assert rows[0] == ["district", "year", "value"]
        assert [r[0] for r in rows[1:]] == list(DISTRICTS)
        suppressed = 0
        for district, y, value in rows[1:]:
            assert y == year
            expected = truth.get((name, district, year), 0)
            if value == "":
                suppressed += 1
                if name == NAMES[0]:
                    assert expected < 10
            else:
                assert int(value) == expected >= 10
        assert suppressed >= 1  # the two Beijing districts are (nearly) empty


def test_cli_stats_run_table_and_errors(harness: Harness, keypair: Keypair, tmp_path: Path):
    out: list[str] = []
    transport = httpx.WSGITransport(app=harness.app)
    demo = _demo_dir(harness, tmp_path)
    assert run_from_demo(demo, NAMES[0], ["year=2024"], "table", transport=transport,
                         keypair=keypair, out=out.append) == 0  # fmt: skip
    assert "150102" in out[0] and "suppressed" in out[0]
    assert run_from_demo(demo, "nope", ["year=2024"], "csv", transport=transport,
                         keypair=keypair, out=out.append) == 1  # fmt: skip
    assert run_from_demo(demo, NAMES[0], ["year=1999"], "csv", transport=transport,
                         keypair=keypair, out=out.append) == 1  # fmt: skip
    assert run_from_demo(tmp_path / "missing", NAMES[0], [], "csv", transport=transport) == 1
    with pytest.raises(StatsError):
        parse_params(["year"])


def test_core_is_an_adapter_core(harness: Harness):
    assert all(isinstance(c, AdapterCore) for c in _transport(harness).cores.values())
