"""Federation: Paillier statistics (statistics, packing, paillier, dp) and training
(horizontal: Flower among county bureaus; vertical: PSI and Paillier across departments).

The package exports nothing itself: import from its modules, each of which lists its
public names in ``__all__`` (tests/test_public_surface.py).
"""

__all__: list[str] = []
