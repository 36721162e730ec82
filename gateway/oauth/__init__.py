"""OAuth 2.0 for requester systems (client credentials, RFC 9068 JWTs) and citizen tokens."""

from .assertion import ASSERTION_TYPE as ASSERTION_TYPE
from .assertion import PrivateKeyJWT as PrivateKeyJWT
from .assertion import sign_client_assertion as sign_client_assertion
from .citizen import CITIZEN_TOKEN_TYPE as CITIZEN_TOKEN_TYPE
from .citizen import Citizen as Citizen
from .citizen import CitizenTokenVerifier as CitizenTokenVerifier
from .citizen import mint_citizen_token as mint_citizen_token
from .errors import InsufficientScope as InsufficientScope
from .errors import InvalidToken as InvalidToken
from .errors import TokenExpired as TokenExpired
from .errors import TokenMissing as TokenMissing
from .errors import TokenNotYetValid as TokenNotYetValid
from .errors import TokenReplayed as TokenReplayed
from .errors import TokenRevoked as TokenRevoked
from .errors import TokenWrongAudience as TokenWrongAudience
from .errors import TokenWrongIssuer as TokenWrongIssuer
from .errors import TokenWrongType as TokenWrongType
from .registry import KNOWN_SCOPES as KNOWN_SCOPES
from .registry import AuthMethod as AuthMethod
from .registry import Client as Client
from .registry import ClientRegistry as ClientRegistry
from .registry import Registration as Registration
from .replay import SqlReplayCache as SqlReplayCache
from .server import configure_server as configure_server
from .tokens import ACCESS_TOKEN_TYPE as ACCESS_TOKEN_TYPE
from .tokens import AccessTokenVerifier as AccessTokenVerifier
from .tokens import IssuedToken as IssuedToken
from .tokens import Principal as Principal
from .tokens import TokenIssuer as TokenIssuer
from .tokens import require_scope as require_scope

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "ASSERTION_TYPE",
    "CITIZEN_TOKEN_TYPE",
    "KNOWN_SCOPES",
    "AccessTokenVerifier",
    "AuthMethod",
    "Citizen",
    "CitizenTokenVerifier",
    "Client",
    "ClientRegistry",
    "InsufficientScope",
    "InvalidToken",
    "IssuedToken",
    "Principal",
    "PrivateKeyJWT",
    "Registration",
    "SqlReplayCache",
    "TokenExpired",
    "TokenIssuer",
    "TokenMissing",
    "TokenNotYetValid",
    "TokenReplayed",
    "TokenRevoked",
    "TokenWrongAudience",
    "TokenWrongIssuer",
    "TokenWrongType",
    "configure_server",
    "mint_citizen_token",
    "require_scope",
    "sign_client_assertion",
]
