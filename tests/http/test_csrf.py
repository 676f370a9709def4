"""CSRF: JSON-only POSTs, queries-only GETs, no batching, capped bodies, and the refresh-cookie double submit."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from aicm import models
from aicm.config import RefreshCookieConfig
from aicm.http.cookies import CSRF_COOKIE, REFRESH_COOKIE
from aicm.http.graphql import GraphQLApp
from aicm.http.middleware.csrf import CSRFMiddleware
from tests.conftest import Backend
from tests.factories import PASSWORD, make_user
from tests.graphql import assert_error, assert_ok

REGISTER = (
    'mutation { register(input: {email: "csrf@example.com", password: "a-long-password-1"}) { accessToken } }'
)


async def registered() -> int:
    return await models.User.filter(email="csrf@example.com").count()


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
        "application/jsonx",
    ],
)
async def test_a_post_that_is_not_json_is_refused_before_anything_runs(
    client: httpx.AsyncClient, content_type: str
) -> None:
    body = json.dumps({"query": REGISTER})
    response = await client.post("/graphql", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 415
    assert_error(response.json(), "BAD_USER_INPUT")
    assert await registered() == 0


async def test_json_with_a_charset_is_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql",
        content='{"query": "{ __typename }"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200 and response.json() == {"data": {"__typename": "Query"}}


async def test_get_runs_queries(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", params={"query": "{ me { id } }"})
    assert response.status_code == 200 and response.json() == {"data": {"me": None}}


async def test_a_mutation_over_get_answers_405_and_never_runs(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", params={"query": REGISTER})
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert_error(response.json(), "BAD_USER_INPUT")
    assert await registered() == 0


async def test_a_subscription_over_http_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql", json={"query": 'subscription { taskUpdates(taskId: "x") { id } }'}
    )
    assert response.status_code == 400
    assert_error(response.json(), "BAD_USER_INPUT")


async def test_a_batch_answers_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/graphql", json=[{"query": "{ __typename }"}, {"query": REGISTER}])
    assert response.status_code == 400
    assert_error(response.json(), "BAD_USER_INPUT")
    assert await registered() == 0


async def test_a_body_over_the_cap_answers_413(client: httpx.AsyncClient, backend: Backend) -> None:
    limit = backend.settings.graphql.max_body_bytes
    padding = " " * limit
    response = await client.post(
        "/graphql",
        content='{"query": "{ __typename }"' + padding + "}",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert_error(response.json(), "BAD_USER_INPUT")


async def test_a_streamed_body_over_the_cap_answers_413(client: httpx.AsyncClient, backend: Backend) -> None:
    limit = backend.settings.graphql.max_body_bytes

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"query": "{ __typename }"'
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536
        yield b"}"

    response = await client.post("/graphql", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


async def test_a_body_just_under_the_cap_runs(client: httpx.AsyncClient, backend: Backend) -> None:
    head = '{"query": "{ __typename }"'
    padding = " " * (backend.settings.graphql.max_body_bytes - len(head) - 1)
    response = await client.post(
        "/graphql", content=head + padding + "}", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200


# --------------------------------------------------------------------------- the refresh cookie and double submit

LOGIN = "mutation($input: LoginInput!) { login(input: $input) { accessToken refreshToken } }"
REFRESH = 'mutation { refreshToken(refreshToken: "") { accessToken refreshToken } }'


@pytest.fixture
async def browser(app: Starlette, backend: Backend, db: None) -> AsyncIterator[httpx.AsyncClient]:
    """The GraphQL endpoint with ``security.refresh_cookie`` on, on the session app's runtime."""
    security = dataclasses.replace(
        backend.settings.security, refresh_cookie=RefreshCookieConfig(enabled=True)
    )
    settings = dataclasses.replace(backend.settings, security=security)
    tiny = Starlette(
        routes=[Route("/graphql", GraphQLApp(settings), methods=["GET", "POST"])],
        middleware=[Middleware(CSRFMiddleware, path="/graphql", double_submit=True)],
    )
    tiny.state.runtime = app.state.runtime
    transport = httpx.ASGITransport(app=tiny, client=("127.0.0.1", 40020))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:
        yield http


async def _login(http: httpx.AsyncClient) -> httpx.Response:
    user = await make_user()
    variables = {"input": {"email": user.email, "password": PASSWORD}}
    response = await http.post("/graphql", json={"query": LOGIN, "variables": variables})
    assert response.status_code == 200, response.text
    return response


async def test_login_sets_an_httponly_refresh_cookie_and_a_csrf_token(browser: httpx.AsyncClient) -> None:
    response = await _login(browser)
    cookies = {c.split("=", 1)[0]: c for c in response.headers.get_list("set-cookie")}
    refresh, csrf = cookies[REFRESH_COOKIE].lower(), cookies[CSRF_COOKIE].lower()
    assert (
        "httponly" in refresh
        and "secure" in refresh
        and "samesite=strict" in refresh
        and "path=/graphql" in refresh
    )
    assert "httponly" not in csrf and "secure" in csrf
    assert response.headers["X-CSRF-Token"] == browser.cookies[CSRF_COOKIE]
    assert browser.cookies[REFRESH_COOKIE] == assert_ok(response.json())["login"]["refreshToken"]


async def test_a_post_carrying_the_refresh_cookie_needs_the_csrf_header(browser: httpx.AsyncClient) -> None:
    await _login(browser)
    missing = await browser.post("/graphql", json={"query": REFRESH})
    wrong = await browser.post("/graphql", json={"query": REFRESH}, headers={"X-CSRF-Token": "guess"})
    for response in (missing, wrong):
        assert response.status_code == 403
        assert assert_error(response.json(), "FORBIDDEN")["extensions"]["reason"] == "CSRF_TOKEN_MISMATCH"


async def test_refresh_from_the_cookie_keeps_the_new_token_out_of_the_page(
    browser: httpx.AsyncClient,
) -> None:
    await _login(browser)
    old_refresh = browser.cookies[REFRESH_COOKIE]
    response = await browser.post(
        "/graphql", json={"query": REFRESH}, headers={"X-CSRF-Token": browser.cookies[CSRF_COOKIE]}
    )
    payload = assert_ok(response.json())["refreshToken"]
    assert payload["accessToken"] and payload["refreshToken"] == ""
    assert browser.cookies[REFRESH_COOKIE] not in ("", old_refresh)  # rotated, in the cookie only


async def test_logout_clears_the_cookies(browser: httpx.AsyncClient) -> None:
    login = assert_ok((await _login(browser)).json())["login"]
    response = await browser.post(
        "/graphql",
        json={"query": "mutation { logout }"},
        headers={
            "X-CSRF-Token": browser.cookies[CSRF_COOKIE],
            "Authorization": f"Bearer {login['accessToken']}",
        },
    )
    assert assert_ok(response.json()) == {"logout": True}
    assert REFRESH_COOKIE not in browser.cookies and CSRF_COOKIE not in browser.cookies


async def test_clients_without_the_cookie_need_no_csrf_header(browser: httpx.AsyncClient) -> None:
    response = await browser.post("/graphql", json={"query": "{ __typename }"})
    assert response.status_code == 200
