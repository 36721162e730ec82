"""Epsilon for the Gaussian mechanism on FedAvg updates (client-level, no sampling).

Every round each of the ``m`` bureaus clips its update to L2 norm ``C`` and the server adds
``N(0, (z C)^2)`` to their sum (Flower's ``DifferentialPrivacyClientSideFixedClipping``
adds ``N(0, (z C / m)^2)`` to the mean, the same thing). Adding or removing one bureau's
update changes the sum by at most ``C``, so one round is a Gaussian mechanism with noise
multiplier ``z``, whose Rényi DP at order ``a`` is ``a / (2 z^2)`` (Mironov 2017, Prop. 7).
All bureaus take part in every round (no subsampling, so no amplification), and RDP
composes additively over ``T`` rounds: ``T a / (2 z^2)``. Converting to (epsilon, delta)-DP
(Mironov 2017, Prop. 3)::

    epsilon = min over a > 1 of  T a / (2 z^2) + log(1 / delta) / (a - 1)

which has the closed form ``T / (2 z^2) + sqrt(2 T log(1/delta)) / z`` at the optimal
real order; we minimise over a fine grid of orders (the same value to within 1e-3).
The unit of privacy is a bureau (all of a county's families), which is stronger than
protecting one family.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["DEFAULT_DELTA", "gaussian_epsilon"]

DEFAULT_DELTA = 1e-5
_ORDERS = np.concatenate([np.linspace(1.01, 10.0, 900), np.linspace(10.0, 2000.0, 4000)])


def gaussian_epsilon(noise_multiplier: float, rounds: int, delta: float = DEFAULT_DELTA) -> float:
    """(epsilon, delta) after ``rounds`` Gaussian releases with sensitivity 1 and noise
    standard deviation ``noise_multiplier``; ``inf`` without noise."""
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    if rounds < 0:
        raise ValueError("rounds must be non-negative")
    if rounds == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    rdp = rounds * _ORDERS / (2.0 * noise_multiplier**2)
    eps = rdp + math.log(1.0 / delta) / (_ORDERS - 1.0)
    return float(eps.min())
