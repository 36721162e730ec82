"""A plain ``pip install tongban`` (no extras): the services import, optional features fail
with one line naming their extra.

Each test runs a fresh interpreter in which the extras' modules cannot be found, as in a
virtual environment that installed only the core dependencies.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tongban.primitives.extras import EXTRAS

from .layout import FOLDERS, ROOT

BLOCKED = sorted({m for modules in EXTRAS.values() for m in modules})

# Modules that exist only for an optional feature; every one of them must fail to import
# with MissingExtra (one line naming the extra), never with a bare ModuleNotFoundError.
OPTIONAL = {
    "tongban.primitives.pyjwt_sm2": "pyjwt",
    "tongban.federation.horizontal.apps": "federation",
    "tongban.federation.horizontal.fab": "federation",
    "tongban.federation.horizontal.sealing": "federation",
}

BLOCKER = """
import importlib.abc, sys
BLOCKED = set(%r)
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
"""


def _modules() -> list[str]:
    names = []
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if parts and parts[-1] == "__main__":
                continue
            names.append(".".join([package, *parts]))
    return names


IMPORT_ALL = """
import importlib, json
from tongban.primitives.extras import MissingExtra
out = {}
for name in NAMES:
    try:
        importlib.import_module(name)
        out[name] = "ok"
    except MissingExtra as exc:
        out[name] = "extra:" + exc.extra + ":" + str(exc)
    except ImportError as exc:
        out[name] = "import-error:" + repr(exc)
print(json.dumps(out))
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER % (BLOCKED,) + code],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def test_without_extras_only_optional_modules_refuse_and_they_name_their_extra():
    names = _modules()
    done = _run(f"NAMES = {names!r}\n{IMPORT_ALL}")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)

    bare = {n: o for n, o in outcome.items() if o.startswith("import-error")}
    refused = {n: o.split(":")[1] for n, o in outcome.items() if o.startswith("extra:")}
    assert bare == {}
    assert refused == OPTIONAL
    for name, extra in refused.items():
        message = outcome[name].split(":", 2)[2]
        assert "\n" not in message
        assert f"pip install 'tongban[{extra}]'" in message


def test_without_extras_the_services_build_their_apps(tmp_path: Path):
    """The gateway and adapter entry points import, and the CLI's help renders."""
    code = (
        "from tongban.cli import main\n"
        "import tongban.wsgi, tongban.gateway.app, tongban.adapters.service\n"
        "import contextlib, io\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0\n"
        "assert 'demo' in buf.getvalue()\n"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr


def test_without_postgres_extra_a_postgresql_url_names_the_extra():
    code = (
        "from tongban.primitives.db import make_engine\n"
        "from tongban.primitives.extras import MissingExtra\n"
        "try:\n"
        "    make_engine('postgresql+psycopg://127.0.0.1:5432/test')\n"
        "except MissingExtra as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('no MissingExtra')\n"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "a PostgreSQL store (postgresql+psycopg://) needs the 'postgres' extra: "
        "pip install 'tongban[postgres]'"
    )


def test_without_gmssl_extra_the_gmssl_backend_names_the_extra():
    code = (
        "from tongban.primitives.gm import use_backend, SM2PrivateKey\n"
        "from tongban.primitives.extras import MissingExtra\n"
        "SM2PrivateKey.generate().sign(b'core signing needs no extra')\n"
        "try:\n"
        "    use_backend('gmssl')\n"
        "except MissingExtra as exc:\n"
        "    print(exc)\n"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "the gmssl SM2 backend needs the 'gmssl' extra: pip install 'tongban[gmssl]'"
    )
