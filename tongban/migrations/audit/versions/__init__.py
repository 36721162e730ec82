"""The audit chain's revision scripts, which Alembic loads by file (tongban.migrations)."""

__all__: list[str] = []
