"""The gateway: OAuth2, claim catalog, consent, the check pipeline, the Flask app.

The package exports nothing itself: import from its modules, each of which lists its
public names in ``__all__`` (tests/test_public_surface.py).
"""

__all__: list[str] = []
