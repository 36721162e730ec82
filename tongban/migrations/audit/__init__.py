"""The audit chain of revisions (tongban.migrations)."""

__all__: list[str] = []
