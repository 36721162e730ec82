"""The tongban command line, configuration and the embedded demo."""

__all__: list[str] = []
