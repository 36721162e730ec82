"""``/docs`` (Swagger UI, vendored from npm) in a real headless Chromium (Debian's
``/usr/bin/chromium``, driven by ``playwright-core`` from ``browser-tests/docs.mjs``): the
operations are listed from ``/openapi.json``, the Authorize dialog gets a token with OAuth
2.0 client credentials, and "Try it out" on ``POST /v1/checks`` shows a 200 with a signed
answer; no request leaves loopback and nothing breaks the page's Content-Security-Policy.
Screenshots land in ``build/screenshots/`` (ignored by git).

Also, without a browser: the vendored files are byte for byte what
``gateway/static/README.md`` (written by ``browser-tests/vendor.mjs``) records.

The browser test is skipped, loudly, only when Chromium, node or
``browser-tests/node_modules`` is absent, as ``tests/test_pages_browser.py`` is."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tongban.gateway.openapi import DOCS_ASSETS

from .conftest import Generated
from .gateway_harness import Harness, build_harness
from .test_pages_browser import BROWSER_TESTS, CHROMIUM, ROOT, serving, skip_without_browser

# Always build/ (ignored by git): `make screenshots` refreshes only the pages' images.
SCREENSHOTS = ROOT / "build" / "screenshots"

_ROW = re.compile(r"^\| `([^`]+)` \| (\S+) (\S+) \| `([^`]+)` \| `([0-9a-f]{64})` \|$", re.M)
OURS = {"docs.html", "docs-init.js"}


def _vendored() -> dict[str, tuple[str, str, str]]:
    """README.md's table: repository path -> (package, version, SHA-256)."""
    text = (ROOT / "gateway" / "static" / "README.md").read_text(encoding="utf-8")
    return {m[1]: (m[2], m[3], m[5]) for m in _ROW.finditer(text)}


def test_vendored_files_are_what_the_readme_records():
    vendored = _vendored()
    assert {p for p, (pkg, _, _) in vendored.items() if pkg == "swagger-ui-dist"} >= {
        "gateway/static/swagger-ui-bundle.js",
        "gateway/static/swagger-ui.css",
    }
    assert {p for p, (pkg, _, _) in vendored.items() if pkg == "sm-crypto"} >= {
        "gateway/pages/static/sm2.js",
        "gateway/pages/static/sm3.js",
    }
    for path, (package, version, digest) in vendored.items():
        data = (ROOT / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"{path} is not {package} {version}"
        assert f"{package}@{version}" in _pins(), f"{package} {version} not pinned in vendor.mjs"
    # Every file the docs page serves is either ours or recorded as vendored.
    for asset in DOCS_ASSETS:
        assert asset in OURS or f"gateway/static/{asset}" in vendored, asset
    # The officer page loads sm-crypto's builds (and no hand-written SM3 any more).
    officer = (ROOT / "gateway" / "pages" / "templates" / "officer.html").read_text("utf-8")
    assert "filename='sm3.js'" in officer and "filename='sm2.js'" in officer
    # No vendored file points a browser elsewhere for more code (source maps included).
    for path in ("gateway/static/swagger-ui-bundle.js", "gateway/pages/static/sm2.js"):
        assert "sourceMappingURL" not in (ROOT / path).read_text(encoding="utf-8")


def _pins() -> set[str]:
    script = (BROWSER_TESTS / "vendor.mjs").read_text(encoding="utf-8")
    found = re.findall(r'name: "([^"]+)",\s*version: "([^"]+)"', script)
    return {f"{name}@{version}" for name, version in found}


def test_the_docs_page_names_exactly_the_served_assets():
    html = (ROOT / "gateway" / "static" / "docs.html").read_text(encoding="utf-8")
    named = set(re.findall(r'(?:src|href)="docs/([^"]+)"', html))
    assert named == set(DOCS_ASSETS)
    assert "<script>" not in html and "<style" not in html and " style=" not in html


@pytest.fixture(scope="module")
def browser_ready() -> None:
    skip_without_browser()


@pytest.fixture(scope="module")
def served(
    browser_ready: None,
    small_population: Generated,
    party_keys,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Harness, str]]:
    h = build_harness(tmp_path_factory.mktemp("docs-browser"), small_population.urls, party_keys)
    with serving(h) as url:
        yield h, url


def _run(config: dict[str, Any]) -> dict[str, Any]:
    run = subprocess.run(
        ["node", str(BROWSER_TESTS / "docs.mjs"), json.dumps(config)],
        cwd=BROWSER_TESTS,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    seen: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    assert "error" not in seen, seen["error"]
    return seen


def test_docs_try_it_out_with_client_credentials_in_chromium(
    served: tuple[Harness, str], small_population: Generated
):
    h, url = served
    number = str(small_population.subjects()[3]["id_number"])
    audit = h.gateway.audit
    assert audit is not None
    before = audit.refresh()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    seen = _run(
        {
            "url": url,
            "chromium": CHROMIUM,
            "screenshots": str(SCREENSHOTS),
            "client": {"id": "edu-bureau", "secret": h.secrets["edu-bureau"]},
            "check": {
                "subject": {"id_number": number},
                "claim": "birth_registered",
                "purpose": "school_enrollment",
                "params": {},
            },
        }
    )
    assert seen["steps"] == ["listed", "authorized", "tried", "control"]

    # The page is Swagger UI on this gateway's document, every operation listed.
    spec = h.client.get("/openapi.json").get_json()
    documented = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }
    assert {(op["method"], op["path"]) for op in seen["operations"]} == documented
    assert seen["title"].startswith(spec["info"]["title"])
    # Try-it-out and the token request go to the gateway that served the page, not to
    # the public URL the document names (http://gw.test here).
    assert spec["servers"] == [{"url": "http://gw.test"}]
    assert seen["servers"] == [url + "/"]
    assert seen["token_url_shown"] == f"Token URL: {url}/oauth/token"

    # Authorize: client credentials, the client authenticated with HTTP Basic.
    assert seen["token"]["status"] == 200
    assert seen["token"]["basic"]
    assert seen["token"]["body"] == "grant_type=client_credentials&scope=checks"
    assert seen["authorized"] == "Authorized"

    # Try it out: the bearer token was sent and the panel shows the signed answer.
    assert seen["check_request"] == {"url": f"{url}/v1/checks", "bearer": True}
    assert seen["panel_status"] == "200"
    answer = json.loads(seen["panel_body"])
    assert answer["result"] in ("yes", "no", "undetermined")
    assert answer["answer"].count(".") == 2  # a compact JWS
    assert audit.refresh() == before + 1  # the check the page made was logged

    # Nothing left loopback; nothing broke the CSP, which stays strict.
    assert seen["offsite_requests"] == []
    assert all(r["url"].startswith(url + "/") for r in seen["requests"])
    assert seen["csp_violations"] == []
    assert seen["page_errors"] == []
    # The one console error allowed: the browser's own request for /favicon.ico (the
    # gateway has none), which is not the page's.
    errors = [c for c in seen["console"] if c["type"] == "error"]
    assert [c for c in errors if c["url"] != f"{url}/favicon.ico"] == []
    assert not [c for c in seen["console"] if "Content Security Policy" in c["text"]]
    csp = seen["csp"]
    assert "script-src 'self';" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    # ... and the checks above can fail: an inline script was refused, and noticed.
    assert seen["control"]["inline_ran"] is False
    assert any(v.startswith("script-src") for v in seen["control"]["violations"])
    assert any("Content Security Policy" in c["text"] for c in seen["control"]["console"])
    for name in ("docs-authorize", "docs-try-it-out"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 1000
