"""Packed Paillier statistics: 12 departments x 10,000 counters under one 2048-bit key.

Product path (``federation.paillier``): counters packed ``slots_per_ciphertext`` to a
plaintext, obfuscators ``r^n mod n^2`` precomputed by an :class:`ObfuscatorPool` on two
threads (gmpy2 releases the GIL), so the online phase is one multiplication per ciphertext;
the gateway multiplies ciphertexts; the analyst decrypts with CRT on two threads.

Phases, all 12 simulated departments in this one process on this machine's cores:

* offline: filling the pools (every modular exponentiation of the job);
* online: pack + encrypt all 12 vectors with pool obfuscators;
* aggregation: the gateway's ciphertext products;
* decryption: CRT decryption + unpack, checked equal to the plaintext sums.

Baseline in the same run: python-paillier's per-value ``public_key.encrypt(v)`` (one
exponentiation per value), its ``+`` on EncryptedNumbers and ``private_key.decrypt``, each
timed on a 200-value sample and **extrapolated** to 120,000 encryptions, 110,000 additions
and 10,000 decryptions.

Run: ``python -m bench.bench_paillier`` (prints JSON).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gmpy2

from bench.common import machine
from tongban.federation.paillier import (
    ObfuscatorPool,
    PackingLayout,
    aggregate,
    decrypt_vector,
    encrypt_vector,
    generate_keypair,
    random_obfuscator,
)

PARTIES = 12
COUNTERS = 10_000
VALUE_BOUND = 100_000
KEY_BITS = 2048
SAMPLE = 200
WORKERS = 2


def _modexp_ms(n: Any, nsquare: Any, count: int = 30) -> float:
    """Median wall time of one 2048-bit ``r^n mod n^2`` with gmpy2, single thread."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        random_obfuscator(n, nsquare)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000.0


def _threads_seconds(n: Any, nsquare: Any, threads: int, per_thread: int, release: bool) -> float:
    """Wall time for ``threads`` threads doing ``per_thread`` modexps each."""

    def work() -> None:
        gmpy2.get_context().allow_release_gil = release  # the flag is per thread
        for _ in range(per_thread):
            random_obfuscator(n, nsquare)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    start = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return time.perf_counter() - start


def _gil_probe(n: Any, nsquare: Any, per_thread: int = 20) -> dict[str, float]:
    """Does gmpy2 powmod run in parallel on threads? Throughput vs one thread."""
    one = _threads_seconds(n, nsquare, 1, 2 * per_thread, release=True)
    held = _threads_seconds(n, nsquare, WORKERS, per_thread, release=False)
    released = _threads_seconds(n, nsquare, WORKERS, per_thread, release=True)
    return {
        "speedup_2_threads_gil_held": round(one / held, 2),
        "speedup_2_threads_gil_released": round(one / released, 2),
    }


def _baseline(pub: Any, priv: Any, rng: random.Random) -> dict[str, float]:
    """Per-value phe on a sample, extrapolated (stated as such in the output)."""
    sample = [rng.randint(0, VALUE_BOUND) for _ in range(SAMPLE)]
    start = time.perf_counter()
    encrypted = [pub.encrypt(v) for v in sample]
    encrypt_ms = (time.perf_counter() - start) / SAMPLE * 1000.0
    start = time.perf_counter()
    summed = [a + b for a, b in zip(encrypted, reversed(encrypted), strict=True)]
    add_ms = (time.perf_counter() - start) / SAMPLE * 1000.0
    start = time.perf_counter()
    for number in summed:
        priv.decrypt(number)
    decrypt_ms = (time.perf_counter() - start) / SAMPLE * 1000.0
    encrypt_s = encrypt_ms * PARTIES * COUNTERS / 1000.0
    add_s = add_ms * (PARTIES - 1) * COUNTERS / 1000.0
    decrypt_s = decrypt_ms * COUNTERS / 1000.0
    return {
        "sample_values": SAMPLE,
        "encrypt_ms_per_value": round(encrypt_ms, 3),
        "add_ms_per_value": round(add_ms, 4),
        "decrypt_ms_per_value": round(decrypt_ms, 3),
        "encrypt_s_extrapolated": round(encrypt_s, 1),
        "aggregation_s_extrapolated": round(add_s, 2),
        "decryption_s_extrapolated": round(decrypt_s, 1),
        "end_to_end_s_extrapolated": round(encrypt_s + add_s + decrypt_s, 1),
    }


def run() -> dict[str, Any]:
    """Measure everything once; returns figures, the baseline, ratios and the modexp limit."""
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    rng = random.Random(6)

    t0 = time.perf_counter()
    pub, priv = generate_keypair(KEY_BITS)
    keygen_s = time.perf_counter() - t0
    n, nsquare = gmpy2.mpz(pub.n), gmpy2.mpz(pub.nsquare)

    modexp_ms = _modexp_ms(n, nsquare)
    gil = _gil_probe(n, nsquare)

    layout = PackingLayout.for_key(pub.n, COUNTERS, VALUE_BOUND, PARTIES)
    vectors = [[rng.randint(0, VALUE_BOUND) for _ in range(COUNTERS)] for _ in range(PARTIES)]
    vectors[0][:100] = [VALUE_BOUND] * 100  # some counters at the packing boundary
    expected = [sum(column) for column in zip(*vectors, strict=True)]
    modexps = PARTIES * layout.ciphertexts

    with ObfuscatorPool(pub, size=modexps, workers=WORKERS) as pool:
        t0 = time.perf_counter()
        assert pool.wait_full()
        offline_s = time.perf_counter() - t0
        # Online runs while the pool refills in the background, as it would in an adapter.
        t0 = time.perf_counter()
        encrypted = [encrypt_vector(pub, v, layout, pool) for v in vectors]
        online_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    total = aggregate(pub, encrypted, layout)
    aggregation_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = decrypt_vector(priv, total, layout, COUNTERS, workers=WORKERS)
    decryption_s = time.perf_counter() - t0
    exact = result == expected
    assert exact, "decrypted sums differ from the plaintext sums"

    warm_s = online_s + aggregation_s + decryption_s
    cold_s = offline_s + warm_s
    limit_s = modexps * modexp_ms / 1000.0 / WORKERS
    baseline = _baseline(pub, priv, rng)

    return {
        "name": "paillier",
        "machine": machine(),
        "load_average_1min_at_start": round(load_before, 2),
        "setup": {
            "parties": PARTIES,
            "counters": COUNTERS,
            "value_bound": VALUE_BOUND,
            "key_bits": KEY_BITS,
            "workers": WORKERS,
            "slot_bits": layout.slot_bits,
            "slots_per_ciphertext": layout.slots_per_ciphertext,
            "ciphertexts_per_party": layout.ciphertexts,
            "ciphertext_bytes_per_party": layout.ciphertexts * KEY_BITS * 2 // 8,
        },
        "figures": {
            "keygen_s": round(keygen_s, 2),
            "offline_s": round(offline_s, 3),
            "offline_per_department_s": round(offline_s / PARTIES, 3),
            "online_s": round(online_s, 3),
            "aggregation_s": round(aggregation_s, 3),
            "decryption_s": round(decryption_s, 3),
            "end_to_end_warm_pools_s": round(warm_s, 3),
            "end_to_end_cold_pools_one_machine_s": round(cold_s, 3),
            "end_to_end_cold_pools_per_department_s": round(offline_s / PARTIES + warm_s, 3),
            "exact": exact,
        },
        "baseline": baseline,
        "ratio": {
            "end_to_end_vs_baseline_cold": round(baseline["end_to_end_s_extrapolated"] / cold_s, 1),
            "end_to_end_vs_baseline_warm": round(baseline["end_to_end_s_extrapolated"] / warm_s, 1),
            "encryption_vs_baseline_offline_plus_online": round(
                baseline["encrypt_s_extrapolated"] / (offline_s + online_s), 1
            ),
            "online_vs_baseline_encryption": round(
                baseline["encrypt_s_extrapolated"] / online_s, 1
            ),
        },
        "modexp_limit": {
            "modexp_ms_2048_single_thread": round(modexp_ms, 2),
            **gil,
            "modexps_needed": modexps,
            "modexps_needed_per_value_baseline": PARTIES * COUNTERS,
            "limit_s_on_2_cores": round(limit_s, 3),
            "offline_efficiency_vs_limit": round(limit_s / offline_s, 2),
        },
        "goals": {
            "online_under_1s": online_s < 1.0,
            "end_to_end_under_5s_warm_pools": warm_s < 5.0,
            "end_to_end_under_5s_cold_pools_one_machine": cold_s < 5.0,
        },
        "notes": {
            "baseline": f"per-value phe timed on {SAMPLE} values and extrapolated, not run in full",
            "cold_one_machine": "all 12 departments' exponentiations on this machine's 2 cores",
            "cold_per_department": "each department fills its own pool on its own 2 cores",
            "runtime_s": round(time.perf_counter() - started, 1),
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
