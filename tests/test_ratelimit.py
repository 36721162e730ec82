"""Rate limits per requester and per (requester, subject): token buckets in the gateway's
SQL database, shared by workers, all-or-nothing, never holding an ID number; over HTTP a
429 problem+json ``rate-limited`` with ``Retry-After``, no signed answer, no audit entry."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, select

from tests.conftest import reset_chain
from tongban.config import Settings
from tongban.gateway.metrics import REGISTRY
from tongban.gateway.oauth import _schema as oauth_schema
from tongban.gateway.oauth.throttle import TokenThrottle, claimed_client_id, source_of
from tongban.gateway.ratelimit import (
    Bucket,
    CachedRefusals,
    Charge,
    MemoryBucketStore,
    RateLimiter,
    SqlBucketStore,
    bucket_table,
    buckets,
    build_rate_limiter,
)
from tongban.primitives.db import make_engine
from tongban.primitives.errors import PROBLEM_BASE, RateLimited

from .hostile_harness import ADULT, OTHER_ADULT, Hostile, build_hostile, check_body


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _pseudonym(id_number: str) -> str:
    return "p-" + id_number[::-1]  # stands in for the audit log's HMAC-SM3


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    """Makes bucket stores that share state, as gunicorn workers would."""
    made: list[SqlBucketStore] = []
    if request.param == "memory":
        shared = MemoryBucketStore()
        yield lambda: shared
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gateway.db'}"
    else:
        url = request.getfixturevalue("pg_scratch_url")

    def make() -> SqlBucketStore:
        store = SqlBucketStore(url)
        if not made:
            reset_chain(store.engine, "gateway")
        store.create_schema()
        made.append(store)
        return store

    yield make
    for store in made:
        store.engine.dispose()


def _limiter(store: object, clock: Clock, **kw: Bucket | None) -> RateLimiter:
    return RateLimiter(
        store,  # type: ignore[arg-type]
        requester=kw.get("requester", Bucket(3, 1)),
        subject=kw.get("subject", Bucket(2, 0.1)),
        pseudonym=_pseudonym,
        clock=clock,
    )


def _refused(limiter: RateLimiter, requester: str, subjects: list[str], cost: int = 1) -> str:
    with pytest.raises(RateLimited) as info:
        limiter.admit(requester, subjects, cost=cost)
    problem = info.value.to_problem("r")
    assert problem["type"] == PROBLEM_BASE + "rate-limited" and problem["status"] == 429
    assert info.value.response_headers() == {"Retry-After": str(info.value.retry_after)}
    for subject in subjects:
        assert subject not in str(problem)
    return f"{info.value.limit}:{info.value.retry_after}"


def test_burst_then_refill(store_factory):
    clock = Clock()
    limiter = _limiter(store_factory(), clock, subject=None)

    for _ in range(3):
        limiter.admit("edu-bureau")
    assert _refused(limiter, "edu-bureau", []) == "requester:1"
    limiter.admit("insurer-a")  # another requester has its own bucket
    clock.now += 1.0
    limiter.admit("edu-bureau")
    assert _refused(limiter, "edu-bureau", []) == "requester:1"


def test_subject_limit_is_per_requester_and_subject(store_factory):
    clock = Clock()
    limiter = _limiter(store_factory(), clock, requester=Bucket(100, 100))

    limiter.admit("edu-bureau", [ADULT])
    limiter.admit("edu-bureau", [ADULT])
    assert _refused(limiter, "edu-bureau", [ADULT]) == "subject:10"  # 1 token at 0.1/s
    limiter.admit("edu-bureau", [OTHER_ADULT])  # another citizen
    limiter.admit("insurer-a", [ADULT])  # another requester asking about the same citizen
    clock.now += 10
    limiter.admit("edu-bureau", [ADULT])


def test_refusal_charges_nothing(store_factory):
    """All or nothing: a batch refused on one subject leaves every bucket as it was."""
    clock = Clock()
    limiter = _limiter(store_factory(), clock, requester=Bucket(5, 0.001))
    limiter.admit("edu-bureau", [ADULT, ADULT])  # duplicates count once: requester 4 left
    limiter.admit("edu-bureau", [ADULT])  # requester 3 left, ADULT exhausted

    _refused(limiter, "edu-bureau", [OTHER_ADULT, ADULT], cost=2)

    limiter.admit("edu-bureau", [OTHER_ADULT], cost=3)  # requester still had all 3
    assert _refused(limiter, "edu-bureau", []).startswith("requester:")


def test_a_batch_larger_than_the_burst_drains_the_bucket(store_factory):
    clock = Clock()
    limiter = _limiter(store_factory(), clock, subject=None)
    limiter.admit("edu-bureau", cost=10_000)
    assert _refused(limiter, "edu-bureau", []) == "requester:1"


def test_workers_share_one_budget(store_factory):
    """Two limiters on two engines (two gunicorn workers) over one table, hammered by
    threads at one frozen instant: exactly the burst is admitted, not twice it."""
    clock = Clock()
    workers = [_limiter(store_factory(), clock, requester=Bucket(40, 0.001), subject=None)
               for _ in range(2)]  # fmt: skip
    admitted: list[int] = []
    refused: list[int] = []

    def hammer(limiter: RateLimiter) -> None:
        for _ in range(30):
            try:
                limiter.admit("edu-bureau")
                admitted.append(1)
            except RateLimited:
                refused.append(1)

    threads = [threading.Thread(target=hammer, args=(w,)) for w in workers for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert (len(admitted), len(refused)) == (40, 140)


def test_sql_table_holds_no_id_number_and_purges_full_buckets(tmp_path):
    clock = Clock()
    store = SqlBucketStore(f"sqlite:///{tmp_path / 'gateway.db'}", max_full_after=20)
    store.create_schema()
    limiter = RateLimiter(
        store, requester=Bucket(3, 1), subject=Bucket(2, 0.1), pseudonym=_pseudonym, clock=clock
    )
    limiter.admit("edu-bureau", [ADULT])

    with store.engine.connect() as conn:
        rows = conn.execute(select(buckets)).all()
    dump = repr(rows)
    assert len(rows) == 2
    assert ADULT not in dump and _pseudonym(ADULT) not in dump and "edu-bureau" not in dump
    assert store.purge(clock.now + 10) == 0
    assert store.purge(clock.now + 21) == 2
    store.engine.dispose()


def test_buckets_refuse_nonsense_shapes():
    for burst, rate in ((0, 1), (1, 0), (0.5, 1), (1, -1)):
        with pytest.raises(ValueError):
            Bucket(burst, rate)


def test_settings_from_env_and_zero_turns_a_limit_off(tmp_path):
    settings = Settings.from_env(
        {
            "TONGBAN_RATE_REQUESTER_BURST": "50",
            "TONGBAN_RATE_REQUESTER_PER_SECOND": "5",
            "TONGBAN_RATE_SUBJECT_BURST": "0",
            "TONGBAN_RATE_SUBJECT_PER_SECOND": "0.25",
        }
    )
    assert (settings.rate_requester_burst, settings.rate_requester_per_second) == (50, 5)
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    limiter = build_rate_limiter(
        url,
        requester_burst=settings.rate_requester_burst,
        requester_per_second=settings.rate_requester_per_second,
        subject_burst=settings.rate_subject_burst,
        subject_per_second=settings.rate_subject_per_second,
        pseudonym=_pseudonym,
    )
    assert limiter is not None
    assert limiter.requester == Bucket(50, 5) and limiter.subject is None
    assert isinstance(limiter.store, SqlBucketStore)
    limiter.store.engine.dispose()
    off = build_rate_limiter(
        url,
        requester_burst=0,
        requester_per_second=1,
        subject_burst=1,
        subject_per_second=0,
        pseudonym=_pseudonym,
    )
    assert off is None


# --- over HTTP, through build_gateway -----------------------------------------------------


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[Hostile]:
    h = build_hostile(
        tmp_path,
        rate_requester_burst=4,
        rate_requester_per_second=0.01,
        rate_subject_burst=2,
        rate_subject_per_second=0.01,
    )
    yield h
    h.close()


def _counted(requester: str) -> float:
    # Counted by claim and purpose: no metric names the requester (gateway/metrics.py).
    labels = {"claim": "birth_registered", "purpose": "school_enrollment",
              "outcome": "rate_limited"}  # fmt: skip
    return REGISTRY.get_sample_value("tongban_checks_total", labels) or 0.0


def test_http_429_is_problem_json_with_retry_after_and_no_answer(strict: Hostile):
    auth = strict.auth("edu-bureau")
    for _ in range(2):
        assert strict.client.post("/v1/checks", json=check_body(), headers=auth).status_code == 200
    before, counted = strict.audit_size(), _counted("edu-bureau")

    resp = strict.client.post("/v1/checks", json=check_body(), headers=auth)

    body = resp.get_json()
    assert resp.status_code == 429, body
    assert resp.mimetype == "application/problem+json"
    assert body["type"] == PROBLEM_BASE + "rate-limited" and body["limit"] == "subject"
    assert int(resp.headers["Retry-After"]) == body["retry_after"] >= 1
    assert "answer" not in body and ADULT not in resp.get_data(as_text=True)
    assert strict.audit_size() == before  # refused before the pipeline: nothing audited
    assert _counted("edu-bureau") == counted + 1
    # The same requester may still ask about someone else, until its own bucket runs dry.
    other = strict.client.post("/v1/checks", json=check_body(OTHER_ADULT), headers=auth)
    assert other.status_code == 200
    batch = strict.client.post(
        "/v1/checks/batch",
        json={"claim": "birth_registered", "purpose": "school_enrollment",
              "subjects": [{"id_number": OTHER_ADULT}, {"id_number": "123"}]},
        headers=auth,
    )  # fmt: skip
    assert batch.status_code == 429
    assert batch.get_json()["limit"] == "requester"  # 3 used, the batch costs 2


def test_invalid_requests_are_refused_before_being_charged(strict: Hostile):
    auth = strict.auth("insurer-a")
    for _ in range(10):
        resp = strict.client.post("/v1/checks", json=check_body("123"), headers=auth)
        assert resp.status_code == 422
    resp = strict.client.post("/v1/checks", json=check_body(), headers=auth)
    assert resp.status_code != 429


def test_build_gateway_wires_the_configured_limits(strict: Hostile):
    checker = strict.gateway.checker
    assert checker is not None and checker.rate_limiter is not None
    assert checker.rate_limiter.requester == Bucket(4, 0.01)
    assert checker.rate_limiter.subject == Bucket(2, 0.01)
    assert isinstance(checker.rate_limiter.store, SqlBucketStore)


# --- CachedRefusals and the token endpoint's buckets ---------------------------------------


class CountingStore:
    """A real MemoryBucketStore that counts the takes reaching it."""

    def __init__(self) -> None:
        self.inner = MemoryBucketStore()
        self.takes = 0

    def take(self, charges: Sequence[Charge], now: float) -> tuple[Charge, float] | None:
        self.takes += 1
        return self.inner.take(charges, now)


def test_cached_refusals_answer_a_flood_from_memory_and_never_over_admit():
    clock = Clock()
    counting = CountingStore()
    limiter = _limiter(CachedRefusals(counting), clock, requester=Bucket(3, 1), subject=None)
    for _ in range(3):
        limiter.admit("edu-bureau")
    for _ in range(50):
        assert _refused(limiter, "edu-bureau", []) == "requester:1"
    assert counting.takes == 4  # three admissions and the first refusal
    limiter.admit("insurer-a")  # other buckets are not affected
    clock.now += 0.5
    assert _refused(limiter, "edu-bureau", []) == "requester:1"  # still short: remembered
    assert counting.takes == 5
    clock.now += 0.5  # one token back: the store is asked again, and admits exactly one
    limiter.admit("edu-bureau")
    assert _refused(limiter, "edu-bureau", []) == "requester:1"
    assert counting.takes == 7


def test_bucket_tables_are_separate_families(tmp_path):
    """The token endpoint's buckets live in their own table: the check limiter's purge
    (tuned to its own refill times) cannot delete them, nor they its."""
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    other = bucket_table("oauth_rate_buckets", MetaData())
    checks = SqlBucketStore(url, max_full_after=1)
    tokens = SqlBucketStore(url, max_full_after=3600, table=other)
    checks.create_schema()
    tokens.create_schema()
    clock = Clock()
    _limiter(checks, clock, subject=None).admit("edu-bureau")
    _limiter(tokens, clock, requester=Bucket(1, 0.001), subject=None).admit("edu-bureau")

    assert checks.purge(clock.now + 2) == 1
    assert _refused(_limiter(tokens, clock, requester=Bucket(1, 0.001), subject=None),
                    "edu-bureau", []).startswith("requester:")  # fmt: skip
    with pytest.raises(ValueError):
        bucket_table("x; DROP TABLE y", MetaData())
    checks.engine.dispose()
    tokens.engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def oauth_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gateway.db'}"
    else:
        url = request.getfixturevalue("pg_scratch_url")
    engine = make_engine(url)
    reset_chain(engine, "gateway")
    oauth_schema.create_schema(engine)
    yield engine
    engine.dispose()


def test_token_throttle_budget_is_shared_by_workers(oauth_engine):
    """Two workers' throttles (each its own engine and refusal cache) on one database,
    hammered by threads: the client id's burst is admitted once in all, not per worker."""
    workers = [TokenThrottle.on_engine(oauth_engine, client=Bucket(25, 0.001),
                                       source=Bucket(1000, 1)) for _ in range(2)]  # fmt: skip
    admitted: list[str] = []
    refused: list[str] = []

    def hammer(throttle: TokenThrottle, n: int) -> None:
        for i in range(20):
            try:
                throttle.admit("edu-bureau", f"10.0.{n}.{i}")
                admitted.append("ok")
            except RateLimited as exc:
                refused.append(exc.limit)

    threads = [threading.Thread(target=hammer, args=(w, n))
               for n, w in enumerate(workers * 2)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(admitted) == 25 and refused == ["client"] * 55
    with oauth_engine.connect() as conn:
        dump = repr(conn.execute(select(oauth_schema.token_buckets)).all())
    assert "edu-bureau" not in dump and "10.0." not in dump
    for w in workers:
        w.dispose()


def test_token_throttle_keys_and_claimed_ids():
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8::1") == source_of("2001:db8::ffff:1") == "2001:db8::/64"
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of(None) == source_of("not an address") == "unknown"
    basic = "Basic " + base64.b64encode(b"edu-bureau:secret").decode()
    assert claimed_client_id(basic, {}) == "edu-bureau"
    for spelling in (b"edu%2Dbureau", b"%65du-bureau", b"%65%64%75-bureau"):  # one bucket
        encoded = "Basic " + base64.b64encode(spelling + b":secret").decode()
        assert claimed_client_id(encoded, {}) == "edu-bureau"
    assert claimed_client_id("Basic !!!", {}) is None
    header = base64.urlsafe_b64encode(b'{"alg":"SM2"}').decode().rstrip("=")
    claims = base64.urlsafe_b64encode(b'{"sub":"bank-sm","iss":"bank-sm"}').decode().rstrip("=")
    assert claimed_client_id(None, {"client_assertion": f"{header}.{claims}.sig"}) == "bank-sm"
    assert claimed_client_id(None, {"client_assertion": "garbage"}) is None
    assert claimed_client_id(None, {"client_id": "x" * 1000}) == "x" * 256
