"""OAuth2 / OpenID Connect sign-in end to end, against a real provider on loopback (tests/auth/oauth_provider.py).

The test drives the flow like a browser: the app (ASGI transport) sends it to the provider's authorize URL,
the provider (real HTTP) sends it back to the callback with a code, and the app exchanges the code at the
provider over real HTTP with authlib's client. Nothing on the client side is mocked.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from joserfc.jwk import RSAKey
from prometheus_client import REGISTRY
from starlette.applications import Starlette

from aicm import models
from aicm.app import build_app
from aicm.auth.oauth import FLOW_TTL, MemoryFlowStore, RedisFlowStore, flow_store, login_url
from aicm.auth.permissions import MEMBER
from aicm.config import OAuthProviderConfig
from tests.auth.oauth_provider import CLIENT_ID, CLIENT_SECRET, OAuthTestProvider
from tests.conftest import Backend
from tests.factories import make_user, token_for
from tests.graphql import assert_error, assert_ok, execute

FRONTEND = "https://app.example/signed-in"
PROVIDERS = ("dev", "google", "github")
CALLBACK = "http://testserver/auth/oauth/{}/callback"
JSON = {"Accept": "application/json"}
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}

ME = "{ me { email name } }"
START_LINK = "mutation($p: String!) { startOAuthLink(provider: $p) }"
UNLINK = "mutation($p: String!) { unlinkOAuthAccount(provider: $p) }"
LINKED = "{ linkedAccounts { provider email createdAt } }"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def provider() -> Iterator[OAuthTestProvider]:
    with OAuthTestProvider(redirect_uris=[CALLBACK.format(p) for p in PROVIDERS]) as running:
        yield running


@pytest.fixture(scope="module")
async def oauth_app(app: Starlette, backend: Backend, provider: OAuthTestProvider) -> Starlette:
    """The app built with the loopback providers configured, sharing the test app's database, Redis and keys."""
    settings = copy.deepcopy(backend.settings)
    credentials = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    settings.oauth = {
        "dev": OAuthProviderConfig(**credentials, server_metadata_url=provider.metadata_url),
        "google": OAuthProviderConfig(**credentials, server_metadata_url=provider.metadata_url),
        "github": OAuthProviderConfig(
            **credentials,
            authorize_url=f"{provider.url}/authorize",
            token_url=f"{provider.url}/token",
            api_base_url=f"{provider.url}/api",
        ),
    }
    settings.oauth["down"] = OAuthProviderConfig(
        **credentials, server_metadata_url=f"http://127.0.0.1:{closed_port()}/"
    )
    settings.auth.frontend_url = FRONTEND
    application = build_app(settings)
    application.state.runtime = dataclasses.replace(app.state.runtime, settings=settings)
    return application


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Browser:
    """A browser: the app over ASGI (keeping cookies), the provider over real HTTP."""

    app: httpx.AsyncClient
    web: httpx.AsyncClient
    state: Any  # the oauth app's state, for peeking at pending flows

    async def start(self, provider: str, *, link_url: str | None = None) -> str:
        response = await self.app.get(link_url or f"/auth/oauth/{provider}/login")
        assert response.status_code == 302, response.text
        return response.headers["location"]

    async def authorize(self, authorize_url: str) -> str:
        response = await self.web.get(authorize_url)
        assert response.status_code == 302, response.text
        return response.headers["location"]

    async def finish(self, callback_url: str, headers: dict[str, str] = JSON) -> httpx.Response:
        return await self.app.get(callback_url, headers=headers)

    async def sign_in(
        self, provider: str, headers: dict[str, str] = JSON, *, link_url: str | None = None
    ) -> httpx.Response:
        callback = await self.authorize(await self.start(provider, link_url=link_url))
        return await self.finish(callback, headers)

    async def peek_flow(self, state: str) -> dict[str, Any]:
        store = flow_store(self.state)
        flow = await store.take("flow", state)
        assert flow is not None
        await store.put("flow", state, flow)
        return flow


@pytest.fixture
async def browser(oauth_app: Starlette, db: None, provider: OAuthTestProvider) -> AsyncIterator[Browser]:
    provider.reset()
    transport = httpx.ASGITransport(app=oauth_app, client=("127.0.0.1", 40000))
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as app_client,
        httpx.AsyncClient(timeout=10) as web,
    ):
        yield Browser(app_client, web, oauth_app.state)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def fragment(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).fragment).items()}


def error_of(response: httpx.Response) -> dict[str, Any]:
    return response.json()["errors"][0]


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def attempts(method: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value("auth_attempts_total", {"method": method, "outcome": outcome})
    return value or 0.0


# --------------------------------------------------------------------------- sign-in round trips


async def test_new_user_signs_up_through_an_oidc_round_trip_with_pkce(
    browser: Browser, provider: OAuthTestProvider, backend: Backend
) -> None:
    # given
    before = attempts("oauth:dev", "success")
    store = flow_store(browser.state)
    assert isinstance(store, RedisFlowStore if backend.uses_services else MemoryFlowStore)

    # when: the app sends the browser to the provider
    authorize_url = await browser.start("dev")

    # then: with client id, exact redirect URI, state, nonce and an S256 code challenge
    assert authorize_url.startswith(f"{provider.url}/authorize?")
    params = query(authorize_url)
    assert params["client_id"] == CLIENT_ID
    assert params["redirect_uri"] == CALLBACK.format("dev")
    assert params["response_type"] == "code"
    assert params["code_challenge_method"] == "S256"
    assert len(params["state"]) >= 20 and params["nonce"]
    assert set(params["scope"].split()) == {"openid", "email", "profile"}
    flow = await browser.peek_flow(params["state"])
    assert params["code_challenge"] == s256(flow["code_verifier"])
    cookie = next(c for c in browser.app.cookies.jar if c.name == "aicm_oauth_dev")
    assert cookie.path == "/auth/oauth/dev/callback"

    # when: the provider approves and sends the browser back
    callback = await browser.authorize(authorize_url)
    assert callback.startswith(CALLBACK.format("dev") + "?")
    assert query(callback)["state"] == params["state"] and query(callback)["code"]
    response = await browser.finish(callback)

    # then: the same token pair as a password login
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"accessToken", "refreshToken", "expiresIn", "user"}
    assert body["expiresIn"] == 900 and body["user"]["email"] == "alice@example.com"
    me = assert_ok(await execute(browser.app, ME, token=body["accessToken"]))["me"]
    assert me == {"email": "alice@example.com", "name": "Alice Example"}

    user = await models.User.get(email="alice@example.com")
    assert user.password_hash is None and user.last_login_at is not None
    assert [r.role.name for r in await models.UserRole.filter(user=user).prefetch_related("role")] == [MEMBER]
    account = await models.OAuthAccount.get(user=user)
    assert (account.provider, account.subject, account.email) == (
        "dev",
        "oidc-subject-1",
        "alice@example.com",
    )
    assert await models.AuditLog.filter(action="user.create", target_id=str(user.id)).exists()
    assert attempts("oauth:dev", "success") == before + 1
    assert "aicm_oauth_dev" not in {c.name for c in browser.app.cookies.jar}


async def test_refresh_token_from_oauth_sign_in_rotates(browser: Browser) -> None:
    body = (await browser.sign_in("dev")).json()
    refresh = "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken user { email } } }"
    result = assert_ok(await execute(browser.app, refresh, {"t": body["refreshToken"]}))
    assert result["refreshToken"]["user"]["email"] == "alice@example.com"


async def test_existing_user_with_the_verified_email_is_linked(browser: Browser) -> None:
    # given
    existing = await make_user("Alice@Example.com")

    # when
    response = await browser.sign_in("dev")

    # then
    assert response.status_code == 200, response.text
    assert response.json()["user"]["email"] == "alice@example.com"
    assert await models.User.all().count() == 1
    account = await models.OAuthAccount.get(provider="dev")
    assert account.user_id == existing.id
    assert (await models.User.get(id=existing.id)).password_hash  # the password still works
    assert await models.AuditLog.filter(action="oauth.link").exists()


async def test_second_sign_in_finds_the_user_through_the_link(
    browser: Browser, provider: OAuthTestProvider
) -> None:
    first = (await browser.sign_in("dev")).json()
    provider.user.email = "renamed@example.com"  # the link (provider, subject) is what counts now

    second = (await browser.sign_in("dev")).json()

    assert second["user"] == first["user"]
    assert second["accessToken"] != first["accessToken"]
    assert await models.User.all().count() == 1
    assert (await models.OAuthAccount.get(provider="dev")).email == "renamed@example.com"


async def test_redirect_mode_puts_the_tokens_in_the_url_fragment(browser: Browser) -> None:
    response = await browser.sign_in("dev", HTML)

    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(FRONTEND + "#") and "?" not in location
    tokens = fragment(location)
    assert set(tokens) == {"access_token", "refresh_token", "expires_in", "token_type"}
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == "900"
    me = assert_ok(await execute(browser.app, ME, token=tokens["access_token"]))["me"]
    assert me["email"] == "alice@example.com"
    assert response.headers["cache-control"] == "no-store"


async def test_without_a_frontend_url_the_callback_answers_json(
    browser: Browser, oauth_app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oauth_app.state.runtime.settings.auth, "frontend_url", "")

    response = await browser.sign_in("dev", HTML)

    assert response.status_code == 200
    assert response.json()["user"]["email"] == "alice@example.com"


async def test_errors_redirect_with_the_error_in_the_fragment(
    browser: Browser, provider: OAuthTestProvider
) -> None:
    provider.deny = True

    response = await browser.sign_in("dev", HTML)

    assert response.status_code == 302
    error = fragment(response.headers["location"])
    assert error["error"] == "UNAUTHENTICATED" and error["error_reason"] == "ACCESS_DENIED"
    assert error["error_description"]


async def test_denied_consent_is_refused(browser: Browser, provider: OAuthTestProvider) -> None:
    provider.deny = True
    callback = await browser.authorize(await browser.start("dev"))
    assert query(callback)["error"] == "access_denied"

    response = await browser.finish(callback)

    assert response.status_code == 401
    assert error_of(response)["extensions"] == {"code": "UNAUTHENTICATED", "reason": "ACCESS_DENIED"}
    assert await models.User.all().count() == 0


async def test_github_signs_in_with_the_primary_verified_email(
    browser: Browser, provider: OAuthTestProvider
) -> None:
    # given: GitHub lists several addresses; only one is primary and verified
    provider.user.github_emails = [
        {"email": "old@example.com", "primary": False, "verified": True, "visibility": None},
        {"email": "Main@Example.com", "primary": True, "verified": True, "visibility": "public"},
        {"email": "new@example.com", "primary": False, "verified": False, "visibility": None},
    ]

    # when
    authorize_url = await browser.start("github")
    params = query(authorize_url)
    response = await browser.finish(await browser.authorize(authorize_url))

    # then: GitHub has no OpenID Connect: its numeric user id is the subject
    assert params["code_challenge_method"] == "S256" and "nonce" not in params
    assert set(params["scope"].split()) == {"read:user", "user:email"}
    assert response.status_code == 200, response.text
    assert response.json()["user"]["email"] == "main@example.com"
    account = await models.OAuthAccount.get(provider="github").prefetch_related("user")
    assert account.subject == "4242" and account.user.name == "Alice Example"


async def test_github_without_a_primary_verified_email_is_refused(
    browser: Browser, provider: OAuthTestProvider
) -> None:
    provider.user.github_emails = [
        {"email": "main@example.com", "primary": True, "verified": False, "visibility": None},
        {"email": "other@example.com", "primary": False, "verified": True, "visibility": None},
    ]

    response = await browser.sign_in("github")

    assert response.status_code == 401
    assert error_of(response)["extensions"]["reason"] == "EMAIL_NOT_VERIFIED"
    assert await models.User.all().count() == 0


# --------------------------------------------------------------------------- refusals


async def test_unverified_email_is_refused(browser: Browser, provider: OAuthTestProvider) -> None:
    provider.user.email_verified = False
    await make_user("alice@example.com")  # even an account with that address must not be taken over
    before = attempts("oauth:dev", "failure")

    response = await browser.sign_in("dev")

    assert response.status_code == 401
    assert error_of(response)["extensions"] == {"code": "UNAUTHENTICATED", "reason": "EMAIL_NOT_VERIFIED"}
    assert not await models.OAuthAccount.exists()
    assert attempts("oauth:dev", "failure") == before + 1


async def test_closed_registration_refuses_unknown_users_but_links_known_ones(
    browser: Browser, oauth_app: Starlette, monkeypatch: pytest.MonkeyPatch, provider: OAuthTestProvider
) -> None:
    monkeypatch.setattr(oauth_app.state.runtime.auth, "allow_registration", False)

    refused = await browser.sign_in("dev")
    assert refused.status_code == 403
    assert error_of(refused)["extensions"] == {"code": "FORBIDDEN", "reason": "REGISTRATION_CLOSED"}
    assert await models.User.all().count() == 0

    await make_user("alice@example.com")
    assert (await browser.sign_in("dev")).status_code == 200


async def test_deactivated_user_is_refused(browser: Browser) -> None:
    await make_user("alice@example.com", active=False)

    response = await browser.sign_in("dev")

    assert response.status_code == 401
    assert error_of(response)["extensions"]["reason"] == "ACCOUNT_INACTIVE"


async def test_replayed_state_is_refused(browser: Browser) -> None:
    callback = await browser.authorize(await browser.start("dev"))
    assert (await browser.finish(callback)).status_code == 200

    replay = await browser.finish(callback)

    assert replay.status_code == 400
    assert error_of(replay)["extensions"] == {
        "code": "BAD_USER_INPUT",
        "field": "state",
        "reason": "INVALID_STATE",
    }


@pytest.mark.parametrize("params", [{"code": "x", "state": "forged-state"}, {"code": "x"}])
async def test_unknown_or_missing_state_is_refused(browser: Browser, params: dict[str, str]) -> None:
    response = await browser.app.get(f"/auth/oauth/dev/callback?{urlencode(params)}", headers=JSON)

    assert response.status_code == 400
    assert error_of(response)["extensions"]["reason"] == "INVALID_STATE"


async def test_state_of_another_provider_is_refused(browser: Browser) -> None:
    callback = await browser.authorize(await browser.start("dev"))

    response = await browser.finish(callback.replace("/oauth/dev/", "/oauth/google/"))

    assert response.status_code == 400
    assert error_of(response)["extensions"]["reason"] == "INVALID_STATE"


async def test_callback_in_another_browser_is_refused(browser: Browser, oauth_app: Starlette) -> None:
    # given: the victim's browser receives a callback started by someone else (login CSRF)
    callback = await browser.authorize(await browser.start("dev"))
    transport = httpx.ASGITransport(app=oauth_app, client=("127.0.0.1", 40001))

    # when
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
        response = await other.get(callback, headers=JSON)

    # then
    assert response.status_code == 400
    assert error_of(response)["message"] == "The sign-in was started in another browser"
    assert await models.User.all().count() == 0


@pytest.mark.parametrize("verifier", ["x" * 64, ""], ids=["wrong", "missing"])
async def test_code_verifier_not_matching_is_rejected_by_the_provider(
    browser: Browser, provider: OAuthTestProvider, verifier: str
) -> None:
    # given: the stored PKCE verifier is tampered with before the code exchange
    authorize_url = await browser.start("dev")
    state = query(authorize_url)["state"]
    store = flow_store(browser.state)
    flow = await store.take("flow", state)
    assert flow is not None
    await store.put("flow", state, {**flow, "code_verifier": verifier})
    callback = await browser.authorize(authorize_url)

    # when
    response = await browser.finish(callback)

    # then: the provider refused to exchange the code
    assert response.status_code == 401
    assert error_of(response)["extensions"] == {"code": "UNAUTHENTICATED", "reason": "PROVIDER_ERROR"}
    assert query(callback)["code"] in provider.codes  # never exchanged
    assert await models.User.all().count() == 0


async def test_provider_requires_pkce_and_single_use_codes(
    browser: Browser, provider: OAuthTestProvider
) -> None:
    # given: a completed sign-in, its code and verifier noted
    authorize_url = await browser.start("dev")
    verifier = (await browser.peek_flow(query(authorize_url)["state"]))["code_verifier"]
    callback = await browser.authorize(authorize_url)
    assert (await browser.finish(callback)).status_code == 200
    exchange = {
        "grant_type": "authorization_code",
        "code": query(callback)["code"],
        "redirect_uri": CALLBACK.format("dev"),
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "code_verifier": verifier,
    }

    # when: the code is replayed at the token endpoint
    replay = await browser.web.post(f"{provider.url}/token", data=exchange)

    # then
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"

    # and: a fresh code cannot be exchanged without its verifier
    fresh = query(await browser.authorize(await browser.start("dev")))["code"]
    no_verifier = {k: v for k, v in exchange.items() if k != "code_verifier"} | {"code": fresh}
    response = await browser.web.post(f"{provider.url}/token", data=no_verifier)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"

    # and: an authorization request without a code challenge is refused
    params = query(authorize_url)
    del params["code_challenge"], params["code_challenge_method"]
    refused = await browser.authorize(f"{provider.url}/authorize?{urlencode(params)}")
    assert query(refused)["error"] == "invalid_request"


async def test_id_token_not_signed_with_a_published_key_is_refused(
    browser: Browser, provider: OAuthTestProvider
) -> None:
    provider.signing_key = RSAKey.generate_key(
        2048, parameters={"kid": provider.key.kid or "", "alg": "RS256"}
    )

    response = await browser.sign_in("dev")

    assert response.status_code == 401
    assert error_of(response)["extensions"]["reason"] == "PROVIDER_ERROR"
    assert await models.User.all().count() == 0


async def test_unreachable_provider_answers_502(browser: Browser) -> None:
    response = await browser.app.get("/auth/oauth/down/login", headers=JSON)

    assert response.status_code == 502
    assert error_of(response)["extensions"] == {
        "code": "INTERNAL_SERVER_ERROR",
        "reason": "PROVIDER_UNAVAILABLE",
    }


async def test_unknown_provider_is_a_404_json_error(browser: Browser) -> None:
    for path in ("/auth/oauth/nope/login", "/auth/oauth/nope/callback?code=x&state=y"):
        response = await browser.app.get(path)
        assert response.status_code == 404
        assert error_of(response)["extensions"] == {"code": "NOT_FOUND"}


async def test_sign_in_is_logged_without_tokens(
    browser: Browser, provider: OAuthTestProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    body = (await browser.sign_in("dev")).json()
    provider.user.email_verified, provider.user.sub = False, "someone-else"
    await browser.sign_in("dev")

    ours = [r for r in caplog.records if r.name.startswith("aicm")]
    events = [(r.__dict__.get("event"), r.__dict__.get("method")) for r in ours]
    assert ("auth_succeeded", "oauth:dev") in events and ("auth_failed", "oauth:dev") in events
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in ours)
    assert body["accessToken"] not in logged and body["refreshToken"] not in logged
    assert "alice@example.com" not in logged and "code=" not in logged


# --------------------------------------------------------------------------- linking and unlinking


async def test_signed_in_user_links_a_provider_then_signs_in_with_it(
    browser: Browser, oauth_app: Starlette, provider: OAuthTestProvider
) -> None:
    # given: a password user, and a GitHub identity with another address
    user = await make_user("bob@example.com")
    token = await token_for(oauth_app, user)
    provider.user.email = "bob.personal@example.com"

    # when: the user asks for a link URL and opens it in the browser
    link_url = assert_ok(await execute(browser.app, START_LINK, {"p": "github"}, token=token))[
        "startOAuthLink"
    ]
    assert link_url.startswith("http://testserver/auth/oauth/github/login?link=")
    response = await browser.sign_in("github", link_url=link_url)

    # then: linked, not signed in
    assert response.status_code == 200, response.text
    assert response.json()["linked"] == {"provider": "github", "email": "bob.personal@example.com"}
    assert "accessToken" not in response.json()
    linked = assert_ok(await execute(browser.app, LINKED, token=token))["linkedAccounts"]
    assert [(a["provider"], a["email"]) for a in linked] == [("github", "bob.personal@example.com")]

    # and: signing in with GitHub now reaches the same user
    signed_in = (await browser.sign_in("github")).json()
    assert signed_in["user"]["email"] == "bob@example.com"


async def test_link_in_redirect_mode_reports_the_provider(browser: Browser, oauth_app: Starlette) -> None:
    token = await token_for(oauth_app, await make_user("bob@example.com"))
    link_url = assert_ok(await execute(browser.app, START_LINK, {"p": "dev"}, token=token))["startOAuthLink"]

    response = await browser.sign_in("dev", HTML, link_url=link_url)

    assert response.status_code == 302
    assert fragment(response.headers["location"]) == {"linked": "dev"}


async def test_link_is_refused_after_the_session_ended(browser: Browser, oauth_app: Starlette) -> None:
    user = await make_user("bob@example.com")
    token = await token_for(oauth_app, user)
    link_url = assert_ok(await execute(browser.app, START_LINK, {"p": "dev"}, token=token))["startOAuthLink"]
    authorize_url = await browser.start("dev", link_url=link_url)
    runtime = oauth_app.state.runtime
    await runtime.auth.sessions.revoke(runtime.tokens.decode_access(token).session_id)

    response = await browser.finish(await browser.authorize(authorize_url))

    assert response.status_code == 401
    assert error_of(response)["extensions"]["reason"] == "SESSION_REVOKED"
    assert not await models.OAuthAccount.exists()


async def test_linking_an_identity_of_another_user_is_a_conflict(
    browser: Browser, oauth_app: Starlette
) -> None:
    # given: the provider identity already signs in another user
    assert (await browser.sign_in("dev")).status_code == 200
    other = await make_user("carol@example.com")
    token = await token_for(oauth_app, other)

    # when
    link_url = assert_ok(await execute(browser.app, START_LINK, {"p": "dev"}, token=token))["startOAuthLink"]
    response = await browser.sign_in("dev", link_url=link_url)

    # then
    assert response.status_code == 409
    assert error_of(response)["extensions"]["code"] == "CONFLICT"
    assert not await models.OAuthAccount.filter(user_id=other.id).exists()


async def test_a_link_url_works_once(browser: Browser, oauth_app: Starlette) -> None:
    token = await token_for(oauth_app, await make_user("bob@example.com"))
    link_url = assert_ok(await execute(browser.app, START_LINK, {"p": "dev"}, token=token))["startOAuthLink"]
    await browser.start("dev", link_url=link_url)

    response = await browser.app.get(link_url, headers=JSON)

    assert response.status_code == 400
    assert error_of(response)["extensions"]["reason"] == "INVALID_LINK"


async def test_start_link_needs_a_signed_in_user_and_a_known_provider(
    browser: Browser, oauth_app: Starlette
) -> None:
    assert_error(await execute(browser.app, START_LINK, {"p": "dev"}), "UNAUTHENTICATED")
    token = await token_for(oauth_app, await make_user())
    assert_error(
        await execute(browser.app, START_LINK, {"p": "nope"}, token=token), "BAD_USER_INPUT", field="provider"
    )


async def test_unlink_is_refused_for_the_last_way_to_sign_in(browser: Browser) -> None:
    # given: a user created by an OAuth sign-in (no password)
    token = (await browser.sign_in("dev")).json()["accessToken"]

    # then: the only identity cannot go
    assert_error(await execute(browser.app, UNLINK, {"p": "dev"}, token=token), "CONFLICT")

    # when: a second provider is linked, the first may go
    link_url = assert_ok(await execute(browser.app, START_LINK, {"p": "google"}, token=token))[
        "startOAuthLink"
    ]
    assert (await browser.sign_in("google", link_url=link_url)).status_code == 200
    assert assert_ok(await execute(browser.app, UNLINK, {"p": "dev"}, token=token)) == {
        "unlinkOAuthAccount": True
    }

    # then: the remaining one is the last again
    linked = assert_ok(await execute(browser.app, LINKED, token=token))["linkedAccounts"]
    assert [a["provider"] for a in linked] == ["google"]
    assert_error(await execute(browser.app, UNLINK, {"p": "google"}, token=token), "CONFLICT")
    assert await models.AuditLog.filter(action="oauth.unlink").count() == 1


async def test_unlink_is_allowed_with_a_password(browser: Browser, oauth_app: Starlette) -> None:
    user = await make_user("alice@example.com")
    assert (await browser.sign_in("dev")).status_code == 200  # linked by the verified email
    token = await token_for(oauth_app, user)

    assert assert_ok(await execute(browser.app, UNLINK, {"p": "dev"}, token=token)) == {
        "unlinkOAuthAccount": True
    }
    assert_error(await execute(browser.app, UNLINK, {"p": "dev"}, token=token), "NOT_FOUND")
    assert assert_ok(await execute(browser.app, LINKED, token=token)) == {"linkedAccounts": []}


# --------------------------------------------------------------------------- units


async def test_memory_flow_store_entries_work_once_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryFlowStore(max_entries=2)
    await store.put("flow", "a", {"n": 1})
    assert await store.take("flow", "a") == {"n": 1}
    assert await store.take("flow", "a") is None
    assert await store.take("link", "a") is None

    await store.put("flow", "old", {"n": 1})
    await store.put("flow", "b", {"n": 2})
    await store.put("flow", "c", {"n": 3})  # over the bound: the oldest goes
    assert await store.take("flow", "old") is None and await store.take("flow", "b") == {"n": 2}

    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + FLOW_TTL + 1)
    assert await store.take("flow", "c") is None


def test_login_url_sits_beside_the_configured_callback() -> None:
    config = OAuthProviderConfig(
        client_id="x", redirect_url="https://api.example.com/v1/auth/oauth/dev/callback"
    )
    assert login_url(config, "http://fallback/") == "https://api.example.com/v1/auth/oauth/dev/login"
    assert login_url(OAuthProviderConfig(client_id="x"), "http://fallback/") == "http://fallback/"
