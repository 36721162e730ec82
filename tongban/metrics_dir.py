"""The Prometheus multiprocess directory a gunicorn master prepares before it forks
(:mod:`tongban.gunicorn_conf`): private to the service's user, emptied, named in
``PROMETHEUS_MULTIPROC_DIR`` for the workers to inherit. Apart from the configuration
module, whose public names must all be gunicorn settings."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import MutableMapping
from pathlib import Path

__all__ = ["MULTIPROC_VAR", "PREFIX", "prepare_metrics_dir"]

MULTIPROC_VAR = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "metrics-"


def _private_dir(path: Path) -> None:
    """``path`` made if absent; refused unless a directory of this user that nobody else
    may write to (a metrics file planted by another user would be served as ours)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(f"{path} is not a directory of this user")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RuntimeError(f"{path} may be written by others: chmod 700 it")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def prepare_metrics_dir(
    workers: int, data_dir: Path, env: MutableMapping[str, str] | None = None
) -> Path | None:
    """The multiprocess directory for a master about to fork ``workers`` workers over
    ``data_dir``, emptied and named in ``env`` (``os.environ``: the workers inherit it);
    ``None`` (and ``env`` untouched) for one worker. A directory the operator named in
    ``PROMETHEUS_MULTIPROC_DIR`` is used whatever the workers, its old files removed."""
    env = os.environ if env is None else env
    run = data_dir.resolve() / "run"
    named = env.get(MULTIPROC_VAR, "")
    # An earlier master's own directory (inherited over gunicorn's USR2 re-exec) is not
    # the operator's: this master makes its own and leaves that one to its owner.
    if named and not (Path(named).parent == run and Path(named).name.startswith(PREFIX)):
        path = Path(named)
        _private_dir(path)
        for old in path.glob("*.db"):
            old.unlink()
        return path
    if workers <= 1:
        env.pop(MULTIPROC_VAR, None)
        return None
    _private_dir(run)
    for stale in run.glob(f"{PREFIX}*"):
        pid = stale.name.removeprefix(PREFIX)
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    path = run / f"{PREFIX}{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    env[MULTIPROC_VAR] = str(path)
    return path
