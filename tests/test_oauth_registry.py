"""Client registry and replay cache on SQLite and PostgreSQL; secret hashing."""

from __future__ import annotations

import threading
import types
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from tests.conftest import reset_chain
from tongban.gateway import oauth
from tongban.gateway.oauth import AuthMethod, ClientRegistry, SqlReplayCache
from tongban.gateway.oauth._schema import clients, create_schema, make_engine
from tongban.gateway.oauth.credentials import hash_secret, verify_secret
from tongban.primitives.errors import BadRequest, Conflict, NotFound, StoreUnavailable
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.jws import jwks

SM2_KEY = SM2PrivateKey.generate()
P256_KEY = ec.generate_private_key(ec.SECP256R1())
SM2_JWKS = jwks({"k1": SM2_KEY.public_key})
P256_JWKS = jwks({"p1": P256_KEY.public_key()})


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A database with empty OAuth tables, on SQLite (a file) and on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'oauth.db'}"
    else:
        url = request.getfixturevalue("pg_scratch_url")
    engine = make_engine(url)
    reset_chain(engine, "gateway")
    create_schema(engine)
    yield url
    reset_chain(engine, "gateway")
    engine.dispose()


@pytest.fixture
def registry(db_url):
    reg = ClientRegistry(db_url)
    yield reg
    reg.engine.dispose()


# --- registry -------------------------------------------------------------------------


def test_secret_client_round_trip(registry):
    reg = registry.register_client("insurer-a", "Insurer A", scopes={"checks", "checks:batch"})

    client = registry.get("insurer-a")

    assert reg.secret and len(reg.secret) >= 43
    assert client is not None
    assert client.scopes == {"checks", "checks:batch"}
    assert client.auth_method is AuthMethod.CLIENT_SECRET_BASIC
    assert client.check_client_secret(reg.secret)
    assert not client.check_client_secret(reg.secret + "x")
    assert not client.check_client_secret("")
    assert reg.secret not in repr(reg) and reg.secret not in repr(client)
    with registry.engine.connect() as conn:
        stored = conn.execute(select(clients.c.secret_hash)).scalar_one()
    assert stored.startswith("scrypt$16384$8$1$") and reg.secret not in stored


def test_private_key_jwt_client_round_trip(registry):
    registry.register_client(
        "bank-b",
        "Bank B",
        scopes={"checks"},
        auth_method="private_key_jwt",
        jwks=SM2_JWKS,
        alg="SM2",
    )

    client = registry.get("bank-b")

    assert client is not None and client.assertion_alg == "SM2"
    assert client.keys == {"k1": SM2_KEY.public_key}
    assert client.secret_hash is None
    assert not client.check_client_secret("anything")
    assert client.check_endpoint_auth_method("private_key_jwt", "token")
    assert not client.check_endpoint_auth_method("client_secret_basic", "token")


def test_duplicate_client_is_a_conflict(registry):
    registry.register_client("dup-client", "One", scopes={"checks"})

    with pytest.raises(Conflict):
        registry.register_client("dup-client", "Two", scopes={"checks"})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"client_id": "a"}, "client_id"),
        ({"client_id": "bad id!"}, "client_id"),
        ({"scopes": set()}, "scopes"),
        ({"scopes": {"checks", "root"}}, "scopes"),
        ({"display_name": ""}, "display_name"),
        ({"auth_method": "private_key_jwt", "jwks": SM2_JWKS}, "alg"),
        ({"auth_method": "private_key_jwt", "jwks": SM2_JWKS, "alg": "HS256"}, "alg"),
        ({"auth_method": "private_key_jwt", "jwks": P256_JWKS, "alg": "SM2"}, "jwks"),
        ({"auth_method": "private_key_jwt", "jwks": {"keys": []}, "alg": "SM2"}, "jwks"),
        ({"jwks": SM2_JWKS, "alg": "SM2"}, "jwks"),
    ],
)
def test_invalid_registrations_name_the_field(registry, kwargs, field):
    args = {"client_id": "valid-id", "display_name": "X", "scopes": {"checks"}, **kwargs}

    with pytest.raises(BadRequest, match=f"^{field}:"):
        registry.register_client(**args)


def test_jwks_with_private_material_or_duplicate_kid_is_refused(registry):
    private = {**SM2_JWKS["keys"][0], "d": "AAAA"}
    twice = {"keys": [SM2_JWKS["keys"][0], SM2_JWKS["keys"][0]]}
    for bad in ({"keys": [private]}, twice, {"keys": [{"kid": "zz1", "kty": "oct"}]}):
        with pytest.raises(BadRequest, match=r"^jwks:"):
            registry.register_client(
                "pk-client",
                "X",
                scopes={"checks"},
                auth_method="private_key_jwt",
                jwks=bad,
                alg="SM2",
            )


def test_disable_enable_and_lookup(registry):
    registry.register_client("to-disable", "X", scopes={"checks"})

    registry.set_enabled("to-disable", False)

    assert registry.query_client("to-disable") is None
    assert registry.get("to-disable") is not None
    assert not registry.is_enabled("to-disable")
    registry.set_enabled("to-disable", True)
    assert registry.is_enabled("to-disable")
    with pytest.raises(NotFound):
        registry.set_enabled("nobody-here", False)
    assert registry.get("x" * 500) is None  # malformed ids never reach the database


def test_rotate_secret_and_keys(registry):
    old = registry.register_client("rotating", "X", scopes={"checks"}).secret
    registry.register_client(
        "rotating-pk",
        "Y",
        scopes={"checks"},
        auth_method="private_key_jwt",
        jwks=P256_JWKS,
        alg="ES256",
    )

    new = registry.rotate_secret("rotating")
    new_key = ec.generate_private_key(ec.SECP256R1())
    registry.set_jwks("rotating-pk", jwks({"p2": new_key.public_key()}))

    client = registry.get("rotating")
    assert client is not None and client.check_client_secret(new)
    assert old is not None and not client.check_client_secret(old)
    rotated = registry.get("rotating-pk")
    assert rotated is not None and set(rotated.keys) == {"p2"}
    with pytest.raises(Conflict):
        registry.rotate_secret("rotating-pk")
    with pytest.raises(Conflict):
        registry.set_jwks("rotating", P256_JWKS)
    with pytest.raises(BadRequest):  # the pinned alg stays: no switching families by rotation
        registry.set_jwks("rotating-pk", SM2_JWKS)
    assert [c.client_id for c in registry.clients()] == ["rotating", "rotating-pk"]


def test_store_outage_is_store_unavailable():
    registry = ClientRegistry("postgresql+psycopg://127.0.0.1:1/nothing?connect_timeout=1")

    with pytest.raises(StoreUnavailable):
        registry.get("some-client")
    with pytest.raises(StoreUnavailable):
        SqlReplayCache(registry.engine).first_use("jti", 1e12)


# --- replay cache ---------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_replay_cache_is_shared_by_two_workers(db_url):
    worker_a, worker_b = SqlReplayCache(db_url), SqlReplayCache(db_url)

    assert worker_a.first_use("client-1/abc", 2e9)
    assert not worker_b.first_use("client-1/abc", 2e9)
    assert not worker_a.first_use("client-1/abc", 2e9)
    assert worker_b.first_use("client-1/abd", 2e9)
    worker_a.engine.dispose()
    worker_b.engine.dispose()


def test_replay_cache_reclaims_and_purges_expired_ids(db_url):
    clock = Clock(1_000.0)
    worker_a = SqlReplayCache(db_url, clock=clock, purge_interval=600)
    worker_b = SqlReplayCache(db_url, clock=clock, purge_interval=600)
    assert worker_a.first_use("old", 1_010.0)
    assert worker_a.first_use("older", 1_005.0)
    assert worker_b.first_use("other", 1_010.0)  # each worker purged once at start

    clock.now = 1_020.0  # both have expired

    assert worker_b.first_use("old", 1_080.0)  # reclaimed by exactly one worker
    assert not worker_a.first_use("old", 1_080.0)
    assert worker_a.purge() == 2  # "older" and "other"; "old" is live again
    worker_a.engine.dispose()
    worker_b.engine.dispose()


def test_replay_cache_race_has_one_winner(db_url):
    """Eight workers (own engines) present the same id at once: exactly one accepts it."""
    caches = [SqlReplayCache(db_url) for _ in range(8)]
    barrier = threading.Barrier(len(caches))

    def attempt(cache: SqlReplayCache) -> bool:
        barrier.wait()
        return cache.first_use("raced-jti", 2e9)

    with ThreadPoolExecutor(len(caches)) as pool:
        results = list(pool.map(attempt, caches))

    assert results.count(True) == 1
    for cache in caches:
        cache.engine.dispose()


# --- secrets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoded",
    [None, "", "plain", "scrypt$x$8$1$AA$AA", "scrypt$16384$8$1$!!$AA", "bcrypt$16384$8$1$AA$AA"],
)
def test_verify_secret_never_raises(encoded):
    assert verify_secret("secret", encoded) is False


def test_hashes_are_salted():
    assert hash_secret("same", n=2) != hash_secret("same", n=2)
    assert verify_secret("same", hash_secret("same", n=2))


def test_public_surface_is_complete():
    exported = {
        name
        for name, value in vars(oauth).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(oauth.__all__) == exported - {"annotations"}
