"""Encrypted statistics end to end: analyst key → gateway → adapters (packed Paillier,
signed) → gateway sum → analyst decryption, against the generator's truth aggregates, on
SQLite and PostgreSQL department stores."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import pytest
from phe import PaillierPrivateKey, PaillierPublicKey

from tongban.adapters.client import InProcessTransport
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.deptfile import Declarations
from tongban.adapters.protocol import AdapterCore, RequestSigner, verify_statistic_answer
from tongban.adapters.statistics import LocalStatistics, PoolCache
from tongban.cli import build_parser
from tongban.federation.paillier import (
    OutOfBounds,
    PackingLayout,
    decrypt_vector,
    generate_keypair,
    key_fingerprint,
    public_key_to_jwk,
)
from tongban.federation.statistics import (
    REGISTRY,
    YEARS,
    Release,
    Statistic,
    StatisticsRegistry,
    StatParam,
    UnknownStatistic,
)
from tongban.gateway.models import StatisticRequest
from tongban.gateway.services import AuditEvents
from tongban.gateway.statistics import DpRequired, StatisticsService, StatisticUnavailable
from tongban.gateway.statistics_store import StatisticsStore
from tongban.primitives.bodies import parse_body
from tongban.primitives.errors import Unauthenticated
from tongban.primitives.regions import DISTRICTS
from tongban.stats import StatsError, parse_params, run_from_demo

from .conftest import Generated
from .gateway_harness import Harness, build_harness, jws_parts

NAMES = ("births_by_district_year", "allowance_total_by_district_year")
Keypair = tuple[PaillierPublicKey, PaillierPrivateKey]


@pytest.fixture(scope="session")
def keypair() -> Keypair:
    return generate_keypair(2048)


@pytest.fixture(scope="module")
def harness(
    population: Generated, party_keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    # Threshold 1 (gateway and departments): every cell released, so every cell can be
    # compared with the truth. Suppression at the default threshold is tested below.
    h = build_harness(
        tmp_path_factory.mktemp("stats-gateway"), population.urls, party_keys, stats_threshold=1
    )
    yield h
    h.close()


@pytest.fixture(scope="module")
def harness10(
    population: Generated, party_keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    """The shipped defaults: threshold 10, budget ε = 10."""
    h = build_harness(tmp_path_factory.mktemp("stats-gateway-10"), population.urls, party_keys)
    assert h.gateway.oauth is not None
    registered = h.gateway.oauth.registry.register_client(
        "analyst-2", "analyst-2", scopes=("statistics",)
    )
    h.secrets["analyst-2"] = str(registered.secret)
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
        assert job["threshold"] == 1
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
        ({"statistic": 7}, "bad-request"),
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
    assert body["threshold"] == 1
    assert body["budget"] == {"epsilon": 10.0, "remaining": 10.0}
    assert body["statistics"][0]["params"] == {"year": list(YEARS)}


# --- failures: never a silently partial total ----------------------------------------------


def _transport(h: Harness) -> InProcessTransport:
    transport = h.gateway.departments.transport
    assert isinstance(transport, InProcessTransport)
    return transport


def test_a_department_that_is_down_fails_the_job_naming_it(
    harness: Harness, keypair: Keypair, monkeypatch: pytest.MonkeyPatch
):
    # The whole adapter away: its predicates and its witness.
    monkeypatch.delitem(_transport(harness).cores, "hrss")
    monkeypatch.delitem(_transport(harness).witnesses, "hrss", raising=False)
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
    # Changed after signing, before sealing (on the wire the envelope refuses any change
    # first: tests/test_envelope.py): only the signature can tell.
    core = _transport(harness).cores["health"]
    original = core.handle_jws
    monkeypatch.setattr(core, "handle_jws", lambda token: _tamper(original(token)))
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
        core.handle_jws(token)
    token, _ = signer.sign_statistic(
        "health", NAMES[0], {"year": "2024"}, "st-1", public_key_to_jwk(keypair[0]), 0
    )
    with pytest.raises(Exception, match="parties"):
        core.handle_jws(token)


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
    harness10: Harness, population: Generated, keypair: Keypair, tmp_path: Path
):
    harness = harness10
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


def test_cli_stats_run_table_and_errors(harness10: Harness, keypair: Keypair, tmp_path: Path):
    harness = harness10
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


# --- disclosure control: suppression by the department, DP noise, budget, policy ---------


def _decrypt_release(keypair: Keypair, job: dict[str, Any]) -> list[int]:
    """Decrypt as the analyst does: the job's release decides the layout and offsets."""
    stat = REGISTRY.get(job["statistic"])
    dp = job["release"]["dp"]
    release = Release(job["threshold"], None if dp is None else dp["epsilon"])
    parties = job["layout"]["parties"]
    layout = stat.layout(keypair[0].n, parties, release)
    assert job["layout"]["offsets"] == stat.offsets(release, parties)
    raw = decrypt_vector(keypair[1], [int(h, 16) for h in job["ciphertexts"]], layout)
    return [v - parties * o for v, o in zip(raw, stat.offsets(release, parties), strict=True)]


def test_a_sole_department_suppresses_small_cells_before_encrypting(
    harness10: Harness, population: Generated, keypair: Keypair
):
    truth = _truth(population)
    name = NAMES[0]

    def cells(year: str) -> list[int]:
        return [truth.get((name, d, year), 0) for d in DISTRICTS]

    # a year with both a releasable cell and a small one
    year = next(y for y in _busy_years(truth, name, len(YEARS))
                if max(cells(y)) >= 10 and any(0 < t < 10 for t in cells(y)))  # fmt: skip
    job = _run(harness10, keypair, name, year)
    assert job["status"] == "done"
    assert job["release"] == {"threshold": 10, "suppressed_by": "departments", "dp": None}
    values = _decrypt(keypair, job)  # whatever client decrypts it sees no small cell
    assert values == [t if t >= 10 else 0 for t in cells(year)]


def test_count_companion_suppresses_by_records_not_amount(
    harness: Harness, harness10: Harness, population: Generated, keypair: Keypair
):
    name = NAMES[1]
    year = _busy_years(_truth(population), name, 1)[0]
    k = len(DISTRICTS)
    exact = _decrypt(keypair, _run(harness, keypair, name, year))  # threshold 1
    amounts, counts = exact[:k], exact[k:]
    assert any(0 < c < 10 for c in counts)
    released = _decrypt(keypair, _run(harness10, keypair, name, year))
    assert released[:k] == [a if c >= 10 else 0 for a, c in zip(amounts, counts, strict=True)]
    assert released[k:] == [c if c >= 10 else 0 for c in counts]


def test_a_department_never_suppresses_less_than_its_floor(
    harness10: Harness, party_keys, keypair: Keypair
):
    core = _transport(harness10).cores["health"]
    signer = RequestSigner(party_keys["gateway"], issuer=harness10.settings.gateway_issuer)
    token, _ = signer.sign_statistic(
        "health", NAMES[0], {"year": "2024"}, "st-1", public_key_to_jwk(keypair[0]), 1,
        {"threshold": 1, "epsilon": None},
    )  # fmt: skip
    _, answer, _ = jws_parts(core.handle_jws(token))
    assert answer["release"] == {"threshold": 10, "epsilon": None}


def test_an_answer_that_ignores_the_requested_noise_is_refused(
    harness10: Harness, party_keys, keypair: Keypair
):
    core = _transport(harness10).cores["health"]
    gateway_key = party_keys["gateway"]
    signer = RequestSigner(gateway_key, issuer=harness10.settings.gateway_issuer)
    jwk = public_key_to_jwk(keypair[0])
    token, jti = signer.sign_statistic("health", NAMES[0], {"year": "2024"}, "st-2", jwk, 1)
    answer = core.handle_jws(token)  # applied: no noise
    with pytest.raises(Unauthenticated, match="release"):
        verify_statistic_answer(
            answer,
            department="health",
            department_key=party_keys["health"].public_key,
            request_jti=jti,
            statistic=NAMES[0],
            job="st-2",
            key_fingerprint=key_fingerprint(keypair[0]),
            gateway_issuer=harness10.settings.gateway_issuer,
            release={"threshold": 10, "epsilon": 0.5},
        )


@pytest.mark.parametrize("name", NAMES)
def test_dp_job_adds_noise_of_the_declared_scale_and_charges_the_budget(
    harness10: Harness, population: Generated, keypair: Keypair, name: str
):
    truth = _truth(population)
    year = _busy_years(truth, name, 1)[0]
    before = harness10.gateway.statistics.store.remaining("analyst")  # type: ignore[union-attr]
    body = {
        "statistic": name,
        "params": {"year": year},
        "public_key": public_key_to_jwk(keypair[0]),
        "dp": {"epsilon": 0.2},
    }
    resp = _submit(harness10, body)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    job = harness10.client.get(resp.headers["Location"], headers=harness10.auth("analyst"))
    doc = job.get_json()
    assert doc["status"] == "done"
    dp = doc["release"]["dp"]
    assert dp["epsilon"] == 0.2 and doc["release"]["suppressed_by"] == "analyst"
    stat = REGISTRY.get(name)
    parts = stat.noise(Release(10, 0.2), 1)
    assert [p["scale"] for p in dp["parts"]] == [p.scale for p in parts]
    values = _decrypt_release(keypair, doc)
    k = len(DISTRICTS)
    noise = [v - truth.get((name, d, year), 0) for v, d in zip(values[:k], DISTRICTS, strict=True)]
    assert any(n != 0 for n in noise)  # P(all eight zero) < 1e-10 at these scales
    assert all(abs(n) <= parts[0].offset for n in noise)
    if not stat.counts_records:  # amounts clipped per record, then noised with scale 1e6
        assert parts[0].sensitivity == stat.record_bound and parts[1].sensitivity == 1
    after = harness10.gateway.statistics.store.remaining("analyst")  # type: ignore[union-attr]
    assert after == pytest.approx(before - 0.2)
    listed = harness10.client.get("/v1/statistics", headers=harness10.auth("analyst")).get_json()
    assert listed["budget"]["remaining"] == pytest.approx(after)
    audit = harness10.gateway.audit
    assert audit is not None
    entry = next(e.entry for e in audit.entries({}, limit=50)[0]
                 if e.entry.get("job") == doc["id"] and e.entry["kind"] == "statistic")  # fmt: skip
    assert entry["release"] == {"threshold": 10, "epsilon": "0.2"}
    assert float(entry["budget_remaining"]) == pytest.approx(after)
    assert entry["policy"]["rules"] == [
        ["analyst", "*", f"statistic:{name}", "official_statistics", "allow"]
    ]


def test_cli_with_epsilon_prints_noisy_values(harness10: Harness, keypair: Keypair, tmp_path: Path):
    out: list[str] = []
    code = run_from_demo(
        _demo_dir(harness10, tmp_path), NAMES[0], ["year=2024"], "table",
        transport=httpx.WSGITransport(app=harness10.app), keypair=keypair, out=out.append,
        epsilon=0.5,
    )  # fmt: skip
    assert code == 0 and "ε = 0.5" in out[0]


@pytest.mark.parametrize(
    ("dp", "status", "slug"),
    [
        ({"epsilon": 0}, 400, "invalid-epsilon"),
        ({"epsilon": 11}, 400, "invalid-epsilon"),
        ({"epsilon": "1"}, 400, "bad-request"),
        ({"epsilon": True}, 400, "bad-request"),
        ({"eps": 1}, 400, "bad-request"),
        ([1], 400, "bad-request"),
    ],
)
def test_bad_dp_parameters(harness10: Harness, keypair: Keypair, dp: Any, status: int, slug: str):
    body = {"statistic": NAMES[0], "params": {"year": "2024"},
            "public_key": public_key_to_jwk(keypair[0]), "dp": dp}  # fmt: skip
    resp = _submit(harness10, body)
    assert resp.status_code == status
    assert resp.get_json()["type"].endswith("/" + slug)


def test_a_failed_dp_job_refunds_its_epsilon(harness10: Harness, keypair: Keypair):
    service = harness10.gateway.statistics
    assert service is not None
    before = service.store.remaining("analyst")
    cores, witnesses = _transport(harness10).cores, _transport(harness10).witnesses
    health, witness = cores.pop("health"), witnesses.pop("health", None)  # the adapter away
    try:
        body = {"statistic": NAMES[0], "params": {"year": "2024"},
                "public_key": public_key_to_jwk(keypair[0]), "dp": {"epsilon": 1}}  # fmt: skip
        job = harness10.client.get(
            _submit(harness10, body).headers["Location"], headers=harness10.auth("analyst")
        ).get_json()
    finally:
        cores["health"] = health
        if witness is not None:
            witnesses["health"] = witness
    assert job["status"] == "failed"
    assert job["failed"] == [{"department": "health", "problem": "department-unavailable"}]
    assert service.store.remaining("analyst") == pytest.approx(before)


def test_a_requester_without_a_policy_rule_is_denied_and_audited(
    harness10: Harness, keypair: Keypair
):
    body = {"statistic": NAMES[0], "params": {"year": "2024"},
            "public_key": public_key_to_jwk(keypair[0])}  # fmt: skip
    resp = _submit(harness10, body, client="analyst-2")
    assert resp.status_code == 403
    problem = resp.get_json()
    assert problem["type"].endswith("/job-denied")
    audit = harness10.gateway.audit
    assert audit is not None
    stored = audit.get(problem["audit_index"])
    assert stored is not None
    denied = stored.entry
    assert denied["kind"] == "job_denied" and denied["requester"] == "analyst-2"
    assert denied["object"] == f"statistic:{NAMES[0]}" and denied["reason"] == "no_matching_rule"


def test_jobs_survive_in_the_store_for_any_worker(harness10: Harness, keypair: Keypair):
    job = _run(harness10, keypair, NAMES[0], "2024")
    other = StatisticsStore(harness10.settings.gateway_store_url())  # another process's view
    assert other.load(job["id"], "analyst") == job
    assert other.load(job["id"], "analyst-2") is None
    other.engine.dispose()


def test_a_gateway_requiring_dp_refuses_jobs_without_noise(harness10: Harness, keypair: Keypair):
    gw = harness10.gateway
    assert gw.statistics is not None and gw.audit is not None
    strict = StatisticsService(
        gw.departments, AuditEvents(gw.audit), gw.statistics.store, require_dp=True
    )
    body = {"statistic": NAMES[0], "params": {"year": "2024"},
            "public_key": public_key_to_jwk(keypair[0])}  # fmt: skip
    with pytest.raises(DpRequired):
        strict.submit("analyst", parse_body(StatisticRequest, body))
    strict.close()


def test_a_statistic_no_department_file_declares_is_unavailable(
    harness10: Harness, keypair: Keypair
) -> None:
    """A health file without [statistics]: births_by_district_year is listed as
    unavailable (naming the department, never a start-up failure) and refused at
    submission with a stable problem type, before anything is computed or charged."""
    gw = harness10.gateway
    assert gw.statistics is not None and gw.audit is not None
    health = DEPARTMENTS["health"].file
    bare = dataclasses.replace(health, statistics=MappingProxyType({}))
    declared: dict[str, Declarations] = {**DEPARTMENTS, "health": bare}
    service = StatisticsService(
        gw.departments, AuditEvents(gw.audit), gw.statistics.store, declared=declared
    )
    try:
        listed = service.describe("analyst")
        names = [s["name"] for s in listed["statistics"]]
        assert "births_by_district_year" not in names
        assert "allowance_total_by_district_year" in names
        assert listed["unavailable"] == [
            {
                "name": "births_by_district_year",
                "detail": "not declared in the department file of health",
            }
        ]
        before = service.store.remaining("analyst")
        body = {"statistic": "births_by_district_year", "params": {"year": "2024"},
                "public_key": public_key_to_jwk(keypair[0]), "dp": {"epsilon": 1}}  # fmt: skip
        with pytest.raises(StatisticUnavailable) as info:
            service.submit("analyst", parse_body(StatisticRequest, body))
        problem = info.value.to_problem()
        assert problem["type"].endswith("/statistic-unavailable") and problem["status"] == 409
        assert service.store.remaining("analyst") == before
    finally:
        service.close()
    # The gateway as built declares every statistic: nothing is unavailable.
    assert gw.statistics.describe()["unavailable"] == []
