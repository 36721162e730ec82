"""The pages in a real headless Chromium (Debian's ``/usr/bin/chromium``, driven by
``playwright-core`` from ``browser-tests/``): an officer sees the checkpoint's gateway
signature verified in the browser (sm-crypto's SM2) and NOT verified when the checkpoint or
the key is tampered with on its way, filters, verifies a proof and sees an anomaly flag; a
citizen grants consent, sees the check, revokes, and the next check is refused.
Screenshots land in ``build/screenshots/`` (ignored by git); ``make screenshots`` sets
``TONGBAN_SCREENSHOTS=docs/screenshots`` to refresh the committed ones.

Skipped, loudly, only when Chromium, node or ``browser-tests/node_modules`` is absent
(``make install`` / ``.ci/run`` install them)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from tongban.audit.note import SignedNote, sign_line
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.idnumber import mask

from .conftest import Generated
from .gateway_harness import Harness, build_harness

ROOT = Path(__file__).resolve().parent.parent
BROWSER_TESTS = ROOT / "browser-tests"
# Never the committed docs/screenshots by default: on a machine without a CJK font every
# Chinese character renders as a box, and a `git commit -a` would replace the good images.
SCREENSHOTS = Path(os.environ.get("TONGBAN_SCREENSHOTS", ROOT / "build" / "screenshots"))
CHROMIUM = os.environ.get("TONGBAN_CHROMIUM", "/usr/bin/chromium")


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
    if shutil.which("node") is None:
        return "node not found (apt-get install -y nodejs npm)"
    if not (BROWSER_TESTS / "node_modules" / "playwright-core").is_dir():
        return "browser-tests/node_modules missing (cd browser-tests && npm ci)"
    return None


def skip_without_browser() -> None:
    """Skip, loudly, when Chromium, node or playwright-core is absent."""
    reason = _missing()
    if reason is not None:
        banner = f"\n{'!' * 78}\n!! BROWSER TESTS SKIPPED: {reason}\n{'!' * 78}\n"
        # Past pytest's capture, so it shows in any run (and the skip reason in -ra).
        (sys.__stderr__ or sys.stderr).write(banner)
        pytest.skip(f"BROWSER TESTS SKIPPED: {reason}")


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
    h = build_harness(tmp_path_factory.mktemp("browser"), small_population.urls, party_keys)
    with serving(h) as url:
        yield h, url


@contextlib.contextmanager
def serving(h: Harness) -> Iterator[str]:
    """``h``'s gateway app on a free loopback port (werkzeug, threaded); closed after."""
    server = make_server("127.0.0.1", 0, h.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        h.close()


def _check(claim: str, purpose: str, id_number: str) -> dict[str, Any]:
    return {"subject": {"id_number": id_number}, "claim": claim, "purpose": purpose, "params": {}}


def test_officer_and_citizen_pages_in_chromium(served, small_population: Generated):
    h, url = served
    people = [str(r["id_number"]) for r in small_population.subjects()[:80]]
    # Ordinary traffic, one refused insurer request, then a signed checkpoint over them.
    for number in people[:5]:
        ok = h.check("edu-bureau", _check("birth_registered", "school_enrollment", number))
        assert ok.status_code == 200
    victim = people[5]
    denied = h.check("insurer-a", _check("birth_registered", "underwriting", victim))
    assert denied.status_code == 403
    assert h.gateway.checkpointer is not None
    h.gateway.checkpointer.checkpoint()
    me = people[6]
    latest = h.gateway.audit.latest_checkpoint() if h.gateway.audit is not None else None
    assert latest is not None
    # The same checkpoint signed by another key under the gateway's name: what a gateway (or
    # whoever serves its pages) that swaps both the note and the JWK Set would show.
    other = SM2PrivateKey.generate()
    swapped = SignedNote(latest.body, (sign_line(latest.body, h.gateway.name, other),))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    config = {
        "url": url,
        "chromium": CHROMIUM,
        "screenshots": str(SCREENSHOTS),
        "secrets": {c: h.secrets[c] for c in ("insurer-a", "allowance-office")},
        "officer": {"client_id": "privacy-officer", "secret": h.secrets["privacy-officer"]},
        "other_key": SM2PrivateKey.generate().public_key.to_jwk(kid="not-the-gateway"),
        "swapped": {"jwk": other.public_key.to_jwk(kid="swapped"), "note": swapped.text()},
        "burst": {
            "requester": "allowance-office",
            "body": {"claim": "married", "purpose": "maternity_allowance", "params": {}},
            "subjects": people[20:40],
        },
        "citizen": {
            "id_number": me,
            "token": h.citizen(me)["Authorization"].removeprefix("Bearer "),
        },
    }

    run = subprocess.run(
        ["node", str(BROWSER_TESTS / "pages.mjs"), json.dumps(config)],
        cwd=BROWSER_TESTS,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert "error" not in seen, seen["error"]
    assert seen["steps"] == ["signature", "filter", "proof", "anomaly", "citizen"]

    assert seen["redirected_to_login"]
    assert seen["signers"] and all(s["cls"].endswith("ok") for s in seen["signers"])
    # The checkpoint's gateway signature verified in the browser (SM2, sm-crypto), with the
    # gateway's key: the id shown is its kid (tongban's SM3 JWK thumbprint) ...
    gateway_key = h.gateway.signing_key
    assert gateway_key is not None
    assert [s["name"] for s in seen["signers"] if s["role"] == "gateway"] == [h.gateway.name]
    assert seen["signature"]["verified"] == "true", seen["signature"]
    assert seen["signature"]["key"] == gateway_key.public_key.key_id
    assert seen["note"] == latest.text()
    # ... pinned in the browser at that first visit, and found pinned at the next ...
    assert (
        seen["signature"]["pinned"] == "now"
        and "pinned in this browser now" in (seen["signature"]["text"])
    )
    assert seen["second_visit"]["verified"] == "true" and seen["second_visit"]["pinned"] == "before"
    # ... so a checkpoint signed by another key is NOT verified even with a JWK Set holding
    # that key, until the officer pins the new key by hand.
    assert seen["swapped"]["verified"] == "false", seen["swapped"]
    assert "not by the key pinned in this browser" in seen["swapped"]["text"]
    assert gateway_key.public_key.key_id in seen["swapped"]["text"]
    assert seen["swapped_pinned"]["verified"] == "true", seen["swapped_pinned"]
    assert seen["swapped_pinned"]["key"] == other.public_key.key_id
    # ... and NOT verified for a checkpoint changed on its way: its root (note and page),
    # the root shown only, another key served as the gateway's, the root of the checkpoint
    # a proof comes with.
    assert seen["tampered_root"]["verified"] == "false", seen["tampered_root"]
    assert "NOT verified" in seen["tampered_root"]["text"]
    assert "signature does not verify" in seen["tampered_root"]["text"]
    assert seen["tampered_display"]["verified"] == "false", seen["tampered_display"]
    assert "root shown is not the signed" in seen["tampered_display"]["text"]
    assert seen["other_key"]["verified"] == "false", seen["other_key"]
    assert "no key of the gateway's JWK Set has the signature's key id" in seen["other_key"]["text"]
    assert seen["tampered_proof"]["verified"] == "false", seen["tampered_proof"]
    assert "checkpoint signature NOT verified" in seen["tampered_proof"]["text"]
    # The officer filtered and found the refused insurer request, subject masked.
    assert seen["filtered"] and {r["requester"] for r in seen["filtered"]} == {"insurer-a"}
    hit = seen["filtered"][0]
    assert (hit["claim"], hit["purpose"], hit["result"]) == (
        "birth_registered",
        "underwriting",
        "denied",
    )
    assert hit["subject"] == mask(victim)
    # ... verified its inclusion proof in the browser ...
    assert seen["proof"]["verified"] == "true", seen["proof"]
    # ... and saw the burst raise a flag that links to the entries behind it.
    assert seen["burst_statuses"] == [200] * 20
    assert seen["burst_flags_before"] == 0 and seen["burst_flags_after"] >= 1
    assert len(seen["burst_rows"]) >= 15
    assert {r["requester"] for r in seen["burst_rows"]} == {"allowance-office"}
    assert seen["officer_offsite_requests"] == []
    # The citizen granted consent, the check succeeded, the revocation stopped the next.
    assert seen["consent_id"]
    assert seen["check_with_consent"]["status"] == 200
    assert {"requester": "insurer-a", "result": seen["check_with_consent"]["result"]} in seen[
        "access_after_check"
    ]
    assert seen["status_after_revoke"] == "revoked"
    assert seen["check_after_revoke"]["status"] == 403
    assert seen["check_after_revoke"]["type"].endswith("consent-revoked")
    assert {"requester": "insurer-a", "result": "denied"} in seen["access_after_revoke"]
    assert not seen["citizen_html_has_full_id"]
    for name in ("officer-filter", "officer-proof", "officer-anomaly", "citizen-consent",
                 "citizen-revoked"):  # fmt: skip
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 1000
