"""Access tokens: the verified-token cache answers like a full decode (expiry, bad tokens, its bound)."""

from __future__ import annotations

import pytest

from aicm.auth import tokens
from aicm.auth.keys import SigningKeys
from aicm.auth.tokens import TokenService
from aicm.config import JWTConfig
from aicm.errors import Unauthenticated

SECRET = "a-test-secret-that-is-long-enough-for-hs256-keys"


def service() -> TokenService:
    return TokenService(SigningKeys("HS256", SECRET, SECRET), JWTConfig())


def test_a_cached_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    svc = service()
    token = svc.issue_access(7, "session-1")
    first = svc.decode_access(token)
    assert svc.decode_access(token) is first  # the second decode is answered from the cache
    assert (first.user_id, first.session_id) == (7, "session-1")
    later = first.expires_at
    monkeypatch.setattr(tokens.time, "time", lambda: later)
    with pytest.raises(Unauthenticated) as expired:
        svc.decode_access(token)
    assert expired.value.extensions == {"reason": "TOKEN_EXPIRED"}
    assert token not in svc._verified


def test_invalid_tokens_are_not_cached() -> None:
    svc = service()
    token = svc.issue_access(7, "session-1")
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for _ in range(2):
        with pytest.raises(Unauthenticated) as invalid:
            svc.decode_access(forged)
        assert invalid.value.extensions == {"reason": "TOKEN_INVALID"}
    assert svc._verified == {}
    other = TokenService(SigningKeys("HS256", SECRET + "-other", SECRET + "-other"), JWTConfig())
    with pytest.raises(Unauthenticated):
        other.decode_access(token)  # each service verifies with its own key


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "VERIFIED_CACHE_SIZE", 3)
    svc = service()
    issued = [svc.issue_access(n, f"session-{n}") for n in range(5)]
    for token in issued:
        svc.decode_access(token)
    assert list(svc._verified) == issued[-3:]
