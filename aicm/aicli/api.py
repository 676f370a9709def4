"""GraphQL over HTTP with the saved sign-in, refreshing the access token when it is (about to be) expired."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from aicm.aicli.errors import SESSION_OVER, ApiError, NotSignedIn, SessionEnded, Unreachable
from aicm.aicli.store import Credentials, CredentialStore

USER_AGENT = "aicli/1.0"
REFRESH = """mutation($token: String!) {
  refreshToken(refreshToken: $token) { accessToken refreshToken expiresIn user { email } } }"""
RATE_LIMIT_RETRIES = 3
MAX_RETRY_AFTER = 10.0


def graphql_url(base: str) -> str:
    return base.rstrip("/") + "/graphql"


def websocket_url(base: str) -> str:
    base = base.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + "/graphql"
    return "ws://" + base.removeprefix("http://") + "/graphql"


def normalize_url(url: str) -> str:
    """``host:port``, ``http://host:port/`` or ``…/graphql`` → ``http://host:port``."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url}")
    return url.removesuffix("/graphql")


class Api:
    """One server, one signed-in user (or none, for ``login``)."""

    def __init__(
        self, store: CredentialStore, credentials: Credentials | None, *, timeout: float = 30.0
    ) -> None:
        self.store = store
        self.credentials = credentials
        self._http = httpx.AsyncClient(timeout=timeout, headers={"User-Agent": USER_AGENT})
        self._refreshing = asyncio.Lock()

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    @property
    def url(self) -> str:
        if self.credentials is None:
            raise NotSignedIn()
        return self.credentials.url

    async def execute(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run an operation as the signed-in user; its ``data``. Raises ApiError for any GraphQL error."""
        token = await self.access_token()
        try:
            return await self.post(query, variables, token=token)
        except ApiError as exc:
            if exc.code != "UNAUTHENTICATED" or exc.reason != "TOKEN_EXPIRED":
                raise self._session_error(exc) from None
        token = await self.refresh(stale=token)  # expired in flight, or the clocks disagree
        try:
            return await self.post(query, variables, token=token)
        except ApiError as exc:
            raise self._session_error(exc) from None

    async def post(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        url: str | None = None,
    ) -> dict[str, Any]:
        """One request (anonymous without ``token``); retries only what the server asked to retry later."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        target = graphql_url(url or self.url)
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                response = await self._http.post(
                    target, json={"query": query, "variables": variables or {}}, headers=headers
                )
            except httpx.HTTPError as exc:
                raise Unreachable(f"cannot reach {target}: {exc or type(exc).__name__}") from exc
            if response.status_code == 429 and attempt < RATE_LIMIT_RETRIES:
                await asyncio.sleep(_retry_after(response))
                continue
            return _data(response)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def access_token(self, *, for_socket: bool = False) -> str:
        """A current access token; for a WebSocket, one that lasts a while (the server closes the socket at
        its expiry)."""
        credentials = self.credentials
        if credentials is None or not credentials.signed_in:
            raise NotSignedIn()
        if credentials.access_is_fresh(lasting=credentials.socket_lasting() if for_socket else None):
            return credentials.access_token
        return await self.refresh(stale=credentials.access_token, for_socket=for_socket)

    async def refresh(self, *, stale: str, for_socket: bool = False) -> str:
        """A new access token (and refresh token, saved), unless another process or task just got one."""
        async with self._refreshing:
            with self.store.locked():
                saved = self.store.load()
                if saved is None or not saved.signed_in:
                    raise NotSignedIn()
                lasting = saved.socket_lasting() if for_socket else None
                if saved.access_token != stale and saved.access_is_fresh(lasting=lasting):
                    self.credentials = saved
                    return saved.access_token
                try:
                    data = await self.post(REFRESH, {"token": saved.refresh_token}, url=saved.url)
                except ApiError as exc:
                    if exc.code == "UNAUTHENTICATED":
                        self.store.save(saved.signed_out())
                        raise SessionEnded(saved.url, exc.reason) from None
                    raise
                self.credentials = adopt(saved, data["refreshToken"])
                self.store.save(self.credentials)
                return self.credentials.access_token

    def _session_error(self, exc: ApiError) -> Exception:
        """An UNAUTHENTICATED answer to a signed-in request means the session is over; say so plainly."""
        if exc.code == "UNAUTHENTICATED" and (exc.reason in SESSION_OVER or exc.reason is None):
            if self.credentials is not None:
                self.store.save(self.credentials.signed_out())
            return SessionEnded(self.url, exc.reason)
        return exc


def adopt(credentials: Credentials, payload: dict[str, Any]) -> Credentials:
    """Credentials holding an ``AuthPayload``'s tokens."""
    return credentials.with_tokens(
        access=payload["accessToken"],
        refresh=payload["refreshToken"],
        expires_in=float(payload["expiresIn"]),
        email=(payload.get("user") or {}).get("email"),
    )


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.1, min(float(response.headers.get("Retry-After", "1")), MAX_RETRY_AFTER))
    except ValueError:
        return 1.0


def _data(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(
            f"the server answered HTTP {response.status_code} without a GraphQL result", "HTTP_ERROR"
        )
    errors = body.get("errors")
    if errors:
        raise ApiError.from_error(errors[0] if isinstance(errors, list) else errors)
    data = body.get("data")
    if not isinstance(data, dict):
        raise ApiError(f"the server answered HTTP {response.status_code} with no data", "HTTP_ERROR")
    return data
