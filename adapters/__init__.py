"""Department adapters: stores, ingest validation, predicates, the HTTP service.

The package exports nothing itself: import from its modules, each of which lists its
public names in ``__all__`` (tests/test_public_surface.py).
"""

__all__: list[str] = []
