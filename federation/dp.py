"""Distributed differential privacy for packed Paillier statistics.

**Mechanism.** Each released cell gets discrete Laplace noise (the two-sided geometric
mechanism, Ghosh et al. 2009): ``P(Z = z) ∝ alpha^|z|`` with ``alpha = exp(-ε/Δ)``, which is
ε-differentially private for a counter of L1 sensitivity Δ. No party adds it alone. The
geometric distribution is infinitely divisible: the sum of ``k`` independent
``NB(1/k, 1-alpha)`` (negative binomial) draws is ``Geometric(1-alpha)``, so when each of the ``k``
contributing departments adds ``NB(1/k, 1-alpha) - NB(1/k, 1-alpha)`` to its own cell before
encrypting, the encrypted total carries exactly one discrete Laplace draw of scale Δ/ε
(the "distributed noise" construction of Shi et al., NDSS 2011). A department knows only
its own share; removing the noise needs all ``k`` shares, so no single department (and not
the gateway, which sees ciphertexts only) can remove it. If ``k-1`` departments collude,
the remaining share is ``NB(1/k)``-shaped noise, weaker than the full mechanism: that is the
trust assumption, stated in docs/statistics.md.

**Packing.** Paillier slots hold non-negative integers, so each party adds an offset ``L``
to every noisy value and clips its noise share to ``[-L, L]``. The analyst subtracts
``k·L`` per slot. Clipping makes overflow impossible rather than unlikely (the layout's
bound is ``value_bound + 2L`` per party, checked like any value) and costs a δ: a share
exceeds ``L = ⌈TAIL·Δ/ε⌉`` with probability below ``2·exp(-TAIL)`` (a NB(1/k) draw is
stochastically smaller than the geometric it divides), so a job is
``(ε, δ)``-DP with ``δ ≤ cells·k·2·exp(-TAIL)``, about ``10^-14`` for 12 departments and
10,000 cells at ``TAIL = 48``.

**Budget.** A job over cells that partition the records (each record falls in exactly one
district-year cell) costs its ε once (parallel composition). A statistic with a count
companion releases two vectors; ε is split evenly between the values (sensitivity: the
declared per-record bound, values clipped to it) and the counts (sensitivity 1). Jobs
compose sequentially: an analyst's spend is the sum of its jobs' ε
(:class:`gateway.privacy.PrivacyLedger`).

Randomness comes from the operating system's CSPRNG (a fresh ``PCG64`` seeded from
``secrets`` per job). NumPy samples negative binomials as a Gamma-Poisson mixture in
floating point; the output is an integer, which removes the least-significant-bit attack
on floating-point Laplace (Mironov 2012), but the sampler is not constant-time.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tongban.primitives.errors import BadRequest

__all__ = [
    "MAX_EPSILON",
    "MIN_EPSILON",
    "TAIL",
    "DiscreteLaplace",
    "InvalidEpsilon",
    "parse_epsilon",
]

MIN_EPSILON = 0.01
MAX_EPSILON = 10.0
#: Clipping point of each party's share, in units of the scale Δ/ε (see the module doc).
TAIL = 48


class InvalidEpsilon(BadRequest):
    slug = "invalid-epsilon"
    title = "Invalid differential-privacy parameter"


def parse_epsilon(value: object) -> float:
    """A finite ε in [MIN_EPSILON, MAX_EPSILON], rounded to a micro-ε."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEpsilon("dp.epsilon: expected a number")
    eps = float(value)
    if not math.isfinite(eps) or not MIN_EPSILON <= eps <= MAX_EPSILON:
        raise InvalidEpsilon(f"dp.epsilon: expected {MIN_EPSILON}..{MAX_EPSILON}")
    return round(eps, 6)


@dataclass(frozen=True, slots=True)
class DiscreteLaplace:
    """The total noise of one vector: discrete Laplace with scale ``sensitivity/epsilon``,
    shared among ``parties``."""

    epsilon: float
    sensitivity: int
    parties: int

    def __post_init__(self) -> None:
        if not self.epsilon > 0 or self.sensitivity < 1 or self.parties < 1:
            raise ValueError("epsilon > 0, sensitivity >= 1 and parties >= 1 required")

    @property
    def scale(self) -> float:
        return self.sensitivity / self.epsilon

    @property
    def alpha(self) -> float:
        return math.exp(-self.epsilon / self.sensitivity)

    @property
    def offset(self) -> int:
        """``L``: each party's share is clipped to [-L, L] and sent as ``share + L``."""
        return math.ceil(TAIL * self.scale)

    @property
    def variance(self) -> float:
        """Of the total noise: ``2alpha/(1-alpha)²``."""
        a = self.alpha
        return 2 * a / (1 - a) ** 2

    def delta(self, cells: int) -> float:
        """Upper bound on the probability that any share in a job is clipped."""
        return min(1.0, cells * self.parties * 2 * math.exp(-TAIL))

    def share(self, size: int, rng: np.random.Generator | None = None) -> npt.NDArray[np.int64]:
        """One party's noise share for ``size`` cells, clipped to [-L, L]."""
        rng = rng or np.random.Generator(np.random.PCG64(secrets.randbits(128)))
        n = 1.0 / self.parties
        p = 1.0 - self.alpha
        draws = rng.negative_binomial(n, p, size=(2, size)).astype(np.int64)
        noise = draws[0] - draws[1]
        clipped: npt.NDArray[np.int64] = np.clip(noise, -self.offset, self.offset)
        return clipped
