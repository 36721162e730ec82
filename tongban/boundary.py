"""The command line's edge: expected failures become one sentence, logs stay plain text.

Every ``tongban`` command runs through :func:`run_command`. An error the project expects
(a missing key, data directory, audit log, running gateway or optional extra; a store
that is down; a port in use) is printed as ONE line, ``tongban: <sentence>``, on stderr,
and the process exits non-zero:

* :data:`EXIT_PREREQUISITE` (2) when something the command needs is missing, which the
  sentence names together with how to get it (argparse uses 2 for usage errors too);
* :data:`EXIT_FAILURE` (1) when the command ran and failed.

With ``--debug`` the exception is re-raised and Python prints its traceback.
"""

from __future__ import annotations

import errno
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from tongban.primitives.errors import TongbanError
from tongban.primitives.extras import MissingExtra

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_PREREQUISITE",
    "CommandFailed",
    "MissingPrerequisite",
    "PlainFormatter",
    "UsageError",
    "configure_logging",
    "describe",
    "display_url",
    "make_log_handler",
    "missing_sqlite_file",
    "run_command",
    "scrub",
]

EXIT_FAILURE = 1
EXIT_PREREQUISITE = 2
EXIT_INTERRUPTED = 130

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# Anything shaped like an ID number (18 characters, or a first-generation 15 digits).
_ID_NUMBER = re.compile(r"(?<![0-9])(?:[0-9]{17}[0-9Xx]|[0-9]{15})(?![0-9Xx])")
_LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class MissingPrerequisite(TongbanError):
    """Something a command needs is not there; ``detail`` says what and how to get it."""

    status = 503
    slug = "missing-prerequisite"
    title = "A prerequisite is missing"


class UsageError(TongbanError):
    """The command was asked for something it cannot do as given (exit 2, like argparse)."""

    status = 400
    slug = "usage"
    title = "Invalid usage"


class CommandFailed(TongbanError):
    """A command ran and could not complete; ``detail`` says where."""

    slug = "command-failed"
    title = "The command failed"


def display_url(url: str) -> str:
    """A database URL as it may be shown: the password hidden."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show only its scheme
        return url.split("://", 1)[0] + "://…"


def missing_sqlite_file(url: str) -> Path | None:
    """The file a ``sqlite:///FILE`` URL names, if it does not exist (opening it would
    create an empty database); None for existing files, memory and server databases."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path.absolute()


def _httpx_sentence(exc: BaseException) -> str | None:
    httpx = sys.modules.get("httpx")
    if httpx is None or not isinstance(exc, httpx.TransportError):
        return None
    try:
        url = exc.request.url
        where = f"{url.scheme}://{url.netloc.decode()}"
    except RuntimeError:  # an error raised before any request was attached
        where = "the server"
    if isinstance(exc, httpx.TimeoutException):
        return f"{where} did not answer in time"
    return f"cannot reach {where} ({type(exc).__name__}): is it running?"


def _os_sentence(exc: OSError) -> tuple[int, str]:
    reason = exc.strerror or type(exc).__name__
    if exc.errno == errno.EADDRINUSE:
        return EXIT_FAILURE, f"{reason}: pass another --port"
    target = f"{exc.filename}: " if exc.filename else ""
    if isinstance(exc, FileNotFoundError):
        return EXIT_PREREQUISITE, f"{target}{reason}" if exc.filename else str(exc)
    return EXIT_FAILURE, f"{target}{reason}"


def describe(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one sentence for ``exc``. Project errors carry a ``detail``
    written for people (field names, never personal data); anything else is named by its
    type, with the hint that ``--debug`` shows where it came from."""
    if isinstance(exc, MissingExtra):
        return EXIT_PREREQUISITE, str(exc)
    if isinstance(exc, MissingPrerequisite | UsageError):
        return EXIT_PREREQUISITE, exc.detail
    if isinstance(exc, TongbanError):
        return EXIT_FAILURE, exc.detail
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    http = _httpx_sentence(exc)
    if http is not None:
        return EXIT_FAILURE, http
    if isinstance(exc, OSError):
        return _os_sentence(exc)
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.SQLAlchemyError):
        return EXIT_FAILURE, f"a database could not be used ({type(exc).__name__})"
    first = str(exc).splitlines()[0] if str(exc) else ""
    detail = f": {first}" if first else ""
    return EXIT_FAILURE, f"unexpected {type(exc).__name__}{detail} (--debug shows where)"


def scrub(sentence: str) -> str:
    """``sentence`` with anything shaped like an ID number replaced: errors from outside
    the project may quote the values they choked on."""
    return _ID_NUMBER.sub("<ID number>", sentence)


def run_command(
    func: Callable[[], int], *, debug: bool = False, stderr: TextIO | None = None
) -> int:
    """Run a command; an exception becomes one ``tongban: ...`` line unless ``debug``."""
    try:
        return int(func())
    except (Exception, KeyboardInterrupt) as exc:
        if debug:
            raise
        code, sentence = describe(exc)
        print(f"tongban: {scrub(sentence)}", file=stderr or sys.stderr)
        return code


class PlainFormatter(logging.Formatter):
    """A formatter that removes ANSI escapes (werkzeug colours its request lines) from
    every record, for logs that go to a file or a pipe rather than a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI.sub("", super().format(record))


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or already closed
        return False


def make_log_handler(stream: TextIO) -> logging.Handler:
    """A handler for ``stream``: colours only when it is a terminal."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        logging.Formatter(_LOG_FORMAT) if _isatty(stream) else PlainFormatter(_LOG_FORMAT)
    )
    return handler


def configure_logging(*, debug: bool = False, stream: TextIO | None = None) -> None:
    """The command line's logging: INFO (DEBUG with ``--debug``) to stderr, plain text
    unless stderr is a terminal. Leaves logging alone if the host (a test runner) has
    configured it already."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        handlers=[make_log_handler(stream or sys.stderr)],
    )
    # httpx logs every request URL at INFO; keep operators' logs to what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
