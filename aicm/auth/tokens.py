"""Access tokens: short-lived JWTs naming a user and the session they belong to.

Decoding pins the accepted algorithm, issuer, audience and ``typ``; anything else is ``Unauthenticated``.
A token once verified is remembered (a bounded cache of token text → claims): a client opening many
WebSocket connections or requests with one token pays the signature check and claim parsing once; only the
expiry is checked again. Whether the session still holds is decided elsewhere, on every use.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import jwt

from aicm.auth.keys import SigningKeys
from aicm.config import JWTConfig
from aicm.errors import Unauthenticated

ACCESS = "access"
VERIFIED_CACHE_SIZE = 4096  # tokens remembered as verified; the oldest is forgotten first


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
        self._verified: OrderedDict[str, AccessClaims] = OrderedDict()

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
        """The claims of a valid, unexpired access token, else ``Unauthenticated``."""
        claims = self._verified.get(token)
        if claims is not None:
            if claims.expires_at <= time.time():  # as PyJWT decides expiry (no leeway)
                del self._verified[token]
                raise Unauthenticated("Access token expired", reason="TOKEN_EXPIRED")
            self._verified.move_to_end(token)
            return claims
        claims = self._decode(token)
        self._verified[token] = claims
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return claims

    def _decode(self, token: str) -> AccessClaims:
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
