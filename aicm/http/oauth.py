"""``GET /auth/oauth/{provider}/login`` and ``/callback`` (CONTRACT §2): authorization code with PKCE.

``login`` keeps the flow's state, PKCE verifier and nonce server-side (``aicm.auth.oauth.flow_store``) and
sends the browser to the provider. It also sets a short-lived cookie, scoped to the callback path, whose hash
is kept with the flow: the callback only completes in the browser that started it (RFC 6749 §10.12, login
CSRF).

The callback answers JSON when the request accepts ``application/json`` or no ``auth.frontend_url`` is set;
otherwise it redirects to ``auth.frontend_url`` with the result in the URL fragment, which browsers never
send to servers: ``#access_token=…&refresh_token=…&expires_in=…&token_type=Bearer``, ``#linked=<provider>``
or ``#error=<CODE>&error_description=…&error_reason=…``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from tortoise.exceptions import IntegrityError

from aicm import models
from aicm.auth.oauth import FLOW_TTL, Identity, OAuthProviders, ProviderError, flow_store
from aicm.auth.viewer import Viewer
from aicm.config import Settings
from aicm.errors import AppError, BadUserInput, Conflict, NotFound, Unauthenticated
from aicm.http.errors import error_response
from aicm.resolvers import oauth as resolvers
from aicm.resolvers.auth import AuthResult
from aicm.schema.context import client_ip
from aicm.schema.relay import encode_id

FLOW = "flow"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache", "Referrer-Policy": "no-referrer"}


class Unavailable(AppError):
    """The provider could not be reached: a 502, coded INTERNAL_SERVER_ERROR (CONTRACT §3 has no other)."""


class OAuthEndpoints:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.providers = OAuthProviders(settings.oauth)

    async def login(self, request: Request) -> Response:
        name = request.path_params["provider"]
        if name not in self.providers:
            return _not_found(name)
        try:
            link = await self._link_request(request, name)
            redirect_uri = self._redirect_uri(request, name)
            try:
                started = await self.providers.authorization(name, redirect_uri)
            except ProviderError as exc:
                raise Unavailable(str(exc), reason=exc.reason) from exc
        except AppError as exc:
            resolvers.record_failure(_viewer(request), name, str(exc.extensions.get("reason") or exc.code))
            return self._error(request, exc)
        binding = secrets.token_urlsafe(32)
        flow = {
            "provider": name,
            "redirect_uri": redirect_uri,
            "code_verifier": started["code_verifier"],
            "nonce": started.get("nonce"),
            "binding": _hash(binding),
            "link_user_id": link.get("user_id"),
            "link_session_id": link.get("session_id"),
        }
        await flow_store(request.app.state).put(FLOW, started["state"], flow)
        response = RedirectResponse(started["url"], status_code=302, headers=NO_STORE)
        response.set_cookie(
            _cookie_name(name),
            binding,
            max_age=int(FLOW_TTL),
            path=urlsplit(redirect_uri).path,
            secure=redirect_uri.startswith("https://"),
            httponly=True,
            samesite="lax",
        )
        return response

    async def callback(self, request: Request) -> Response:
        name = request.path_params["provider"]
        if name not in self.providers:
            return _not_found(name)
        viewer = _viewer(request)
        try:
            flow = await self._take_flow(request, name)
            identity = await self._identity(request, name, flow)
        except AppError as exc:
            resolvers.record_failure(viewer, name, str(exc.extensions.get("reason") or exc.code))
            return self._clear(request, name, self._error(request, exc))
        services = request.app.state.runtime.auth
        try:
            if flow.get("link_user_id") is not None:
                user, account = await resolvers.link_account(
                    services,
                    viewer,
                    identity,
                    user_id=flow["link_user_id"],
                    session_id=flow.get("link_session_id"),
                )
                response = self._linked(request, user, account)
            else:
                response = self._signed_in(request, await resolvers.sign_in(services, viewer, identity))
        except AppError as exc:
            response = self._error(request, exc)
        except IntegrityError:  # a concurrent sign-in created the same user or link first
            response = self._error(request, Conflict("The account changed meanwhile; sign in again"))
        return self._clear(request, name, response)

    # ------------------------------------------------------------------ steps

    async def _link_request(self, request: Request, name: str) -> dict[str, Any]:
        ticket = request.query_params.get("link")
        if ticket is None:
            return {}
        return await resolvers.take_link(flow_store(request.app.state), ticket, name)

    def _redirect_uri(self, request: Request, name: str) -> str:
        return self.settings.oauth[name].redirect_url or str(request.url_for("oauth_callback", provider=name))

    async def _take_flow(self, request: Request, name: str) -> dict[str, Any]:
        """The pending flow named by ``state``, used up; it must come back to the browser that started it."""
        state = request.query_params.get("state")
        flow = await flow_store(request.app.state).take(FLOW, state) if state else None
        if flow is None or flow.get("provider") != name:
            raise BadUserInput(
                "The sign-in request is invalid or has expired", field="state", reason="INVALID_STATE"
            )
        cookie = request.cookies.get(_cookie_name(name))
        if not cookie or not secrets.compare_digest(_hash(cookie), flow["binding"]):
            raise BadUserInput(
                "The sign-in was started in another browser", field="state", reason="INVALID_STATE"
            )
        return flow

    async def _identity(self, request: Request, name: str, flow: dict[str, Any]) -> Identity:
        params = request.query_params
        if params.get("error"):
            reason = "ACCESS_DENIED" if params["error"] == "access_denied" else "PROVIDER_ERROR"
            raise Unauthenticated("The provider did not grant access", reason=reason)
        code = params.get("code")
        if not code:
            raise BadUserInput("The provider sent no authorization code", field="code")
        try:
            return await self.providers.identity(
                name,
                code=code,
                redirect_uri=flow["redirect_uri"],
                code_verifier=flow["code_verifier"],
                nonce=flow.get("nonce"),
            )
        except ProviderError as exc:
            raise Unauthenticated(str(exc), reason=exc.reason) from exc

    # ------------------------------------------------------------------ responses

    def _wants_json(self, request: Request) -> bool:
        return not self.settings.auth.frontend_url or "application/json" in request.headers.get("accept", "")

    def _to_frontend(self, fragment: dict[str, str]) -> Response:
        return RedirectResponse(
            f"{self.settings.auth.frontend_url}#{urlencode(fragment)}", status_code=302, headers=NO_STORE
        )

    def _signed_in(self, request: Request, result: AuthResult) -> Response:
        if not self._wants_json(request):
            return self._to_frontend(
                {
                    "access_token": result.access_token,
                    "refresh_token": result.refresh_token,
                    "expires_in": str(result.expires_in),
                    "token_type": "Bearer",
                }
            )
        body = {
            "accessToken": result.access_token,
            "refreshToken": result.refresh_token,
            "expiresIn": result.expires_in,
            "user": _user(result.user),
        }
        return JSONResponse(body, headers=NO_STORE)

    def _linked(self, request: Request, user: models.User, account: models.OAuthAccount) -> Response:
        if not self._wants_json(request):
            return self._to_frontend({"linked": account.provider})
        body = {"linked": {"provider": account.provider, "email": account.email}, "user": _user(user)}
        return JSONResponse(body, headers=NO_STORE)

    def _error(self, request: Request, error: AppError) -> Response:
        if not self._wants_json(request):
            fragment = {"error": error.code, "error_description": error.message}
            if reason := error.extensions.get("reason"):
                fragment["error_reason"] = str(reason)
            return self._to_frontend(fragment)
        return error_response(error, 502 if isinstance(error, Unavailable) else None, NO_STORE)

    def _clear(self, request: Request, name: str, response: Response) -> Response:
        response.delete_cookie(_cookie_name(name), path=urlsplit(self._redirect_uri(request, name)).path)
        return response


def _viewer(request: Request) -> Viewer:
    return Viewer(ip=client_ip(request), user_agent=request.headers.get("user-agent"))


def _user(user: models.User) -> dict[str, str]:
    return {"id": encode_id("User", user.id), "email": user.email}


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _cookie_name(provider: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", provider)
    return f"aicm_oauth_{safe}"


def _not_found(name: str) -> JSONResponse:
    return error_response(NotFound(f"Unknown OAuth provider {name[:64]!r}"), headers=NO_STORE)


def routes(settings: Settings) -> list[Route]:
    """The two OAuth routes; unknown provider names answer a 404 JSON error."""
    endpoints = OAuthEndpoints(settings)
    return [
        Route("/auth/oauth/{provider}/login", endpoints.login, methods=["GET"], name="oauth_login"),
        Route("/auth/oauth/{provider}/callback", endpoints.callback, methods=["GET"], name="oauth_callback"),
    ]
