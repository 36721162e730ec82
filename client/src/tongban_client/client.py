"""The requester's client: OAuth 2.0 client credentials, checks, and audit proofs.

Authentication at ``POST {base}/oauth/token`` goes through Authlib's httpx client, with
``client_secret_basic`` or ``private_key_jwt`` (an assertion signed with SM2 or ES256).
The access token is cached and renewed ``renew_before`` seconds before it expires, and
once more if the gateway answers 401 to a cached one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeGuard

from ._gm import SM2PrivateKey, SM2PublicKey, b64url_decode
from ._http import (
    REQUEST_ERRORS,
    OAuth2Client,
    PrivateKeyJWT,
    Response,
    is_loopback,
    json_body,
    tls_verify,
)
from .checkpoint import Checkpoint, verify_note
from .errors import (
    CheckpointRejected,
    ProofRejected,
    ProtocolError,
    TongbanClientError,
    TransportError,
    problem_from_response,
)
from .jose import client_assertion, verify_answer
from .keys import KeySource, PrivateKey, PublicKey, jwks_keys, load_private_key, load_public_key
from .merkle import EMPTY_ROOT, HASH_SIZE, root_from_consistency, root_from_inclusion
from .results import (
    BatchItem,
    BatchResult,
    CheckResult,
    ClaimInfo,
    ConsistencyResult,
    InclusionResult,
    PurposeInfo,
    Subject,
)

__all__ = ["Client", "NotCheckpointedYet"]

log = logging.getLogger("tongban_client")

_USER_AGENT = "tongban-client/0.1"
_ACCEPT = "application/json, application/problem+json;q=0.9"
_JWKS_TTL = 300.0  # the gateway serves its JWK Set with max-age=300


class NotCheckpointedYet(TongbanClientError):
    """The entry is newer than the latest checkpoint; ask again after the next one (the
    gateway signs a checkpoint every few seconds)."""

    def __init__(self, index: int, tree_size: int) -> None:
        super().__init__(f"entry {index} is not in the latest checkpoint ({tree_size} entries)")
        self.index = index
        self.tree_size = tree_size


@dataclass(frozen=True)
class _Token:
    value: str
    renew_at: float


class _AssertionAuth(PrivateKeyJWT):  # type: ignore[misc]  # Authlib is untyped
    """Authlib's ``private_key_jwt`` client authentication with the assertion the gateway
    wants: ``typ`` client-authentication+jwt, ``kid``, a 60 s lifetime, SM2 or ES256
    (Authlib's JOSE layer has no SM2, and would make a one-hour assertion)."""

    def __init__(self, key: PrivateKey, kid: str | None, token_endpoint: str) -> None:
        super().__init__(token_endpoint=token_endpoint)
        self._key = key
        self._kid = kid

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return client_assertion(self._key, auth.client_id, token_endpoint, kid=self._kid)


def _alg_of(key: PrivateKey) -> str:
    return "SM2" if isinstance(key, SM2PrivateKey) else "ES256"


class Client:
    """A requester system's connection to one gateway.

    ``base_url`` is the gateway (``https://gateway.example``); plain ``http://`` is refused
    except to a loopback address, or with ``allow_http``. Authenticate with
    ``client_secret`` (``client_secret_basic``) or ``private_key`` + ``key_id``
    (``private_key_jwt``; ``alg`` SM2 or ES256 follows from the key, and if given must
    match it). With neither (and ``client_id`` None if you like), only the public calls
    work: the JWK Set, checkpoints, consistency proofs. ``token_endpoint`` overrides
    ``{base_url}/oauth/token``, also the assertion's ``aud``, for a gateway whose public
    URL is not the one you reach it at.

    Audit proofs need the gateway's checkpoint key *pinned*: ``gateway_key`` (its SM2 JWK,
    e.g. the gateway's ``keys/gateway.jwk.json``, or a PEM), obtained out of band. Only with
    ``trust_gateway_jwks=True`` and no pinned key is a checkpoint signed by any SM2 key of
    the gateway's own JWK Set accepted (trust on each use: weaker). ``witness_keys``
    (name -> SM2 key) and ``witness_quorum`` additionally require department cosignatures.
    """

    def __init__(
        self,
        base_url: str,
        client_id: str | None,
        *,
        client_secret: str | None = None,
        private_key: KeySource | PrivateKey | None = None,
        key_id: str | None = None,
        alg: str | None = None,
        verify: bool | str | os.PathLike[str] = True,
        timeout: float = 10.0,
        token_endpoint: str | None = None,
        scope: str | None = None,
        renew_before: float = 30.0,
        gateway_key: KeySource | SM2PublicKey | None = None,
        gateway_name: str | None = None,
        audit_origin: str | None = None,
        witness_keys: Mapping[str, KeySource | SM2PublicKey] | None = None,
        witness_quorum: int = 0,
        trust_gateway_jwks: bool = False,
        allow_http: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        base = base_url.rstrip("/")
        if not base.startswith(("https://", "http://")):
            raise ValueError("base_url: expected an https:// URL")
        if base.startswith("http://") and not (allow_http or is_loopback(base)):
            raise ValueError(
                "base_url: plain http:// is only for loopback addresses (or allow_http=True)"
            )
        if client_id is None and (client_secret is not None or private_key is not None):
            raise ValueError("client_id: required with credentials")
        self.base_url = base
        self.client_id = client_id
        self.token_endpoint = token_endpoint or f"{base}/oauth/token"
        self.scope = scope
        self.renew_before = renew_before
        self._clock = clock
        self._lock = threading.Lock()
        self._token: _Token | None = None
        self._jwks: tuple[float, dict[str, Any]] | None = None
        self.gateway_key = _sm2_key(gateway_key, "gateway_key") if gateway_key is not None else None
        self.gateway_name = gateway_name
        self.audit_origin = audit_origin
        self.witness_keys = {
            n: _sm2_key(k, f"witness {n}") for n, k in (witness_keys or {}).items()
        }
        if witness_quorum > len(self.witness_keys):
            raise ValueError("witness_quorum: more than the pinned witnesses")
        self.witness_quorum = witness_quorum
        self.trust_gateway_jwks = trust_gateway_jwks

        method, secret, auth = self._auth_method(client_secret, private_key, key_id, alg)
        self.auth_method = method
        self._http = OAuth2Client(
            client_id=client_id,
            client_secret=secret,
            token_endpoint_auth_method=method,
            token_endpoint=self.token_endpoint,
            grant_type="client_credentials",
            verify=tls_verify(verify),
            timeout=timeout,
            headers={"User-Agent": _USER_AGENT, "Accept": _ACCEPT},
            follow_redirects=False,
        )
        if auth is not None:
            self._http.register_client_auth_method(auth)
        self._http.register_compliance_hook("access_token_response", self._token_response)

    def _auth_method(
        self,
        client_secret: str | None,
        private_key: KeySource | PrivateKey | None,
        key_id: str | None,
        alg: str | None,
    ) -> tuple[str, str | None, _AssertionAuth | None]:
        if client_secret is not None and private_key is not None:
            raise ValueError("give one of client_secret and private_key, not both")
        if client_secret is None and private_key is None:
            if alg is not None or key_id is not None:
                raise ValueError("alg and key_id are for private_key_jwt (private_key)")
            return "none", None, None  # public calls only: keys, checkpoints, consistency
        if client_secret is not None:
            if alg is not None or key_id is not None:
                raise ValueError("alg and key_id are for private_key_jwt (private_key)")
            return "client_secret_basic", client_secret, None
        assert private_key is not None
        key = load_private_key(private_key)
        key_alg = _alg_of(key)
        if alg is not None and alg != key_alg:
            raise ValueError(f"alg: the private key is an {key_alg} key, not {alg}")
        if key_alg == "SM2" and not key_id:
            raise ValueError("key_id: required for an SM2 key (the kid you registered)")
        return "private_key_jwt", None, _AssertionAuth(key, key_id, self.token_endpoint)

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r}, {self.client_id!r}, auth={self.auth_method})"

    # --- tokens ---------------------------------------------------------------------------

    def _token_response(self, resp: Response) -> Response:
        """Authlib's hook before it parses a token response: a refusal becomes a Problem
        (RFC 6749 error JSON, with the gateway's ``type`` where it sends one)."""
        if resp.status_code != 200:
            raise problem_from_response(
                resp.status_code, resp.content, retry_after=resp.headers.get("Retry-After", "")
            )
        return resp

    def _fetch_token(self) -> _Token:
        started = self._clock()
        extra = {"scope": self.scope} if self.scope else {}
        try:
            token = self._http.fetch_token(
                self.token_endpoint, grant_type="client_credentials", **extra
            )
        except TongbanClientError:
            raise
        except REQUEST_ERRORS as exc:
            raise TransportError(f"token endpoint unreachable: {exc.__class__.__name__}") from exc
        except Exception as exc:  # Authlib: OAuthError, ValueError for a body not an object
            raise ProtocolError(
                f"token endpoint: unexpected answer ({exc.__class__.__name__})"
            ) from exc
        value = token.get("access_token")
        expires_in = token.get("expires_in")
        if not isinstance(value, str) or not value:
            raise ProtocolError("token endpoint: no access_token in the answer")
        if str(token.get("token_type", "")).lower() != "bearer":
            raise ProtocolError("token endpoint: not a Bearer token")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            expires_in = 60  # RFC 6749 makes it optional: renew soon
        lifetime = float(expires_in)
        log.debug("access token for %s, %.0f s", self.client_id, lifetime)
        # Renew renew_before seconds early; a token living less than twice that, halfway.
        renew_at = started + lifetime - min(self.renew_before, lifetime / 2)
        return _Token(value, renew_at)

    def _current_token(self) -> tuple[str, bool]:
        """The cached access token, or a new one: ``(token, fetched_now)``."""
        if self.auth_method == "none":
            raise TongbanClientError(
                "this call needs a token: give the client a client_secret or a private_key"
            )
        with self._lock:
            token = self._token
            if token is not None and self._clock() < token.renew_at:
                return token.value, False
            self._token = self._fetch_token()
            return self._token.value, True

    def access_token(self) -> str:
        """A valid access token (cached, or fetched now)."""
        return self._current_token()[0]

    def forget_token(self) -> None:
        """Drop the cached token: the next call fetches a new one."""
        with self._lock:
            self._token = None

    # --- HTTP -----------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        token: str | None,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, int | str] | None = None,
    ) -> Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            resp: Response = self._http.request(
                method,
                self.base_url + path,
                withhold_token=True,
                headers=headers,
                json=body,
                params=params,
            )
        except REQUEST_ERRORS as exc:
            raise TransportError(f"{path}: gateway unreachable ({exc.__class__.__name__})") from exc
        log.debug("%s %s -> %s", method, path, resp.status_code)
        return resp

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, int | str] | None = None,
        authenticated: bool = True,
        secrets: Sequence[str] = (),
    ) -> Response:
        """Send, with a bearer token unless ``authenticated`` is off; a cached token the
        gateway refuses with 401 is replaced once. Any non-2xx answer raises a Problem,
        from which ``secrets`` (the request's ID numbers) are scrubbed."""
        token, fresh = self._current_token() if authenticated else (None, True)
        resp = self._send(method, path, token=token, body=body, params=params)
        if resp.status_code == 401 and authenticated and not fresh:
            log.debug("cached token refused; fetching a new one")
            with self._lock:
                if self._token is not None and self._token.value == token:
                    self._token = None
            token, _ = self._current_token()
            resp = self._send(method, path, token=token, body=body, params=params)
        if not 200 <= resp.status_code < 300:
            raise problem_from_response(
                resp.status_code,
                resp.content,
                secrets=secrets,
                retry_after=resp.headers.get("Retry-After", ""),
            )
        return resp

    def _json(self, resp: Response, what: str) -> dict[str, Any]:
        doc = json_body(resp)
        if not isinstance(doc, dict):
            raise ProtocolError(f"{what}: the answer is not a JSON object")
        return doc

    # --- checks ---------------------------------------------------------------------------

    def check(
        self,
        claim: str,
        purpose: str,
        id_number: str,
        *,
        params: Mapping[str, Any] | None = None,
        consent_id: str | None = None,
        answer_alg: str = "SM2",
    ) -> CheckResult:
        """``POST /v1/checks``: one yes/no/undetermined answer about one citizen."""
        body: dict[str, Any] = {
            "subject": {"id_number": id_number},
            "claim": claim,
            "purpose": purpose,
            "answer_alg": answer_alg,
        }
        if params:
            body["params"] = dict(params)
        if consent_id is not None:
            body["consent_id"] = consent_id
        doc = self._json(self._call("POST", "/v1/checks", body=body, secrets=[id_number]), "check")
        result, answer, index = doc.get("result"), doc.get("answer"), doc.get("audit_index")
        if not (isinstance(result, str) and isinstance(answer, str) and _is_index(index)):
            raise ProtocolError("check: the answer lacks result, answer or audit_index")
        return CheckResult(result=result, answer=answer, audit_index=index)

    def batch(
        self,
        claim: str,
        purpose: str,
        subjects: Iterable[str | Subject | tuple[str, str | None]],
        *,
        params: Mapping[str, Any] | None = None,
        answer_alg: str = "SM2",
    ) -> BatchResult:
        """``POST /v1/checks/batch``: many citizens, one claim and purpose. A subject is an
        ID number, a :class:`Subject`, or ``(id_number, consent_id)``; results come back in
        the order given (``BatchItem.index``)."""
        items: list[dict[str, str]] = []
        for subject in subjects:
            if isinstance(subject, Subject):
                number, consent = subject.id_number, subject.consent_id
            elif isinstance(subject, tuple):
                number, consent = subject
            else:
                number, consent = subject, None
            item = {"id_number": number}
            if consent is not None:
                item["consent_id"] = consent
            items.append(item)
        body: dict[str, Any] = {
            "claim": claim,
            "purpose": purpose,
            "subjects": items,
            "answer_alg": answer_alg,
        }
        if params:
            body["params"] = dict(params)
        numbers = [i["id_number"] for i in items]
        doc = self._json(
            self._call("POST", "/v1/checks/batch", body=body, secrets=numbers), "batch"
        )
        results, answer = doc.get("results"), doc.get("answer")
        if not isinstance(results, list) or not isinstance(answer, str):
            raise ProtocolError("batch: the answer lacks results or answer")
        out = []
        for r in results:
            if not (
                isinstance(r, dict)
                and _is_index(r.get("index"))
                and isinstance(r.get("result"), str)
                and _is_index(r.get("audit_index"))
                and isinstance(r.get("reason"), str | None)
            ):
                raise ProtocolError("batch: a result lacks index, result or audit_index")
            out.append(BatchItem(r["index"], r["result"], r["audit_index"], r.get("reason")))
        return BatchResult(items=tuple(out), answer=answer)

    def claims(self) -> tuple[ClaimInfo, ...]:
        """``GET /v1/claims``: the claims this client may ask, each with its purposes."""
        doc = self._json(self._call("GET", "/v1/claims"), "claims")
        claims, titles = doc.get("claims"), doc.get("purposes")
        if not isinstance(claims, list):
            raise ProtocolError("claims: the answer lacks claims")
        titles = titles if isinstance(titles, dict) else {}
        return tuple(_claim(c, titles) for c in claims)

    # --- answers --------------------------------------------------------------------------

    def jwks(self, *, refresh: bool = False) -> dict[str, Any]:
        """The gateway's JWK Set (``/.well-known/jwks.json``), cached five minutes."""
        now = self._clock()
        if self._jwks is not None and not refresh and now < self._jwks[0]:
            return self._jwks[1]
        doc = self._json(self._call("GET", "/.well-known/jwks.json", authenticated=False), "jwks")
        if not isinstance(doc.get("keys"), list):
            raise ProtocolError("jwks: not a JWK Set")
        self._jwks = (now + _JWKS_TTL, doc)
        return doc

    def verify_answer(self, jws: str, *, now: float | None = None) -> dict[str, Any]:
        """:func:`~tongban_client.verify_answer` with this gateway's JWK Set (fetched again
        once for an unknown ``kid``: keys rotate) and this client as the audience."""
        jwks = self.jwks()
        kid = _unverified_kid(jws)
        if kid is not None and kid not in jwks_keys(jwks):
            jwks = self.jwks(refresh=True)
        return verify_answer(jws, jwks, audience=self.client_id, now=now)

    # --- audit ----------------------------------------------------------------------------

    def _checkpoint_keys(self) -> list[SM2PublicKey]:
        if self.gateway_key is not None:
            return [self.gateway_key]
        if not self.trust_gateway_jwks:
            raise ValueError(
                "audit proofs need the gateway's key pinned (gateway_key=...), or "
                "trust_gateway_jwks=True to trust the keys the gateway serves"
            )
        keys = [
            k for k in jwks_keys(self.jwks(refresh=True)).values() if isinstance(k, SM2PublicKey)
        ]
        if not keys:
            raise CheckpointRejected("the gateway's JWK Set has no SM2 key")
        return keys

    def verify_checkpoint(self, text: str) -> Checkpoint:
        """Verify a checkpoint's note text (as served, or as you stored it) with the
        pinned key (and witnesses); :class:`CheckpointRejected` if it does not verify."""
        failure: CheckpointRejected | None = None
        for key in self._checkpoint_keys():
            try:
                return verify_note(
                    text,
                    key,
                    gateway_name=self.gateway_name,
                    origin=self.audit_origin,
                    witnesses=self.witness_keys,
                    quorum=self.witness_quorum,
                )
            except CheckpointRejected as exc:
                failure = exc
        assert failure is not None
        raise failure

    def checkpoint(self) -> Checkpoint:
        """``GET /v1/audit/checkpoint``, verified. Keep ``.text`` to prove later that the
        log only grew (:meth:`verify_consistency`)."""
        resp = self._call("GET", "/v1/audit/checkpoint", authenticated=False)
        try:
            text = resp.content.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointRejected("checkpoint is not UTF-8 text") from None
        return self.verify_checkpoint(text)

    def verify_inclusion(
        self,
        index: int,
        *,
        checkpoint: Checkpoint | str | None = None,
        leaf_hash: bytes | None = None,
    ) -> InclusionResult:
        """Prove that audit entry ``index`` (one of your own checks: the gateway proves
        only those to a requester) is in the log the pinned key signed. ``checkpoint``
        defaults to the latest one; ``leaf_hash``, if you kept it from an earlier proof,
        must be the same (the entry was not rewritten)."""
        if index < 0:
            raise ValueError("index: an audit index is not negative")
        cp = self._verified(checkpoint) if checkpoint is not None else self.checkpoint()
        if index >= cp.size:
            raise NotCheckpointedYet(index, cp.size)
        resp = self._call(
            "GET", "/v1/audit/proofs/inclusion", params={"index": index, "size": cp.size}
        )
        doc = self._json(resp, "inclusion proof")
        if doc.get("index") != index or doc.get("tree_size") != cp.size:
            raise ProofRejected("inclusion proof is for another entry or tree")
        leaf = _hash(doc.get("leaf_hash"))
        path = _hashes(doc.get("audit_path"))
        if leaf_hash is not None and leaf != leaf_hash:
            raise ProofRejected("the entry's leaf hash changed")
        if root_from_inclusion(index, cp.size, leaf, path) != cp.root:
            raise ProofRejected("inclusion proof does not lead to the checkpoint's root")
        return InclusionResult(index=index, tree_size=cp.size, leaf_hash=leaf, root=cp.root)

    def verify_consistency(
        self, old: Checkpoint | str, new: Checkpoint | str | None = None
    ) -> ConsistencyResult:
        """Prove that the log of checkpoint ``new`` (default: the latest) extends the one of
        ``old`` (a checkpoint you verified and kept earlier, or its note text): nothing
        logged by then was changed or removed. Both are (re)verified with the pinned key."""
        first = self._verified(old)
        second = self._verified(new) if new is not None else self.checkpoint()
        if second.size < first.size:
            raise ProofRejected("the newer checkpoint has fewer entries: the log was cut")
        if first.size == 0:
            if first.root != EMPTY_ROOT:
                raise ProofRejected("an empty tree has another root")
            path: list[bytes] = []
            new_root = second.root
        elif first.size == second.size:
            path, new_root = [], first.root
        else:
            resp = self._call(
                "GET",
                "/v1/audit/proofs/consistency",
                params={"first": first.size, "second": second.size},
                authenticated=False,
            )
            doc = self._json(resp, "consistency proof")
            if doc.get("first") != first.size or doc.get("second") != second.size:
                raise ProofRejected("consistency proof is for other tree sizes")
            path = _hashes(doc.get("consistency_path"))
            new_root = root_from_consistency(first.size, second.size, first.root, path)
        if new_root != second.root:
            raise ProofRejected("the two checkpoints are not of one growing log")
        return ConsistencyResult(first.size, first.root, second.size, second.root)

    def _verified(self, checkpoint: Checkpoint | str) -> Checkpoint:
        text = checkpoint.text if isinstance(checkpoint, Checkpoint) else checkpoint
        return self.verify_checkpoint(text)


# --- helpers ------------------------------------------------------------------------------


def _sm2_key(source: KeySource | SM2PublicKey | PublicKey, what: str) -> SM2PublicKey:
    key = load_public_key(source)
    if not isinstance(key, SM2PublicKey):
        raise ValueError(f"{what}: checkpoints are signed with SM2; this is another key type")
    return key


def _is_index(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _hash(value: object) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * HASH_SIZE:
        raise ProofRejected("malformed hash in the proof")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ProofRejected("malformed hash in the proof") from None


def _hashes(value: object) -> list[bytes]:
    if not isinstance(value, list) or len(value) > 64:
        raise ProofRejected("malformed proof path")
    return [_hash(v) for v in value]


def _unverified_kid(jws: str) -> str | None:
    try:
        header = json.loads(b64url_decode(jws.split(".", 1)[0]))
    except (ValueError, UnicodeDecodeError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _claim(doc: object, titles: Mapping[str, Any]) -> ClaimInfo:
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise ProtocolError("claims: a claim lacks its name")
    purposes = []
    for p in doc.get("purposes") or []:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise ProtocolError("claims: a purpose lacks its name")
        title = titles.get(p["name"])
        title = title if isinstance(title, dict) else {}
        purposes.append(
            PurposeInfo(
                name=p["name"],
                consent_required=bool(p.get("consent_required")),
                legal_basis=_optional_str(p.get("legal_basis")),
                title=_optional_str(title.get("title")),
                title_zh=_optional_str(title.get("title_zh")),
            )
        )
    params = doc.get("params")
    return ClaimInfo(
        name=doc["name"],
        title=_optional_str(doc.get("title")),
        title_zh=_optional_str(doc.get("title_zh")),
        params={
            str(k): tuple(str(v) for v in vs)
            for k, vs in (params.items() if isinstance(params, dict) else ())
            if isinstance(vs, list)
        },
        purposes=tuple(purposes),
        departments=tuple(str(d) for d in doc.get("departments") or ()),
        raw=doc,
    )
