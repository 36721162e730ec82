"""Vertical LR: encodings at their bounds, exact encrypted gradients, what each party
receives (checked against the table in docs/federation.md), and quality."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import gmpy2
import numpy as np
import pytest

from tests.conftest import RecordingAudit
from tongban.federation.packing import OutOfBounds
from tongban.federation.psi import Transcript
from tongban.federation.vertical import (
    LABEL_HOLDER,
    Relay,
    VKind,
    run_on_table,
    setup_job,
    split_departments,
    synthetic_table,
)
from tongban.federation.vertical.encoding import (
    RESIDUAL_MAX,
    RESIDUAL_OFFSET,
    STAT_BITS,
    DiagonalLayout,
    decode_logits,
    encode_features,
    encode_logits,
    encode_residuals,
)
from tongban.federation.vertical.multiexp import multiexp
from tongban.federation.vertical.runner import _step
from tongban.gateway.models import FederationJobRequest
from tongban.primitives.bodies import parse_body

NOTES = Path(__file__).resolve().parent.parent / "docs" / "federation.md"  # who receives what


# -- encodings ------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_feature_encoding_clips_and_stays_non_negative(bits):
    x = np.array([-100.0, -8.0, -1e-9, 0.0, 7.999, 8.0, 100.0])
    enc = encode_features(x, bits)
    assert enc.min() == 0 and enc.max() == (1 << bits) - 1
    assert enc[3] == 1 << (bits - 1)
    assert enc[1] == 0
    with pytest.raises(OutOfBounds):
        encode_features(x, 17)


def test_residual_encoding_bounds():
    enc = encode_residuals(np.array([-1.0, 0.0, 1.0]))
    assert enc.tolist() == [0, RESIDUAL_OFFSET, RESIDUAL_MAX]
    with pytest.raises(OutOfBounds):
        encode_residuals(np.array([1.5]))
    with pytest.raises(OutOfBounds):
        encode_residuals(np.array([np.nan]))


def test_logits_wrap_and_cancel_masks_mod_2_64():
    u = np.array([-3.25, 0.0, 1e-6, 1000.5])
    mask = np.array([2**64 - 1, 12345, 2**63, 7], dtype=np.uint64)
    assert np.allclose(decode_logits(encode_logits(u) + mask - mask), u, atol=2**-23)
    with pytest.raises(OutOfBounds):
        encode_logits(np.array([2.0**31]))


@pytest.mark.parametrize("bits", [8, 12])
@pytest.mark.parametrize("batch", [1, 7, 1024, 100_000])
def test_layout_invariants_and_extreme_products(batch, bits):
    layout = DiagonalLayout(batch, 2048, bits)
    k, s = layout.slots, layout.slot_bits
    assert (2 * k - 1) * s <= 2047
    # Worst case: every residual and feature at its maximum in one block, summed over the
    # batch; the middle coefficient must come out exact, never carrying.
    r = np.full(min(batch, k), RESIDUAL_MAX, dtype=np.int64)
    x = np.full(len(r), layout.feature_max, dtype=np.int64)
    (packed,) = layout.pack_residuals(r)
    digits = layout.block_digits(x)[0]
    exponent = sum(int(d) << ((k - 1 - j) * s) for j, d in enumerate(digits))
    product = packed * exponent - packed * layout.offset_exponent()
    mask, middle = layout.draw_mask()
    assert middle >= 1 << layout.value_bits
    plain = product + mask
    assert 0 < plain < 1 << ((2 * k - 1) * s)
    expected = int(r @ (x - layout.feature_offset))
    assert layout.middle(plain) - middle == expected
    with pytest.raises(OutOfBounds):
        layout.middle(1 << ((2 * k - 1) * s))


def test_layout_refuses_out_of_range_inputs():
    layout = DiagonalLayout(16, 2048)
    with pytest.raises(OutOfBounds):
        layout.pack_residuals(np.array([RESIDUAL_MAX + 1]))
    with pytest.raises(OutOfBounds):
        layout.pack_residuals(np.zeros(17, dtype=np.int64))
    with pytest.raises(OutOfBounds):
        layout.block_digits(np.array([-1]))
    with pytest.raises(OutOfBounds):
        DiagonalLayout(16, 1024)
    assert layout.slot_bits - layout.value_bits == STAT_BITS + 1


def test_multiexp_matches_pow():
    rng = random.Random(5)
    modulus = gmpy2.mpz(rng.getrandbits(256) | 1)
    for _ in range(10):
        blocks, slots, width = rng.randint(1, 12), rng.randint(1, 4), rng.randint(12, 30)
        offsets = [(slots - 1 - k) * width for k in range(slots)]
        bases = [gmpy2.mpz(rng.randrange(2, int(modulus))) for _ in range(blocks)]
        digits = np.array(
            [[rng.choice([0, rng.randrange(1 << 12)]) for _ in range(slots)] for _ in bases]
        )
        expected = 1
        for b, base in enumerate(bases):
            e = sum(int(d) << o for d, o in zip(digits[b], offsets, strict=True))
            expected = expected * pow(int(base), e, int(modulus)) % int(modulus)
        assert int(multiexp(bases, digits, offsets, 12, modulus)) == expected


# -- the protocol -----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[12, 8], ids=["12-bit", "8-bit"])
def small_job(request):
    table = synthetic_table(240, 3, seed=3)
    views = split_departments(table, missing=0.1, seed=3)
    relay = Relay()
    job = setup_job(
        views,
        epochs=1,
        batch_size=64,
        learning_rate=0.5,
        l2=0.0,
        relay=relay,
        feature_bits=request.param,
    )
    yield job, views
    job.close()


def test_encrypted_gradient_step_equals_the_plaintext_step(small_job):
    job, _ = small_job
    guest, hosts = job.guest, job.hosts
    rng = np.random.default_rng(0)
    for party in job.parties:  # start from non-zero weights so the logits matter
        party.weights = rng.normal(0, 0.3, len(party.weights))
    guest.bias = 0.1
    before = {p.name: p.weights.copy() for p in job.parties}
    positions = job.train_positions[:50]
    z = guest.features[positions] @ before[guest.name] + 0.1
    for h in hosts:
        z += h.values[positions] @ before[h.name]
    r = 1 / (1 + np.exp(-z)) - guest.labels[positions]
    r_fixed = (encode_residuals(r) - RESIDUAL_OFFSET) / RESIDUAL_OFFSET
    _step(job, positions, "test/0")
    lr = job.plan.learning_rate
    for h in hosts:
        x = (h.encoded[positions] - h.layout.feature_offset) / float(1 << h.layout.feature_frac)
        expected = before[h.name] - lr * x.T @ r_fixed / len(positions)
        assert np.allclose(h.weights, expected, rtol=0, atol=1e-12)
    expected_guest = before[guest.name] - lr * guest.features[positions].T @ r / len(positions)
    assert np.allclose(guest.weights, expected_guest, atol=1e-9)


def _table_rows() -> dict[str, set[str]]:
    """``kind -> recipients`` from the table in docs/federation.md of who receives what."""
    rows: dict[str, set[str]] = {}
    for line in NOTES.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*`(vlr\.[a-z_]+|psi\.[a-z_]+)`\s*\|([^|]*)\|([^|]*)\|", line)
        if m:
            rows[m.group(1)] = {r.strip() for r in m.group(3).split(",") if r.strip()}
    return rows


def _role(name: str) -> str:
    if name == "gateway":
        return "coordinator"
    return "label holder" if name == LABEL_HOLDER else "feature holder"


def test_every_message_of_a_whole_job_matches_the_readme_table():
    relay, psi = Relay(), Transcript()
    table = synthetic_table(200, 2, seed=4)
    run_on_table(table, epochs=1, batch_size=64, relay=relay, psi_transcript=psi)
    documented = _table_rows()
    assert documented, "docs/federation.md must carry the table"
    seen: dict[str, set[str]] = {}
    received = [(m.kind.value, m.recipient) for m in relay.messages] + [
        (m.kind.value, m.recipient) for m in psi.messages
    ]
    for kind, recipient in received:
        role = _role(recipient)
        if kind.startswith("psi.") and role != "coordinator":
            role = "department"
        seen.setdefault(kind, set()).add(role)
    assert seen == documented
    # The coordinator relays everything but is never handed a private key or raw data.
    for message in relay.received_by("gateway"):
        if message.kind is VKind.PUBLIC_KEY:
            assert set(message.payload) == {"kty", "alg", "key_ops", "n", "kid"}
        assert not isinstance(message.payload, np.ndarray) or message.payload.dtype == np.uint64


def test_feature_holders_receive_no_plaintext_residuals_labels_or_features(small_job):
    job, _ = small_job
    job.relay.messages.clear()
    positions = job.train_positions[:64]
    _step(job, positions, "view/0")
    nsquare = int(job.guest.public_key.nsquare)
    for host in job.hosts:
        received = job.relay.received_by(host.name)
        assert {m.kind for m in received} == {VKind.ENCRYPTED_RESIDUALS, VKind.GRADIENT_SLOTS}
        for m in received:
            assert isinstance(m.payload, list)
            assert all(type(v) is int for v in m.payload)
            if m.kind is VKind.ENCRYPTED_RESIDUALS:
                assert len(m.payload) == job.guest.layout.blocks(len(positions))
                assert all(0 < c < nsquare for c in m.payload)
            else:  # one masked slot per own feature: above 2^v, so never the bare sum
                assert len(m.payload) == len(host.weights)
                assert all(v >= 1 << job.guest.layout.value_bits for v in m.payload)


def test_label_holder_sees_only_masked_logits(small_job):
    job, _ = small_job
    job.relay.messages.clear()
    positions = job.train_positions[:64]
    weights = {h.name: h.weights.copy() for h in job.hosts}  # the step updates them
    _step(job, positions, "mask/0")
    received = job.relay.received_by(job.guest.name)
    assert {m.kind for m in received} == {VKind.MASKED_LOGITS, VKind.MASKED_GRADIENT}
    logits = [m for m in received if m.kind is VKind.MASKED_LOGITS]
    total = np.zeros(len(positions), dtype=np.uint64)
    plain = np.zeros(len(positions))
    for m, host in zip(logits, job.hosts, strict=True):
        assert m.payload.dtype == np.uint64 and m.payload.shape == (len(positions),)
        own = host.values[positions] @ weights[host.name]
        # Each message is its plaintext plus a mask that does not cancel on its own.
        assert not np.allclose(decode_logits(m.payload), own, atol=1e-3)
        total += m.payload
        plain += own
    # Even the sum the relay could form is masked (the label holder's own mask share).
    assert not np.allclose(decode_logits(total), plain, atol=1e-3)
    unmasked = decode_logits(total + job.guest.masks.mask("mask/0", len(positions)))
    assert np.allclose(unmasked, plain, atol=1e-5)


def test_decrypted_gradients_are_masked_in_every_coefficient(small_job):
    job, _ = small_job
    positions = job.train_positions[:64]
    guest, host = job.guest, job.hosts[0]
    masked = {h.name: h.masked_logits(positions, "coef/0") for h in job.hosts}
    residuals = guest.encrypted_residuals(positions, "coef/0", masked)
    layout = guest.layout
    for ciphertext in host.masked_gradient(positions, residuals):
        plain = guest._private_key.raw_decrypt(ciphertext)
        for m in range(layout.coefficients):
            slot = (plain >> (m * layout.slot_bits)) & ((1 << layout.slot_bits) - 1)
            assert slot > 0  # mask in [2^v, ...) minus at most 2^v: never the bare value
    host._pending = None


def test_refuses_tampered_ciphertexts(small_job):
    job, _ = small_job
    positions = job.train_positions[:64]
    host = job.hosts[0]
    with pytest.raises(ValueError, match="residuals"):
        host.masked_gradient(positions, [0] * job.guest.layout.blocks(64))
    with pytest.raises(ValueError, match="residuals"):
        host.masked_gradient(positions, [2])


# -- quality ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_auc_within_0_01_of_centralized_on_synthetic_data():
    table = synthetic_table(2000, 3, seed=1)
    report = run_on_table(table, epochs=3, batch_size=512, learning_rate=0.5, missing=0.05)
    assert report["psi"]["intersection"] < 2000  # the departments' sets differ
    assert report["auc_centralized"] > 0.7
    assert abs(report["auc_federated"] - report["auc_centralized"]) <= 0.01
    assert report["epsilon"] is None
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]


@pytest.mark.slow
def test_cli_trains_vertically_and_writes_the_report(small_population, tmp_path, capsys):
    from tongban.cli import main

    report_path = tmp_path / "vertical.json"
    argv = ["federation", "train", "--kind", "vertical", "--data-dir", str(small_population.dir)]
    code = main([*argv, "--rounds", "2", "--batch-size", "64", "--report", str(report_path)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epsilon"] is None
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["kind"] == "vertical"
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert report["auc_federated"] == summary["auc_federated"]
    assert 0.0 <= report["auc_centralized"] <= 1.0
    assert report["departments"] == ["hrss", "health", "civil"]
    sizes = report["psi"]["sizes"]
    assert report["psi"]["intersection"] < min(sizes.values())


def test_fixed_base_obfuscators_encrypt_correctly_and_never_repeat(small_job):
    from tongban.federation.vertical.randomness import FixedBaseObfuscators

    job, _ = small_job
    pk = job.guest.public_key
    source = FixedBaseObfuscators(pk)
    n, nsquare = gmpy2.mpz(pk.n), gmpy2.mpz(pk.nsquare)
    key = job.guest._private_key
    obfuscators = [source.take_mpz() for _ in range(20)]
    assert len({int(o) for o in obfuscators}) == 20
    for m, r in zip([0, 1, 2**1000, int(n) - 1], obfuscators, strict=False):
        # An n-th residue has order dividing lambda = lcm(p - 1, q - 1) modulo n^2.
        assert gmpy2.powmod(r, gmpy2.lcm(key.p - 1, key.q - 1), nsquare) == 1
        assert job.guest._decrypt(int((n * m + 1) * r % nsquare)) == m


def test_api_job_runs_vertically_audited_and_stored(small_population, claim_catalog, tmp_path):
    """POST /v1/federation/jobs with kind "vertical": policy on federation:vertical, the real
    PSI + hetero-LR coordinator, audit at start and end, the job kept in the store."""
    from tongban.gateway.federation_jobs import FederationJobs
    from tongban.gateway.jobs import JobDenied, JobPolicy
    from tongban.gateway.statistics_store import StatisticsStore
    from tongban.policies import PolicyEnforcer, build_policy, default_legal_bases, default_rules

    audit = RecordingAudit()
    policy = PolicyEnforcer(build_policy(default_rules(), default_legal_bases(), claim_catalog))
    store = StatisticsStore(f"sqlite:///{tmp_path / 'gateway.db'}", create=True)
    jobs = FederationJobs(small_population.dir, audit, jobs=JobPolicy(policy, audit), store=store)
    try:
        with pytest.raises(JobDenied):
            jobs.submit(
                "edu-bureau", parse_body(FederationJobRequest, {"kind": "vertical", "rounds": 1})
            )
        job = jobs.submit(
            "analyst",
            parse_body(FederationJobRequest, {"kind": "vertical", "rounds": 1, "batch_size": 64}),
        )
        jobs.wait(job["id"], timeout=120)
        state = jobs.get("analyst", job["id"])
    finally:
        jobs.close()
    assert state["status"] == "done", state.get("error")
    assert state["config"] == {"kind": "vertical", "rounds": 1, "batch_size": 64}
    assert state["departments"] == ["civil", "health", "hrss"]
    assert len(state["rounds"]) == 1 and len(state["result"]["model_sm3"]) == 64
    assert store.load(job["id"], "analyst") == state
    denied, started, completed = audit.entries
    assert denied["kind"] == "job_denied" and denied["object"] == "federation:vertical"
    assert started["event"] == "started" and started["object"] == "federation:vertical"
    assert completed["event"] == "completed"
    assert completed["model_sm3"] == state["result"]["model_sm3"]
