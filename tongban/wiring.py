"""Builds the cores from settings: the one place that knows how the parts fit together."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from tongban.adapters.at_rest import load_kek
from tongban.adapters.client import DepartmentClient, HttpTransport, Transport
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.deptfile import Declarations, DepartmentFile, load_department_file
from tongban.adapters.evaluate import MANAGED, Evaluator
from tongban.adapters.file_source import (
    FileSource,
    FileStatistics,
    JsonWitnessState,
)
from tongban.adapters.live import LiveSource
from tongban.adapters.protocol import AdapterCore, RequestSigner, StatisticsContributor
from tongban.adapters.statistics import LocalStatistics
from tongban.adapters.store import DepartmentStore
from tongban.adapters.witness import MetaWitnessState, Witness, WitnessState
from tongban.audit.log import AuditLog
from tongban.audit.vault import Pseudonymizer, VaultKeys
from tongban.gateway.answers import AnswerSigner
from tongban.gateway.catalog import Catalog
from tongban.gateway.checkpoints import Checkpointer
from tongban.gateway.checks import Checker
from tongban.gateway.consent import ConsentRequired, ConsentStore
from tongban.gateway.enumeration import EnumerationGuard
from tongban.gateway.federation_jobs import FederationJobs
from tongban.gateway.jobs import JobPolicy
from tongban.gateway.metrics import AUDIT_APPENDS
from tongban.gateway.oauth import CitizenTokenVerifier, ClientRegistry, SqlReplayCache, TokenIssuer
from tongban.gateway.oauth.throttle import TokenThrottle
from tongban.gateway.pages.store import PageSessionStore
from tongban.gateway.ratelimit import SqlBucketStore, build_rate_limiter
from tongban.gateway.services import AuditEvents, Gateway, OAuthParts
from tongban.gateway.statistics import StatisticsService
from tongban.gateway.statistics_store import StatisticsStore
from tongban.migrations import GATEWAY, require_head, stores
from tongban.policies import PolicyAdmin, PolicyStore, open_enforcer
from tongban.primitives.errors import TongbanError
from tongban.primitives.gm import SM2PrivateKey, SM2PublicKey, use_backend
from tongban.primitives.metrics_auth import ensure_metrics_token
from tongban.primitives.rotation import FollowedKey
from tongban.primitives.wire import PredicateCall, Tri
from tongban.tls import TLSFiles

from .boundary import (
    CommandFailed,
    MissingPrerequisite,
    UsageError,
    display_url,
    missing_sqlite_file,
)
from .config import DEPARTMENTS as DEPARTMENT_NAMES
from .config import Settings
from .keys import KeyRing

__all__ = [
    "build_adapter",
    "build_citizen_verifier",
    "build_consents",
    "build_file_adapter",
    "build_gateway",
    "build_registry",
    "declared_departments",
    "department_files",
    "load_catalog",
    "open_audit_log",
    "open_file_source",
    "party_tls",
    "require_current_schema",
    "require_department_data",
]

log = logging.getLogger("tongban.adapter")


def require_department_data(settings: Settings, department: str) -> None:
    """Refuse to serve a department whose SQLite store does not exist (opening it would
    create an empty one, and every answer would be "unknown")."""
    missing = missing_sqlite_file(settings.store_url(department))
    if missing is not None:
        raise MissingPrerequisite(
            f"no {department} data at {missing}: run `tongban generate --population 1000 "
            f"--seed 7 --out {settings.data_dir.absolute()}` (or pass --store-url)"
        )


def require_current_schema(settings: Settings) -> None:
    """Refuse, in one line, to start on a store that is not at the code's revision:
    ``database X is at revision R, the code needs H: run `tongban db upgrade```. Nothing is
    created at start-up: the operator's ``tongban db upgrade`` makes and migrates tables."""
    for store in stores(settings):
        require_head(store.url, store.chain, name=store.shown)


def party_tls(settings: Settings, name: str) -> TLSFiles | None:
    """``name``'s certificate, key and CA in the data directory's PKI (``tongban pki``,
    docs/transport.md), or None when it has none."""
    from .pki import files, pki_dir

    found = files(pki_dir(settings.data_dir), name)
    return found if found.cert.is_file() and found.key.is_file() and found.ca.is_file() else None


def _managed_store(settings: Settings, department: str) -> DepartmentStore:
    require_department_data(settings, department)
    # A department with a key-encryption key has its store encrypted at rest.
    kek = load_kek(settings.keys_dir, department)
    return DepartmentStore(DEPARTMENTS[department], settings.store_url(department), kek=kek)


def build_adapter(
    settings: Settings, department: str, *, envelope: bool = True
) -> tuple[AdapterCore[Evaluator], Witness]:
    """A built-in department over the managed store `tongban generate` filled.
    ``envelope=False`` (requests and answers unsealed) exists for bench_gateway's
    comparison only: no setting, option or environment variable reaches it."""
    use_backend(settings.sm2_backend)
    KeyRing(settings.keys_dir).require(private=[department], public=["gateway"])
    store = _managed_store(settings, department)
    core, witness = _adapter(
        settings,
        Evaluator(store),
        LocalStatistics(store, min_threshold=settings.stats_threshold),
        MetaWitnessState(store),
        envelope=envelope,
    )
    return core, witness


def build_file_adapter(
    settings: Settings, dept: DepartmentFile
) -> tuple[AdapterCore[FileSource], Witness]:
    """A department served from its department file: keys from ``settings.keys_dir`` as
    for a built-in one. A live source that cannot be reached now is no reason not to
    start: the adapter answers ``unknown`` and says it is not ready until it is back.

    A file over the managed store (``source = "managed"``) reads the store of the
    built-in department of its name, with its statistics and witness state. Any other
    source contributes the registered statistics its file declares (none if it declares
    none: every statistic request is then refused as unknown), and its witness state is
    DIR/witness/NAME.json.
    """
    use_backend(settings.sm2_backend)
    KeyRing(settings.keys_dir).require(private=[dept.name], public=["gateway"])
    source, statistics, state = open_file_source(settings, dept)
    health = source.health()
    if health["reachable"]:
        log.info("%s: answering from a %s source", dept.name, source.kind)
    else:
        log.warning(
            "%s: %s source not reachable at start-up, answering unknown until it is: %s",
            dept.name,
            source.kind,
            health["detail"],
        )
    core, witness = _adapter(settings, source, statistics, state)
    return core, witness


def open_file_source(
    settings: Settings, dept: DepartmentFile
) -> tuple[FileSource, StatisticsContributor | None, WitnessState]:
    """A department file's source, how it contributes to statistics (its declared
    ``[statistics]``, or a managed store's way; none for a file declaring none) and where
    its witness keeps state. Connects to nothing yet."""
    if dept.managed:
        return _managed_file_source(settings, dept)
    state = JsonWitnessState(settings.data_dir / "witness" / f"{dept.name}.json")
    live = LiveSource(dept)
    statistics = (
        FileStatistics(dept, live, min_threshold=settings.stats_threshold)
        if dept.statistics
        else None
    )
    return FileSource(dept, live), statistics, state


def _managed_file_source(
    settings: Settings, dept: DepartmentFile
) -> tuple[FileSource, StatisticsContributor | None, MetaWitnessState]:
    if dept.name not in DEPARTMENTS:
        raise UsageError(
            f'{dept.path}: source = "managed" reads a store `tongban generate` fills, which '
            f"exists only for {', '.join(DEPARTMENT_NAMES)}, not {dept.name}"
        )
    store = _managed_store(settings, dept.name)
    index = store.blind_index()
    # A sealed store holds blind-index tokens: bind those (and no 15-digit form).
    form = None if index.plain else index.token
    live = LiveSource(dept, settings.store_url(dept.name), subject_form=form)
    source = FileSource(dept, live, kind=MANAGED, reference=store.as_of)
    # The file replaces the built-in department: its statistics are the ones it declares.
    statistics = (
        FileStatistics(dept, live, min_threshold=settings.stats_threshold)
        if dept.statistics
        else None
    )
    return source, statistics, MetaWitnessState(store)


_S = TypeVar("_S", Evaluator, FileSource)


def _adapter(
    settings: Settings,
    source: _S,
    statistics: StatisticsContributor | None,
    state: WitnessState,
    *,
    envelope: bool = True,
) -> tuple[AdapterCore[_S], Witness]:
    keys = KeyRing(settings.keys_dir)
    gateway_key = keys.public("gateway")
    own = keys.private(source.name)
    core = AdapterCore(
        source,
        own,
        {gateway_key.key_id: gateway_key},
        gateway_issuer=settings.gateway_issuer,
        statistics=statistics,
        envelope=envelope,
    )
    witness = Witness(
        source.name,
        own,
        origin=settings.origin,
        gateway_name=settings.gateway_issuer,
        gateway_key=gateway_key,
        state=state,
    )
    return core, witness


class _Declarations(Mapping[str, str]):
    """The environment a department file is read with for its declarations only (the
    gateway, the demo's supervisor): every ``${VAR}`` is a placeholder, so no secret of
    the department's source is needed or held there."""

    def __getitem__(self, key: str) -> str:
        return MANAGED

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


DECLARATIONS_ONLY: Mapping[str, str] = _Declarations()


def department_files(
    paths: Sequence[Path], *, env: Mapping[str, str] | None = DECLARATIONS_ONLY
) -> dict[str, DepartmentFile]:
    """Department files that replace the built-in departments of their names, by name.
    A file naming no built-in department, or a department given twice, is refused in one
    line. ``env`` resolves ``${VAR}`` (default: placeholders, for declarations only)."""
    out: dict[str, DepartmentFile] = {}
    for path in paths:
        dept = load_department_file(path, env=env)
        if dept.name not in DEPARTMENT_NAMES:
            raise UsageError(
                f"{path}: name = {dept.name!r} is not a built-in department (expected one of "
                f"{', '.join(DEPARTMENT_NAMES)}): a department file replaces the one of its name"
            )
        if dept.name in out:
            raise UsageError(f"{path}: {dept.name} is already given by {out[dept.name].path}")
        out[dept.name] = dept
    return out


def declared_departments(files: Mapping[str, DepartmentFile]) -> dict[str, Declarations]:
    """What claims are validated against: the built-in departments' files, each one a
    given file replaces declared by that file instead."""
    return {**DEPARTMENTS, **files}


def load_catalog(files: Mapping[str, DepartmentFile]) -> Catalog:
    """The claim catalog, validated against :func:`declared_departments`: a claim naming a
    predicate (or a parameter value) that no department declares is refused in one line."""
    try:
        return Catalog.load(declared_departments(files))
    except ValueError as exc:
        served = "; ".join(f"{name} is declared by {d.path}" for name, d in sorted(files.items()))
        raise CommandFailed(f"{exc} ({served})" if served else str(exc)) from None


def open_audit_log(settings: Settings, keys: KeyRing | None = None) -> AuditLog:
    """The gateway's audit log, opened (its start-up check run), for the gateway and for
    the operator's commands on the gateway host that record what they change."""
    keys = keys or KeyRing(settings.keys_dir)
    pseudonyms = Pseudonymizer(keys.secret("pseudonym", 32), VaultKeys(keys.directory))
    return AuditLog(
        settings.audit_store_url(),
        pseudonyms,
        origin=settings.origin,
        startup_check=settings.audit_startup_check or None,
        on_append=AUDIT_APPENDS.inc,
    ).open()


def build_registry(settings: Settings) -> ClientRegistry:
    # Client secrets are stored as HMAC-SM3 under this pepper, which stays out of the
    # database (gateway/oauth/credentials.py); every process of the gateway reads the same.
    pepper = KeyRing(settings.keys_dir).secret("client-pepper", 32)
    url = settings.gateway_store_url()
    require_head(url, GATEWAY, name=f"gateway ({display_url(url)})")
    return ClientRegistry(url, pepper=pepper)


def build_consents(
    settings: Settings,
    audit: AuditLog,
    catalog: Catalog,
    registry: ClientRegistry,
    signing_key: SM2PrivateKey | FollowedKey,
    departments: DepartmentClient,
    answers: AnswerSigner,
) -> ConsentStore:
    def guardian_check(guardian_id: str, child_id: str) -> Tri:
        # Household registration (公安) decides who may consent for a minor.
        try:
            call = PredicateCall("guardian_of", guardian_id, {}, child_id)
            return departments.evaluate("police", call).result
        except TongbanError:
            return Tri.UNKNOWN

    store = ConsentStore(
        settings.gateway_store_url(),
        pseudonyms=audit.pseudonyms,
        catalog=catalog,
        registry=registry,
        signing_key=signing_key,
        audit=AuditEvents(audit),
        pairwise=answers.pairwise,
        guardian_check=guardian_check,
        issuer=settings.public_url,
    )
    return store


def build_citizen_verifier(
    settings: Settings, keys: KeyRing, *, allow_loopback_http: bool = False
) -> CitizenTokenVerifier | None:
    """The verifier of citizen logins: the configured OpenID Connect provider's ID tokens
    (its JWK Set fetched from ``citizen_idp_jwks_url``), or the demo IdP's tokens when
    ``citizen_idp_demo`` is set (`tongban demo` sets it), or None: no citizen login, and
    citizen requests get ``citizen-login-not-configured``. The demo key in the data
    directory is never trusted for being there. ``allow_loopback_http`` is for tests."""
    from tongban.gateway.oauth.citizen import JwksKeys

    if settings.citizen_idp_jwks_url is not None:
        if settings.citizen_idp_issuer is None or settings.citizen_idp_audience is None:
            raise UsageError("citizen_idp_jwks_url needs citizen_idp_issuer and _audience")
        jwks = JwksKeys(
            settings.citizen_idp_jwks_url,
            ttl=settings.citizen_idp_jwks_ttl,
            timeout=settings.citizen_idp_timeout,
            allow_loopback_http=allow_loopback_http,
        )
        return CitizenTokenVerifier.oidc(
            issuer=settings.citizen_idp_issuer,
            audience=settings.citizen_idp_audience,
            keys=jwks,
            algorithms=settings.citizen_idp_algorithms,
            subject_claim=settings.citizen_idp_subject_claim,
        )
    if settings.citizen_idp_demo:
        idp = keys.ensure("idp").public_key
        return CitizenTokenVerifier(
            issuer=settings.idp_issuer, audience=settings.public_url, keys={idp.key_id: idp}
        )
    return None


def build_gateway(
    settings: Settings,
    *,
    start: bool = True,
    transport: Transport | None = None,
    department_keys: Mapping[str, SM2PublicKey] | None = None,
    envelope: bool = True,
) -> Gateway:
    """The whole gateway. Tests pass an in-process ``transport`` and the departments'
    public keys; a deployment reaches adapters over HTTP at ``settings.adapter_urls``.
    ``envelope=False`` (requests to departments unsealed) exists for bench_gateway's
    comparison only: no setting, option or environment variable reaches it."""
    use_backend(settings.sm2_backend)
    keys = KeyRing(settings.keys_dir)
    connected = [d for d in DEPARTMENT_NAMES if d in settings.adapter_urls]
    keys.require(private=["gateway"], public=connected if department_keys is None else ())
    require_current_schema(settings)
    # One key per role. "gateway" is the key the departments know: it signs predicate
    # requests and audit checkpoints. Answers and consent artefacts, and access tokens, get
    # keys of their own, so a compromise or rotation of one role leaves the others intact.
    signing_key = keys.private("gateway")
    # These two rotate (`tongban keys rotate --signing`): followed on disk, so every
    # worker signs with a new key within a second and still verifies the retired ones.
    keys.ensure("gateway-answers")
    keys.ensure("gateway-tokens")
    answer_key = FollowedKey(keys.directory / "gateway-answers.key")
    token_key = FollowedKey(keys.directory / "gateway-tokens.key")
    signer = RequestSigner(signing_key, issuer=settings.gateway_issuer)
    if department_keys is None:
        department_keys = {d: keys.public(d) for d in connected}
    department_keys = dict(department_keys)
    if transport is None:
        # Mutual TLS to every https:// adapter with the gateway's certificate of the
        # data directory's PKI (followed on disk: a renewed one is used at once).
        transport = HttpTransport(settings.adapter_urls, tls=party_tls(settings, "gateway"))
    client = DepartmentClient(
        signer, transport, department_keys, timeout=settings.adapter_timeout, envelope=envelope
    )
    audit = open_audit_log(settings, keys)
    pseudonyms = audit.pseudonyms
    checkpointer = Checkpointer(
        audit,
        signing_key,
        name=settings.gateway_issuer,
        witnesses=department_keys,
        transport=transport,
        interval=settings.checkpoint_interval,
        timeout=settings.adapter_timeout,
        quorum=settings.witness_quorum or None,
    )
    registry = build_registry(settings)
    issuer = TokenIssuer(
        token_key, issuer=settings.public_url, audience=settings.public_url + "/v1"
    )
    citizen = build_citizen_verifier(settings, keys)
    files = department_files(settings.department_files)
    catalog = load_catalog(files)
    policy_store = PolicyStore.from_url(settings.gateway_store_url())
    enforcer = open_enforcer(policy_store, catalog)
    events = AuditEvents(audit)
    policy_admin = PolicyAdmin(policy_store, enforcer, catalog, events)
    answers = AnswerSigner(
        answer_key,
        issuer=settings.public_url,
        pairwise_key=keys.secret("pairwise", 32),
        es256_key=keys.p256("gateway"),
    )
    consents = build_consents(settings, audit, catalog, registry, answer_key, client, answers)
    enumeration = EnumerationGuard(policy_store.engine, pseudonym=pseudonyms.pseudonym)
    page_sessions = PageSessionStore(policy_store.engine)
    checker = Checker(
        catalog,
        enforcer,
        consents,
        client,
        audit,
        answers,
        timeout=settings.adapter_timeout,
        consent_required=lambda: ConsentRequired(
            "consent_id: this purpose needs the subject's consent"
        ),
        rate_limiter=build_rate_limiter(
            settings.gateway_store_url(),
            requester_burst=settings.rate_requester_burst,
            requester_per_second=settings.rate_requester_per_second,
            subject_burst=settings.rate_subject_burst,
            subject_per_second=settings.rate_subject_per_second,
            pseudonym=pseudonyms.pseudonym,
        ),
        enumeration=enumeration,
    )
    jobs = JobPolicy(enforcer, events)
    job_store = StatisticsStore(policy_store.engine, budget=settings.dp_budget)
    limiter = checker.rate_limiter
    engines = [registry.engine, policy_store.engine, consents.engine]
    if limiter is not None and isinstance(limiter.store, SqlBucketStore):
        engines.append(limiter.store.engine)
    statistics = StatisticsService(
        client,
        events,
        job_store,
        jobs=jobs,
        threshold=settings.stats_threshold,
        require_dp=settings.stats_require_dp,
        declared=declared_departments(files),
    )
    gateway = Gateway(
        catalog=catalog,
        departments=client,
        audit=audit,
        checkpointer=checkpointer,
        name=settings.gateway_issuer,
        signing_key=signing_key,
        witness_keys=department_keys,
        oauth=OAuthParts(
            registry=registry,
            issuer=issuer,
            token_endpoint=settings.public_url + "/oauth/token",
            replay_cache=SqlReplayCache(registry.engine),
            citizen_verifier=citizen,
            token_throttle=TokenThrottle.on_engine(registry.engine),
        ),
        checker=checker,
        policy_admin=policy_admin,
        answers=answers,
        consents=consents,
        statistics=statistics,
        jobs=jobs,
        federation=FederationJobs(settings.data_dir, events, jobs=jobs, store=job_store),
        metrics=ensure_metrics_token(settings.keys_dir),
        page_sessions=page_sessions,
        keys_dir=keys.directory,
        engines=list({id(e): e for e in engines}.values()),
    )
    if start:
        AuditEvents(audit).append(
            {"kind": "lifecycle", "event": "gateway_started", "origin": audit.origin}
        )
        checkpointer.start()
    return gateway
