"""Configuration: one frozen value, built once from ``TONGBAN_*`` variables and flags.

Every field is settable from the environment as ``TONGBAN_<FIELD>`` (upper case):
``TONGBAN_IDP_ISSUER``, ``TONGBAN_GATEWAY_ISSUER``, ``TONGBAN_ADAPTER_TIMEOUT``, … The
two maps are one variable per department: ``TONGBAN_STORE_URL_<DEPT>`` and
``TONGBAN_ADAPTER_URL_<DEPT>``; ``TONGBAN_DEPARTMENT_FILES`` is ``os.pathsep``-separated.
The values are validated by the model (pydantic), and a wrong one is refused naming its
variable, never repeating its value (a URL can carry a password):
``TONGBAN_ADAPTER_TIMEOUT: expected a number``. A variable ``TONGBAN_*`` that names no
setting is warned about, with the closest name, so a typo does not pass silently.

**A configuration file** (TOML) can hold the same settings, under the fields' own names,
with ``[store_urls]`` and ``[adapter_urls]`` tables for the two maps; it is named by
``TONGBAN_CONFIG`` (or ``tongban --config FILE``). The variables override the file, and
flags override both; everything is read once, into one frozen value. A key that names no
setting, or a value of the wrong kind, is refused in one line naming the file and the key.

    data_dir = "/srv/tongban"
    public_url = "https://gateway.example"
    gateway_db_url = "postgresql+psycopg://gateway@db/tongban"
    adapter_timeout = 2.0

    [adapter_urls]
    health = "https://health.internal:8443"
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from tongban.adapters.builtin import builtin_names
from tongban.primitives.errors import TongbanError
from tongban.primitives.jws import SUPPORTED_ALGORITHMS

__all__ = ["ConfigError", "Settings"]

# The built-in departments, read from their files (adapters/departments/*.toml).
DEPARTMENTS = builtin_names()
PREFIX = "TONGBAN_"
#: The per-department variables of the two maps (``TONGBAN_STORE_URL_HEALTH``, …).
_NOT_SETTINGS = ("TONGBAN_STORE_URL_", "TONGBAN_ADAPTER_URL_")
#: A JWT claim name the ID number may be read from (it appears in problem details).
_CLAIM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}")


class ConfigError(TongbanError):
    """A ``TONGBAN_*`` value that is not valid: one line naming the variable."""

    status = 500
    slug = "configuration"
    title = "Invalid configuration"


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path = Path("demo-data")
    # Department store URLs; a department absent here uses DIR/departments/<name>.db.
    store_urls: Mapping[str, str] = Field(default_factory=dict)
    # Adapter service URLs, as the gateway reaches them.
    adapter_urls: Mapping[str, str] = Field(default_factory=dict)
    # Department files replacing built-in departments (docs/departments.md): the gateway
    # validates claims against their predicates (TONGBAN_DEPARTMENT_FILES, os.pathsep
    # separated).
    department_files: tuple[Path, ...] = ()
    adapter_timeout: float = 2.0
    gateway_issuer: str = "tongban-gateway"
    public_url: str = "http://127.0.0.1:8080"
    # The audit log's name in checkpoints (TONGBAN_LOG_ORIGIN). Unset: derived from
    # public_url. A log keeps the origin it was created with (tongban.audit.log), so
    # witnesses of an existing log are configured with that one (the demo does so).
    log_origin: str | None = None
    audit_url: str | None = None  # default: DIR/audit.db
    gateway_db_url: str | None = None  # requesters, policies, consents; default DIR/gateway.db
    checkpoint_interval: float = 2.0
    # Cosignatures a checkpoint needs to count as witnessed (TONGBAN_WITNESS_QUORUM); 0:
    # a majority of the witnesses. A checkpoint below it is flagged, not refused.
    witness_quorum: int = 0
    # Entries, counted from the newest, that the gateway re-hashes from their own bytes at
    # start-up (TONGBAN_AUDIT_STARTUP_CHECK); 0: all of them. Older ones are checked
    # through their stored leaf hashes against the latest checkpoint only.
    audit_startup_check: int = 0
    # Seconds between a gunicorn worker's checks for a policy another worker approved.
    policy_poll_interval: float = 2.0
    # The demo identity provider's issuer (`tongban citizen-token` signs as it). Its key,
    # DIR/keys/idp.jwk.json, is trusted only with citizen_idp_demo, which `tongban demo`
    # sets: never because the file exists.
    idp_issuer: str = "https://idp.tongban.example"
    citizen_idp_demo: bool = False
    # The citizens' OpenID Connect provider (docs/security.md, "Citizen login"): its ID
    # tokens' exact iss, the gateway's client id at it (aud), the algorithms it signs with
    # (a pinned list of SM2 and ES256; TONGBAN_CITIZEN_IDP_ALGORITHMS comma-separated), the
    # claim holding the GB 11643 ID number, and its JWK Set's https:// URL with the seconds
    # it is cached and a fetch may take. Issuer, audience and URL come together; none of
    # them and no citizen_idp_demo: the gateway accepts no citizen login.
    citizen_idp_issuer: str | None = None
    citizen_idp_audience: str | None = None
    citizen_idp_algorithms: tuple[str, ...] = ("ES256",)
    citizen_idp_subject_claim: str = "sub"
    citizen_idp_jwks_ttl: float = Field(default=300.0, gt=0)
    citizen_idp_timeout: float = Field(default=2.0, gt=0)
    citizen_idp_jwks_url: str | None = Field(default=None, validate_default=True)
    sm2_backend: str | None = None  # "tongsuo" or "gmssl"; None chooses automatically
    # Encrypted statistics: each analyst's lifetime differential-privacy budget (sum of the
    # epsilons of its DP jobs), and whether jobs without noise are refused.
    dp_budget: float = 10.0
    stats_require_dp: bool = False
    # Small-cell suppression threshold: the gateway's for jobs, an adapter's own floor.
    stats_threshold: int = 10
    # Rate limits of the check pipeline (gateway/ratelimit.py), token buckets shared by all
    # workers through the gateway database. A burst or rate of 0 turns that limit off.
    # Per requester: a check costs 1, a batch its subject count (capped at the burst).
    rate_requester_burst: float = 20_000
    rate_requester_per_second: float = 5_000
    # Per (requester, subject): a check or a batch costs 1 per distinct subject.
    rate_subject_burst: float = 30
    rate_subject_per_second: float = 0.5
    # Seconds a gunicorn thread may spend on one request before a slow client is cut off
    # (tongban/gunicorn_worker.py; only with that worker class).
    request_read_timeout: float = 10.0

    @field_validator("citizen_idp_issuer", "citizen_idp_audience")
    @classmethod
    def _non_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise PydanticCustomError("citizen_idp", "expected a non-empty value")
        return value

    @field_validator("citizen_idp_algorithms", mode="before")
    @classmethod
    def _algorithms(cls, value: Any) -> Any:
        names = [a.strip() for a in value.split(",")] if isinstance(value, str) else value
        if (
            not isinstance(names, list | tuple)
            or not names
            or not all(isinstance(a, str) for a in names)
            or set(names) - SUPPORTED_ALGORITHMS
        ):
            # Pinned: never none, never an HMAC (a public key must not become a secret).
            raise PydanticCustomError("citizen_idp", "expected a list of SM2 and ES256")
        return tuple(dict.fromkeys(names))

    @field_validator("citizen_idp_subject_claim")
    @classmethod
    def _claim(cls, value: str) -> str:
        if not _CLAIM_NAME.fullmatch(value):
            raise PydanticCustomError("citizen_idp", "expected a claim name")
        return value

    @field_validator("citizen_idp_jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Validated after the issuer and the audience (field order), so it can ask for them.
        given = [info.data.get("citizen_idp_issuer"), info.data.get("citizen_idp_audience")]
        if value is None:
            if any(v is not None for v in given):
                raise PydanticCustomError(
                    "citizen_idp", "required with citizen_idp_issuer and citizen_idp_audience"
                )
            return None
        from tongban.gateway.oauth.citizen import check_jwks_url  # the gateway's, lazily

        try:
            check_jwks_url(value)
        except ValueError as exc:
            raise PydanticCustomError("citizen_idp", str(exc)) from None
        if any(v is None for v in given):
            raise PydanticCustomError(
                "citizen_idp", "needs citizen_idp_issuer and citizen_idp_audience too"
            )
        if info.data.get("citizen_idp_demo"):
            raise PydanticCustomError(
                "citizen_idp", "one identity provider: not with citizen_idp_demo"
            )
        return value

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        config: Path | None = None,
        **overrides: Any,
    ) -> Settings:
        """The settings from the configuration file (``config``, else ``TONGBAN_CONFIG``
        in ``env``, else none), then ``env`` (default ``os.environ``), then ``overrides``
        (flags; ``None`` means "not given")."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        variables: dict[str, str] = {}  # field -> where its value came from
        path = config or (Path(env["TONGBAN_CONFIG"]) if env.get("TONGBAN_CONFIG") else None)
        if path is not None:
            for name, value in _read_file(path).items():
                values[name] = value
                variables[name] = f"{path}: {name}"
        for name in cls.model_fields:
            if name in ("store_urls", "adapter_urls"):
                continue
            var = PREFIX + name.upper()
            if var in env:
                raw = env[var]
                values[name] = (
                    tuple(Path(p) for p in raw.split(os.pathsep) if p)
                    if name == "department_files"
                    else raw
                )
                variables[name] = var
        for name, var_prefix in (("store_urls", "STORE_URL_"), ("adapter_urls", "ADAPTER_URL_")):
            found = {d: env[PREFIX + var_prefix + d.upper()] for d in DEPARTMENTS
                     if PREFIX + var_prefix + d.upper() in env}  # fmt: skip
            if found:
                values[name] = found
                variables[name] = PREFIX + var_prefix + "<DEPARTMENT>"
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            field = str(first["loc"][0]) if first["loc"] else ""
            where = variables.get(field, field or "settings")
            raise ConfigError(f"{where}: {_words(first)}") from None

    @classmethod
    def unknown_variables(cls, env: Mapping[str, str] | None = None) -> list[str]:
        """``TONGBAN_*`` variables in ``env`` that look like settings but name none, each
        with the closest setting's variable (``TONGBAN_ADAPTER_TIMOUT (did you mean
        TONGBAN_ADAPTER_TIMEOUT?)``). Not an error by itself: other tools read
        ``TONGBAN_*`` variables too; the CLI warns."""
        env = os.environ if env is None else env
        known = [PREFIX + n.upper() for n in cls.model_fields] + ["TONGBAN_CONFIG"]
        out = []
        for var in sorted(env):
            if not var.startswith(PREFIX) or var in known or var.startswith(_NOT_SETTINGS):
                continue
            close = difflib.get_close_matches(var, known, n=1, cutoff=0.85)
            if close:
                out.append(f"{var} (did you mean {close[0]}?)")
        return out

    def with_(self, **changes: Any) -> Settings:
        """A copy with ``changes``, validated like the original."""
        return type(self).model_validate({**dict(self), **changes})

    def store_url(self, department: str) -> str:
        url = self.store_urls.get(department)
        if url:
            return url
        return f"sqlite:///{self.data_dir / 'departments' / f'{department}.db'}"

    def audit_store_url(self) -> str:
        return self.audit_url or f"sqlite:///{self.data_dir / 'audit.db'}"

    def gateway_store_url(self) -> str:
        return self.gateway_db_url or f"sqlite:///{self.data_dir / 'gateway.db'}"

    @property
    def origin(self) -> str:
        """The audit log's name in checkpoints, as configured: ``log_origin``, else the
        gateway's host and path. A log created under another name keeps that one."""
        if self.log_origin:
            return self.log_origin
        return self.public_url.split("://", 1)[-1].rstrip("/") + "/audit"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"


_WORDS = {
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "int_parsing": "expected a whole number",
    "int_type": "expected a whole number",
    "int_from_float": "expected a whole number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected text",
    "path_type": "expected a path",
    "extra_forbidden": "not a setting",
}


def _read_file(path: Path) -> dict[str, Any]:
    """The settings a configuration file gives, by field name."""
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        # The parser's message names the line and column, not the text it choked on.
        where = str(exc).rsplit("(", 1)[-1].rstrip(")").removeprefix("at ")  # line 3, column 7
        raise ConfigError(f"{path}: not valid TOML ({where})") from None
    fields = Settings.model_fields
    for key in doc:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{path}: {key}: not a setting{hint}")
    out = dict(doc)
    if isinstance(out.get("department_files"), list):
        out["department_files"] = tuple(Path(str(p)) for p in out["department_files"])
    return out


def _words(error: Any) -> str:
    return _WORDS.get(str(error["type"]), str(error["msg"]))
