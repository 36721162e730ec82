"""National-crypto benchmark: the product path against pure-Python gmssl, in one run.

Product: SM2 via Tongsuo (C), SM3 via ``hashlib``, SM4-GCM via ``cryptography``.
Baseline: ``gmssl`` 3.2.2 (pure Python) SM2 ``sign_with_sm3``/``verify_with_sm3``,
``sm3.sm3_hash`` and ``CryptSM4`` CBC. Sizes are chosen so the whole run stays well under
30 s; each figure is the best of a few repeats, to damp scheduler noise.

Run: ``python bench/bench_crypto.py`` (prints JSON).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gmssl import sm3 as gmssl_sm3
from gmssl import sm4 as gmssl_sm4

from tongban.primitives import gm

_MB = 1024 * 1024


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls to ``fn`` (one warm-up call first)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _ms_per_op(op: Callable[[], object], n: int, repeats: int = 3) -> float:
    def batch() -> None:
        for _ in range(n):
            op()

    return _best_seconds(batch, repeats) / n * 1000.0


def _mb_per_s(op: Callable[[], object], size: int, repeats: int = 3) -> float:
    return size / _MB / _best_seconds(op, repeats)


def _sm2(backend: gm.SM2Backend, n: int) -> tuple[float, float]:
    key = gm.SM2PrivateKey.generate()
    pub = key.public_key
    msg = b'{"answer":true,"sub":"q-1"}' * 8
    sig = backend.sign(key.d, msg)
    sign_ms = _ms_per_op(lambda: backend.sign(key.d, msg), n)
    verify_ms = _ms_per_op(lambda: backend.verify(pub.x, pub.y, msg, sig), n)
    return sign_ms, verify_ms


def _gmssl_sm4_cbc(key: bytes, iv: bytes, data: bytes) -> bytes:
    crypt = gmssl_sm4.CryptSM4()
    crypt.set_key(key, gmssl_sm4.SM4_ENCRYPT)
    out: bytes = crypt.crypt_cbc(iv, data)
    return out


def run() -> dict[str, object]:
    """Measure everything once; returns ``{"name", "figures", "baseline", "speedup"}``."""
    started = time.perf_counter()
    tongsuo, gmssl = gm.get_backend("tongsuo"), gm.get_backend("gmssl")

    sign_ms, verify_ms = _sm2(tongsuo, n=300)
    base_sign_ms, base_verify_ms = _sm2(gmssl, n=15)

    big = os.urandom(16 * _MB)
    small = big[: 64 * 1024]
    sm3_mb_s = _mb_per_s(lambda: gm.sm3(big), len(big))
    base_sm3_mb_s = _mb_per_s(lambda: gmssl_sm3.sm3_hash(list(small)), len(small), repeats=1)

    key, iv = os.urandom(16), os.urandom(16)
    sm4_mb_s = _mb_per_s(lambda: gm.sm4_encrypt(key, big), len(big))
    base_sm4_mb_s = _mb_per_s(lambda: _gmssl_sm4_cbc(key, iv, small), len(small), repeats=1)

    figures = {
        "sm2_sign_ms": round(sign_ms, 4),
        "sm2_verify_ms": round(verify_ms, 4),
        "sm3_mb_s": round(sm3_mb_s, 2),
        "sm4_mb_s": round(sm4_mb_s, 2),
    }
    baseline = {
        "sm2_sign_ms": round(base_sign_ms, 4),
        "sm2_verify_ms": round(base_verify_ms, 4),
        "sm3_mb_s": round(base_sm3_mb_s, 4),
        "sm4_mb_s": round(base_sm4_mb_s, 4),
    }
    speedup = {
        "sm2_sign": round(base_sign_ms / sign_ms, 1),
        "sm2_verify": round(base_verify_ms / verify_ms, 1),
        "sm3": round(sm3_mb_s / base_sm3_mb_s, 1),
        "sm4": round(sm4_mb_s / base_sm4_mb_s, 1),
    }
    return {
        "name": "crypto",
        "figures": figures,
        "baseline": baseline,
        "speedup": speedup,
        "notes": {
            "product": "SM2 tongsuopy (SM3withSM2, default id); SM3 hashlib; SM4-GCM cryptography",
            "baseline": "gmssl 3.2.2 pure Python; SM4 baseline is CBC (no authentication)",
            "sizes": {"sm3_sm4_product_bytes": len(big), "baseline_bytes": len(small)},
            "runtime_s": round(time.perf_counter() - started, 2),
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
