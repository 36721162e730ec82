"""The two roles of vertical logistic regression; transport-agnostic (plain values in/out).

* :class:`LabelHolder` (the guest, hrss): holds the labels, some features and the Paillier
  private key. Per batch it sums the masked partial logits, computes the residuals
  ``sigma(z) - y``, packs and encrypts them (:class:`~federation.vertical.encoding.
  DiagonalLayout`, DJN fixed-base obfuscators, :mod:`~federation.vertical.randomness`), updates
  its own weights in the clear, and decrypts the feature holders' masked gradients,
  returning one masked slot each.
* :class:`FeatureHolder` (a host: health, civil): holds features only. It sends masked
  partial logits, turns encrypted residuals into its encrypted, masked gradient (bucket
  multi-exponentiation, re-randomised with a fresh full ``r^n``), unmasks the slot it gets
  back and updates its weights.

Trust: semi-honest parties, no collusion between the label holder and a feature holder.
No arbiter: the key sits with the label holder, as in FATE's guest/host form, and masking
keeps the guest from host gradients and features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol

import gmpy2
import numpy as np
import numpy.typing as npt
from phe import PaillierPrivateKey, PaillierPublicKey

from tongban.federation.horizontal.model import auc
from tongban.federation.packing import OutOfBounds
from tongban.federation.paillier import (
    InvalidCiphertext,
    ObfuscatorPool,
    _crt_decryptor,
    generate_keypair,
    parse_public_key,
    public_key_to_jwk,
)
from tongban.primitives.gm import sm3

from .encoding import (
    RESIDUAL_FRAC,
    RESIDUAL_OFFSET,
    DiagonalLayout,
    decode_logits,
    encode_features,
    encode_logits,
    encode_residuals,
    feature_values,
)
from .masks import PairwiseMasks
from .messages import Plan
from .multiexp import multiexp_columns
from .randomness import FixedBaseObfuscators

__all__ = [
    "FeatureHolder",
    "LabelHolder",
    "Obfuscators",
]

Floats = npt.NDArray[np.float64]
Positions = npt.NDArray[np.int64]


Randomness = Literal["djn", "pool"]


class Obfuscators(Protocol):
    def take_mpz(self) -> Any: ...

    def close(self) -> None: ...


def _obfuscators(
    kind: Randomness, public_key: PaillierPublicKey, size: int, workers: int
) -> Obfuscators:
    """DJN fixed-base obfuscators (default), or the statistics feature's ``r^n`` pool."""
    if kind == "djn":
        return FixedBaseObfuscators(public_key)
    if kind == "pool":
        return ObfuscatorPool(public_key, size=size, workers=workers)
    raise ValueError('randomness: expected "djn" or "pool"')


def _release_gil() -> None:
    gmpy2.get_context().allow_release_gil = True  # per-thread flag


def _sigmoid(z: Floats) -> Floats:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)


def _log_loss(z: Floats, y: npt.NDArray[np.int8]) -> float:
    # log(1 + e^z) - y z, stable for large |z|.
    return float(np.mean(np.logaddexp(0.0, z) - y * z)) if len(y) else float("nan")


def _check_ciphertexts(name: str, values: Sequence[int], public_key: PaillierPublicKey) -> None:
    n, nsquare = int(public_key.n), int(public_key.nsquare)
    for index, c in enumerate(values):
        if type(c) is not int or not 0 < c < nsquare or gmpy2.gcd(c, n) != 1:
            raise InvalidCiphertext(f"{name}[{index}]: expected an element of Z*(n^2)")


class _Party:
    def __init__(self, name: str, features: Floats, session: bytes) -> None:
        if features.ndim != 2:
            raise ValueError(f"{name}: features must be a 2-d array")
        self.name = name
        self.masks = PairwiseMasks(name, session)
        self.plan: Plan | None = None
        self.weights = np.zeros(features.shape[1], dtype=np.float64)

    def receive_plan(self, plan: Plan) -> None:
        self.plan = plan

    def _plan(self) -> Plan:
        if self.plan is None:
            raise RuntimeError(f"{self.name}: no plan received")
        return self.plan

    def model_digest(self) -> bytes:
        """SM3 of my weights: a commitment the coordinator may log; the weights stay here."""
        return sm3(np.ascontiguousarray(self.weights, dtype="<f8").tobytes())


class FeatureHolder(_Party):
    """A department with features for the aligned rows and no labels."""

    def __init__(
        self,
        name: str,
        features: Floats,
        session: bytes,
        *,
        workers: int = 2,
    ) -> None:
        super().__init__(name, features, session)
        self._raw = np.asarray(features, dtype=np.float64)
        self.encoded = encode_features(self._raw)  # (rows, d) digits; re-made per plan
        self.values = feature_values(self.encoded)  # what the model sees
        self.workers = workers
        self.public_key: PaillierPublicKey | None = None
        self.layout: DiagonalLayout | None = None
        self._pool: Obfuscators | None = None
        self._pending: tuple[Positions, list[int]] | None = None

    def receive_plan(self, plan: Plan) -> None:
        super().receive_plan(plan)
        self.encoded = encode_features(self._raw, plan.feature_bits)
        self.values = feature_values(self.encoded, plan.feature_bits)

    def receive_public_key(self, jwk: Mapping[str, Any]) -> None:
        self.public_key = parse_public_key(jwk)  # strict: no exponentiation under junk
        plan = self._plan()
        n_bits = int(self.public_key.n).bit_length()
        self.layout = DiagonalLayout(plan.batch_size, n_bits, plan.feature_bits)
        # Always full r^n here, never DJN: these ciphertexts go to the key holder, who knows
        # the factorisation and could take discrete logs of a short-exponent obfuscator's
        # randomness; a uniform r hides our exponents information-theoretically.
        self._pool = ObfuscatorPool(self.public_key, size=2 * self.values.shape[1], workers=1)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def masked_logits(self, positions: Positions, label: str) -> npt.NDArray[np.uint64]:
        """``X_h w_h`` on these rows, fixed point, plus my pairwise masks."""
        partial = encode_logits(self.values[positions] @ self.weights)
        return partial + self.masks.mask(label, len(positions))

    def masked_gradient(self, positions: Positions, residuals: Sequence[int]) -> list[int]:
        """``[[sum_i r'_i x~_ij + mask_j]]`` for each of my features, re-randomised."""
        if self.public_key is None or self.layout is None or self._pool is None:
            raise RuntimeError(f"{self.name}: no public key received")
        layout, pk = self.layout, self.public_key
        if len(residuals) != layout.blocks(len(positions)):
            raise InvalidCiphertext(f"residuals: expected {layout.blocks(len(positions))}")
        _check_ciphertexts("residuals", residuals, pk)
        n, nsquare = gmpy2.mpz(pk.n), gmpy2.mpz(pk.nsquare)
        offsets = [(layout.slots - 1 - k) * layout.slot_bits for k in range(layout.slots)]
        columns = [
            layout.block_digits(self.encoded[positions, j]) for j in range(len(self.weights))
        ]
        products = multiexp_columns(
            residuals, columns, offsets, layout.feature_bits, nsquare, self.workers
        )
        # [[c * sum r']] in every coefficient, removed so the middle holds sum r' x~.
        total = gmpy2.mpz(1)
        for c in residuals:
            total = total * c % nsquare
        offset_inverse = gmpy2.invert(
            gmpy2.powmod(total, layout.offset_exponent(), nsquare), nsquare
        )
        middles: list[int] = []
        out: list[int] = []
        for product in products:
            mask, middle = layout.draw_mask()
            ciphertext = product * offset_inverse % nsquare
            ciphertext = ciphertext * (n * mask + 1) % nsquare * self._pool.take_mpz() % nsquare
            out.append(int(ciphertext))
            middles.append(middle)
        self._pending = (positions, middles)
        return out

    def apply_gradient(self, slots: Sequence[int]) -> None:
        """Unmask ``sum r' x~``, remove the residual offset, take the step."""
        if self._pending is None:
            raise RuntimeError(f"{self.name}: no gradient pending")
        positions, middles = self._pending
        self._pending = None
        if len(slots) != len(middles) or not all(type(s) is int for s in slots):
            raise OutOfBounds(f"slots: expected {len(middles)} integers")
        plan = self._plan()
        assert self.layout is not None
        offset, frac = self.layout.feature_offset, self.layout.feature_frac
        x_tilde_sums = self.encoded[positions].sum(axis=0) - len(positions) * offset
        scale = float(1 << (RESIDUAL_FRAC + frac))
        grad = np.array(
            [
                (s - m - RESIDUAL_OFFSET * int(xs)) / scale
                for s, m, xs in zip(slots, middles, x_tilde_sums.tolist(), strict=True)
            ],
            dtype=np.float64,
        ) / len(positions)
        self.weights -= plan.learning_rate * (grad + plan.l2 * self.weights)


class LabelHolder(_Party):
    """The department with the labels (and features); holds the Paillier private key."""

    def __init__(
        self,
        name: str,
        features: Floats,
        labels: npt.NDArray[np.int8],
        session: bytes,
        *,
        key_bits: int = 2048,
        workers: int = 2,
        keypair: tuple[PaillierPublicKey, PaillierPrivateKey] | None = None,
        randomness: Randomness = "djn",
    ) -> None:
        super().__init__(name, features, session)
        self.randomness = randomness
        if labels.shape != (features.shape[0],):
            raise ValueError(f"{name}: one label per row expected")
        self.features = np.asarray(features, dtype=np.float64)
        self.labels = labels.astype(np.int8)
        self.bias = 0.0
        self.public_key, self._private_key = keypair or generate_keypair(key_bits)
        self._decrypt = _crt_decryptor(self._private_key)  # gmpy2 CRT, faster than phe's
        self.workers = workers
        self.layout: DiagonalLayout | None = None
        self._pool: Obfuscators | None = None
        self.last_loss = float("nan")

    def receive_plan(self, plan: Plan) -> None:
        super().receive_plan(plan)
        n_bits = int(self.public_key.n).bit_length()
        self.layout = DiagonalLayout(plan.batch_size, n_bits, plan.feature_bits)
        size = 2 * self.layout.blocks(plan.batch_size)
        self._pool = _obfuscators(self.randomness, self.public_key, size, self.workers)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def public_key_jwk(self) -> dict[str, Any]:
        return public_key_to_jwk(self.public_key)

    def _logits(
        self, positions: Positions, label: str, masked: Mapping[str, npt.NDArray[np.uint64]]
    ) -> Floats:
        total = self.masks.mask(label, len(positions))
        for name, vector in masked.items():
            if vector.dtype != np.uint64 or vector.shape != (len(positions),):
                raise OutOfBounds(f"{name}.masked_logits: expected uint64[{len(positions)}]")
            total += vector
        return self.features[positions] @ self.weights + self.bias + decode_logits(total)

    def encrypted_residuals(
        self, positions: Positions, label: str, masked: Mapping[str, npt.NDArray[np.uint64]]
    ) -> list[int]:
        """Residuals of this batch, packed and encrypted; my own step is taken here."""
        if self.layout is None or self._pool is None:
            raise RuntimeError(f"{self.name}: no plan received")
        plan = self._plan()
        z = self._logits(positions, label, masked)
        y = self.labels[positions]
        self.last_loss = _log_loss(z, y)
        r = _sigmoid(z) - y
        packed = self.layout.pack_residuals(encode_residuals(r))
        n, nsquare = gmpy2.mpz(self.public_key.n), gmpy2.mpz(self.public_key.nsquare)
        # m < 2^(n_bits-1) < n: (1 + m n) r^n with a precomputed r^n, one product online.
        pool = self._pool

        def encrypt(m: int) -> int:
            return int((n * m + 1) * pool.take_mpz() % nsquare)

        if self.workers > 1 and len(packed) > 1:
            with ThreadPoolExecutor(self.workers, initializer=_release_gil) as executor:
                out = list(executor.map(encrypt, packed))
        else:
            out = [encrypt(m) for m in packed]
        grad = self.features[positions].T @ r / len(positions)
        self.weights -= plan.learning_rate * (grad + plan.l2 * self.weights)
        self.bias -= plan.learning_rate * float(r.mean())
        return out

    def gradient_slots(self, sender: str, ciphertexts: Sequence[int]) -> list[int]:
        """Decrypt a feature holder's masked gradients; return only the (masked) middles."""
        if self.layout is None:
            raise RuntimeError(f"{self.name}: no plan received")
        _check_ciphertexts(f"{sender}.masked_gradient", ciphertexts, self.public_key)
        return [self.layout.middle(int(self._decrypt(c))) for c in ciphertexts]

    def evaluate(
        self, positions: Positions, masked: Mapping[str, npt.NDArray[np.uint64]]
    ) -> dict[str, float]:
        """Held-out loss and AUC of the joint model (only I hold the labels)."""
        z = self._logits(positions, "score", masked)
        y = self.labels[positions]
        return {"loss": _log_loss(z, y), "auc": auc(z, y)}
