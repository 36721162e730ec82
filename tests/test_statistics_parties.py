"""Statistics summed over many departments through the signed protocol: 12 simulated
county bureaus (the benchmark's setup at a small size). Exact sums without noise; with ε,
the noise of the decrypted total has the declared distribution although every department
added only its share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from phe import PaillierPrivateKey, PaillierPublicKey

from bench.bench_statistics import Setup, build
from tongban.adapters.client import InProcessTransport
from tongban.federation.paillier import decrypt_vector, generate_keypair, public_key_to_jwk
from tongban.federation.statistics import Release
from tongban.gateway.models import StatisticRequest
from tongban.primitives.bodies import parse_body

PARTIES = 12
COUNTERS = 400  # 5 ciphertexts per department


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = build(PARTIES, COUNTERS, tmp_path_factory.mktemp("parties"), pool_size=8)
    yield s
    s.close()


@pytest.fixture(scope="module")
def keys() -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    return generate_keypair(2048)


def _decrypt(setup: Setup, keys: Any, job: dict[str, Any], release: Release) -> list[int]:
    pub, priv = keys
    stat = setup.statistic
    layout = stat.layout(pub.n, PARTIES, release)
    raw = decrypt_vector(priv, [int(h, 16) for h in job["ciphertexts"]], layout)
    offsets = stat.offsets(release, PARTIES)
    return [v - PARTIES * o for v, o in zip(raw, offsets, strict=True)]


def _job(setup: Setup, keys: Any, dp: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "statistic": "bench_counts",
        "params": {},
        "public_key": public_key_to_jwk(keys[0]),
    }
    if dp is not None:
        body["dp"] = {"epsilon": dp}
    job = setup.service.get(
        "analyst", setup.service.submit("analyst", parse_body(StatisticRequest, body))["id"]
    )
    assert job["status"] == "done", job.get("failed")
    return job


@pytest.mark.slow
def test_twelve_departments_sum_exactly(setup: Setup, keys: Any):
    job = _job(setup, keys)
    assert job["layout"]["parties"] == PARTIES
    assert job["release"]["suppressed_by"] == "analyst"  # no department sees a cell total
    assert _decrypt(setup, keys, job, Release(1)) == setup.expected


@pytest.mark.slow
def test_distributed_noise_has_the_declared_distribution(setup: Setup, keys: Any):
    eps = 0.5
    (mech,) = setup.statistic.noise(Release(1, eps), PARTIES)
    noise: list[int] = []
    for _ in range(3):
        job = _job(setup, keys, eps)
        values = _decrypt(setup, keys, job, Release(1, eps))
        noise += [v - e for v, e in zip(values, setup.expected, strict=True)]
    n = len(noise)
    var = sum(x * x for x in noise) / n
    # 1,200 draws: the sample variance of a discrete Laplace of variance ~8.4 is within
    # 25 % with overwhelming probability; a single department's share would be ~12x smaller.
    assert var == pytest.approx(mech.variance, rel=0.25)
    assert abs(sum(noise) / n) < 0.5
    zero = sum(1 for x in noise if x == 0) / n
    assert zero == pytest.approx((1 - mech.alpha) / (1 + mech.alpha), abs=0.05)


def test_a_tampered_share_is_refused(setup: Setup, keys: Any, monkeypatch: pytest.MonkeyPatch):
    # Changed after signing, before sealing: only the signature can tell.
    transport = setup.service.departments.transport
    assert isinstance(transport, InProcessTransport)
    core = transport.cores["county-03"]
    original = core.handle_jws

    def tampered(token: str) -> str:
        head, payload, sig = original(token).split(".")
        return f"{head}.{payload[:-4]}AAAA.{sig}"

    monkeypatch.setattr(core, "handle_jws", tampered)
    body = {"statistic": "bench_counts", "params": {}, "public_key": public_key_to_jwk(keys[0])}
    job = setup.service.get(
        "analyst", setup.service.submit("analyst", parse_body(StatisticRequest, body))["id"]
    )
    assert job["status"] == "failed"
    assert job["failed"] == [{"department": "county-03", "problem": "unauthenticated"}]
    assert "ciphertexts" not in job
