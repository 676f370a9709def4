"""OAuth2 / OpenID Connect sign-in: authlib's Starlette client per configured provider, and the
server-side store of pending authorizations (state, PKCE verifier, nonce).

``google`` and any other provider except ``github`` are OpenID Connect: their ID token is verified against
the provider's JWKS (issuer, audience, expiry, nonce) and the email counts only when ``email_verified`` is
true. ``github`` has no OpenID Connect: the subject is its numeric user id and the email is the primary
*and* verified address from ``/user/emails``.

No cookie session is involved: authlib's ``authorize_redirect``/``authorize_access_token`` keep their data
in ``request.session``, so the flow uses the lower-level ``create_authorization_url`` and
``fetch_access_token`` and keeps the pending data itself, keyed by the random ``state`` (Redis when
configured, else in-process), single-use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import authlib.deprecate
from redis.asyncio import Redis
from starlette.datastructures import State

from aicm.config import OAuthProviderConfig

with warnings.catch_warnings():
    # authlib warns (always, on import) that it runs on httpx rather than its successor httpx2; either works.
    # Its module installs an "always" filter when imported, so it is imported above, before this one.
    warnings.filterwarnings(
        "ignore",
        message="The httpx module is deprecated",
        category=authlib.deprecate.AuthlibDeprecationWarning,
    )
    from authlib.integrations.starlette_client import OAuth, OAuthError, StarletteOAuth2App

log = logging.getLogger("aicm.oauth")

GITHUB = "github"
GOOGLE_METADATA_URL = "https://accounts.google.com/.well-known/openid-configuration"
GITHUB_AUTHORIZE_URL = "https://github.com/login/oauth/authorize"
GITHUB_TOKEN_URL = "https://github.com/login/oauth/access_token"
GITHUB_API_URL = "https://api.github.com/"
GITHUB_SCOPES = ("read:user", "user:email")
OIDC_SCOPES = ("openid", "email", "profile")

FLOW_TTL = 600.0  # seconds a started sign-in (or a link request) may take
HTTP_TIMEOUT = 10.0  # each call to a provider


@dataclass(frozen=True)
class Identity:
    """Who the provider says signed in. ``email`` is set only when the provider vouches for it."""

    provider: str
    subject: str
    email: str | None
    name: str


class ProviderError(Exception):
    """The provider refused (a bad or replayed code, a failed PKCE check) or could not be used."""

    def __init__(self, message: str, *, reason: str = "PROVIDER_ERROR") -> None:
        super().__init__(message)
        self.reason = reason


class OAuthProviders:
    """The configured providers, registered once in an authlib ``OAuth`` registry."""

    def __init__(self, providers: dict[str, OAuthProviderConfig]) -> None:
        self.configs = dict(providers)
        self._registry = OAuth()
        for name, config in self.configs.items():
            self._registry.register(name, **_client_options(name, config))

    def __contains__(self, name: object) -> bool:
        return name in self.configs

    def client(self, name: str) -> StarletteOAuth2App:
        return self._registry.create_client(name)

    async def authorization(self, name: str, redirect_uri: str) -> dict[str, Any]:
        """``url`` to send the browser to, plus ``state``, ``code_verifier`` and (OIDC) ``nonce`` to keep."""
        try:
            return await self.client(name).create_authorization_url(redirect_uri)
        except Exception as exc:  # the discovery document is unreachable or unusable
            _log_provider_failure(name, "authorize", exc)
            raise ProviderError("The sign-in provider is unavailable", reason="PROVIDER_UNAVAILABLE") from exc

    async def identity(
        self, name: str, *, code: str, redirect_uri: str, code_verifier: str, nonce: str | None
    ) -> Identity:
        """Exchange the code (with the PKCE verifier) and find out who signed in."""
        client = self.client(name)
        try:
            token = await client.fetch_access_token(
                redirect_uri=redirect_uri, code=code, code_verifier=code_verifier
            )
            if name == GITHUB:
                return await _github_identity(client, name, token)
            return await _oidc_identity(client, name, token, nonce)
        except ProviderError:
            raise
        except Exception as exc:  # authlib, httpx and joserfc errors alike: the sign-in failed
            _log_provider_failure(name, "token", exc)
            raise ProviderError("The sign-in provider did not confirm the sign-in") from exc


def _client_options(name: str, config: OAuthProviderConfig) -> dict[str, Any]:
    scopes = list(config.scopes)
    options: dict[str, Any] = {"client_id": config.client_id, "client_secret": config.client_secret}
    if name == GITHUB:
        scopes = scopes or list(GITHUB_SCOPES)
        options |= {
            "authorize_url": config.authorize_url or GITHUB_AUTHORIZE_URL,
            "access_token_url": config.token_url or GITHUB_TOKEN_URL,
            "api_base_url": _with_slash(config.api_base_url or GITHUB_API_URL),
        }
    else:
        scopes = scopes or list(OIDC_SCOPES)
        if "openid" not in scopes:
            scopes.insert(0, "openid")  # the ID token is what proves who signed in
        options["server_metadata_url"] = config.server_metadata_url or (
            GOOGLE_METADATA_URL if name == "google" else ""
        )
        if config.authorize_url:
            options["authorize_url"] = config.authorize_url
        if config.token_url:
            options["access_token_url"] = config.token_url
    options["client_kwargs"] = {
        "scope": " ".join(scopes),
        "code_challenge_method": "S256",
        "timeout": HTTP_TIMEOUT,
    }
    return options


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def _log_provider_failure(name: str, step: str, exc: Exception) -> None:
    detail = exc.error if isinstance(exc, OAuthError) else type(exc).__name__
    log.warning(
        "OAuth provider call failed",
        extra={"event": "oauth_provider_error", "provider": name, "step": step, "error": detail},
    )


def _verified(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


async def _oidc_identity(
    client: StarletteOAuth2App, name: str, token: dict[str, Any], nonce: str | None
) -> Identity:
    if "id_token" not in token or not nonce:
        raise ProviderError("The provider returned no ID token")
    claims = dict(await client.parse_id_token(token, nonce=nonce))  # signature, iss, aud, exp, nonce
    if "email" not in claims and (await client.load_server_metadata()).get("userinfo_endpoint"):
        info = dict(await client.userinfo(token=token))
        if info.get("sub") != claims.get("sub"):
            raise ProviderError("The provider's userinfo names another subject")
        claims = {**info, **claims}
    subject = str(claims.get("sub") or "")
    if not subject:
        raise ProviderError("The ID token has no subject")
    email = claims.get("email") if _verified(claims.get("email_verified")) else None
    name_claim = claims.get("name") or " ".join(
        str(claims[k]) for k in ("given_name", "family_name") if claims.get(k)
    )
    return Identity(
        name, subject, _clean_email(email), str(name_claim or claims.get("preferred_username") or "")
    )


async def _github_identity(client: StarletteOAuth2App, name: str, token: dict[str, Any]) -> Identity:
    user_response = await client.get("user", token=token)
    user_response.raise_for_status()
    user = user_response.json()
    if not isinstance(user, dict) or user.get("id") is None:
        raise ProviderError("The provider returned no user id")
    emails_response = await client.get("user/emails", token=token)
    emails_response.raise_for_status()
    primary = next(
        (
            e.get("email")
            for e in emails_response.json()
            if isinstance(e, dict) and e.get("primary") is True and e.get("verified") is True
        ),
        None,
    )
    return Identity(
        name, str(user["id"]), _clean_email(primary), str(user.get("name") or user.get("login") or "")
    )


def _clean_email(value: Any) -> str | None:
    return value.strip().lower() if isinstance(value, str) and value.strip() else None


# --------------------------------------------------------------------------- pending flows


class FlowStore(Protocol):
    async def put(self, kind: str, key: str, data: dict[str, Any], ttl: float = FLOW_TTL) -> None: ...

    async def take(self, kind: str, key: str) -> dict[str, Any] | None:
        """The data stored under ``key``, removed: each key works once."""
        ...


def _digest(kind: str, key: str) -> str:
    # The state is a browser-held secret: store only its hash.
    return f"{kind}:{hashlib.sha256(key.encode()).hexdigest()}"


class MemoryFlowStore:
    """The embedded default: one process, bounded, entries expire."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._max = max_entries

    async def put(self, kind: str, key: str, data: dict[str, Any], ttl: float = FLOW_TTL) -> None:
        now = time.monotonic()
        while self._entries and (
            len(self._entries) >= self._max or next(iter(self._entries.values()))[0] <= now
        ):
            self._entries.popitem(last=False)  # oldest first; every entry has the same lifetime
        self._entries[_digest(kind, key)] = (now + ttl, data)

    async def take(self, kind: str, key: str) -> dict[str, Any] | None:
        entry = self._entries.pop(_digest(kind, key), None)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]


class RedisFlowStore:
    """Shared by every instance, so the callback may land on another one than the login."""

    PREFIX = "aicm:oauth:"

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def put(self, kind: str, key: str, data: dict[str, Any], ttl: float = FLOW_TTL) -> None:
        await self._redis.set(self.PREFIX + _digest(kind, key), json.dumps(data), px=int(ttl * 1000))

    async def take(self, kind: str, key: str) -> dict[str, Any] | None:
        name = self.PREFIX + _digest(kind, key)
        async with self._redis.pipeline(transaction=True) as pipe:
            value, _ = await pipe.get(name).delete(name).execute()
        return json.loads(value) if value else None


def flow_store(state: State) -> FlowStore:
    """The app's store of pending flows (built on first use from the app's runtime)."""
    store: FlowStore | None = getattr(state, "oauth_flows", None)
    if store is None:
        redis = state.runtime.redis
        store = RedisFlowStore(redis) if redis is not None else MemoryFlowStore()
        state.oauth_flows = store
    return store


def login_url(config: OAuthProviderConfig, fallback: str) -> str:
    """Where a browser starts signing in: beside the configured callback URL, else ``fallback``."""
    if config.redirect_url.endswith("/callback"):
        return config.redirect_url[: -len("callback")] + "login"
    return fallback
