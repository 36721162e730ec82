"""Access-log lines that never carry a query string or an ID number.

A query string may hold what no log should keep (an ID number a client put in a URL, a
``code`` or ``state`` in an OAuth redirect), and every proxy and log shipper on the way keeps
what the server prints. So both servers tongban runs print the request target masked:

* the path is kept, with any run of digits shaped like an ID number (17 digits and a check
  character, or the old 15 digits) replaced by ``[id]``;
* a query string is replaced by ``?…``: the line shows that there was one, never what.

:class:`MaskedAccessLogger` applies this to gunicorn (``--logger-class
tongban.access_log.MaskedAccessLogger``): the request line ``%(r)s``, the path ``%(U)s``,
the query ``%(q)s`` and the referrer ``%(f)s`` are masked, and the ``Authorization`` and
``Cookie`` headers are not available to a format at all. :mod:`tongban.serve` applies the
same masking to werkzeug's request lines.
"""

from __future__ import annotations

import re
from typing import Any

from gunicorn.glogging import Logger  # type: ignore[import-untyped]

__all__ = ["ACCESS_LOG_FORMAT", "MaskedAccessLogger", "gunicorn_access_args", "mask_target"]

#: gunicorn's access-log line: client, request (path only), status, bytes, seconds.
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'

_ID_SHAPED = re.compile(r"(?<![0-9])(?:[0-9]{17}[0-9Xx]|[0-9]{15})(?![0-9Xx])")
_HIDDEN_HEADERS = ("authorization", "cookie", "proxy-authorization", "dpop")


def mask_target(target: str) -> str:
    """A request target (or a URL) fit for a log line: no query, no ID-shaped digits."""
    path, sep, _query = target.partition("?")
    path = _ID_SHAPED.sub("[id]", path)
    return path + ("?…" if sep else "")


def gunicorn_access_args(logfile: str = "-") -> list[str]:
    """The gunicorn options that turn on the masked access log (as the demo runs it)."""
    return [
        "--access-logfile", logfile,
        "--access-logformat", ACCESS_LOG_FORMAT,
        "--logger-class", f"{__name__}.MaskedAccessLogger",
    ]  # fmt: skip


class MaskedAccessLogger(Logger):  # type: ignore[misc]  # gunicorn is untyped (Any)
    """gunicorn's logger with the request target masked in every atom that carries it."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        method = environ.get("REQUEST_METHOD", "-")
        raw = environ.get("RAW_URI") or environ.get("PATH_INFO") or ""
        atoms["r"] = f"{method} {mask_target(raw)} {environ.get('SERVER_PROTOCOL', '-')}"
        atoms["U"] = mask_target(environ.get("PATH_INFO") or "")
        atoms["q"] = "…" if environ.get("QUERY_STRING") else ""
        referer = environ.get("HTTP_REFERER")
        atoms["f"] = mask_target(referer) if referer else "-"
        for name in _HIDDEN_HEADERS:
            atoms.pop(f"{{{name}}}i", None)
        for key in [k for k in atoms if k.startswith("{") and k.endswith("}e")]:
            # environ atoms repeat the raw URI, the query and every header
            del atoms[key]
        return atoms
