"""Access tokens: short-lived JWTs naming a user and the session they belong to.

Decoding pins the accepted algorithm, issuer, audience and ``typ``; anything else is ``Unauthenticated``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

from aicm.auth.keys import SigningKeys
from aicm.config import JWTConfig
from aicm.errors import Unauthenticated

ACCESS = "access"


@dataclass(frozen=True)
class AccessClaims:
    user_id: int
    session_id: str
    token_id: str
    expires_at: float


class TokenService:
    def __init__(self, keys: SigningKeys, config: JWTConfig) -> None:
        self.keys = keys
        self.config = config

    @property
    def access_lifetime(self) -> int:
        return int(self.config.access_token_duration)

    def issue_access(self, user_id: int, session_id: str) -> str:
        now = int(time.time())
        claims = {
            "sub": str(user_id),
            "sid": session_id,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + self.access_lifetime,
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "typ": ACCESS,
        }
        return jwt.encode(claims, self.keys.signing_key, algorithm=self.keys.algorithm)

    def decode_access(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self.keys.verifying_key,
                algorithms=[self.keys.algorithm],
                audience=self.config.audience,
                issuer=self.config.issuer,
                options={"require": ["sub", "sid", "jti", "iat", "exp", "iss", "aud", "typ"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("Access token expired", reason="TOKEN_EXPIRED") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("Invalid access token", reason="TOKEN_INVALID") from exc
        if claims.get("typ") != ACCESS:
            raise Unauthenticated("Invalid access token", reason="TOKEN_INVALID")
        try:
            user_id = int(claims["sub"])
        except (TypeError, ValueError) as exc:
            raise Unauthenticated("Invalid access token", reason="TOKEN_INVALID") from exc
        return AccessClaims(user_id, str(claims["sid"]), str(claims["jti"]), float(claims["exp"]))


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when absent."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Malformed Authorization header", reason="TOKEN_INVALID")
    return token.strip()
