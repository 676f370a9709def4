"""Sign-in end to end over GraphQL: passwords, refresh rotation, reuse, sessions, lockout and token checks."""

from __future__ import annotations

import logging
import time
import uuid

import httpx
import jwt
import pytest
from starlette.applications import Starlette

from aicm import models
from tests.factories import PASSWORD, make_user
from tests.graphql import assert_error, assert_ok, execute
from tests.ws import GraphQLWS

REGISTER = "mutation($input: RegisterInput!) { register(input: $input) { accessToken refreshToken expiresIn user { email } } }"
LOGIN = "mutation($input: LoginInput!) { login(input: $input) { accessToken refreshToken expiresIn user { email } } }"
REFRESH = (
    "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken refreshToken user { email } } }"
)
ME = "{ me { email } }"


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict:
    return await execute(client, LOGIN, {"input": {"email": email, "password": password}})


async def signed_in(client: httpx.AsyncClient, email: str) -> dict:
    return assert_ok(await login(client, email))["login"]


async def me_status(client: httpx.AsyncClient, token: str) -> tuple[int, dict]:
    response = await client.post("/graphql", json={"query": ME}, headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.json()


async def test_register_then_use_the_access_token(app: Starlette, client: httpx.AsyncClient) -> None:
    variables = {
        "input": {"email": "New.Person@Example.com", "password": "a-long-password-42", "name": "New"}
    }
    payload = assert_ok(await execute(client, REGISTER, variables))["register"]
    assert payload["user"]["email"] == "new.person@example.com"
    assert payload["expiresIn"] == 900
    assert (await me_status(client, payload["accessToken"]))[1] == {
        "data": {"me": {"email": "new.person@example.com"}}
    }
    user = await models.User.get(email="new.person@example.com")
    assert user.password_hash and user.password_hash.startswith("$argon2id$")


async def test_register_refuses_a_common_password(app: Starlette, client: httpx.AsyncClient) -> None:
    variables = {"input": {"email": "c@example.com", "password": "password123", "name": "C"}}
    assert_error(await execute(client, REGISTER, variables), "BAD_USER_INPUT", field="password")


async def test_register_is_refused_when_sign_up_is_closed(app: Starlette, client: httpx.AsyncClient) -> None:
    services = app.state.runtime.auth
    services.allow_registration = False
    try:
        variables = {"input": {"email": "closed@example.com", "password": "a-long-password-42"}}
        assert_error(await execute(client, REGISTER, variables), "FORBIDDEN")
    finally:
        services.allow_registration = True


async def test_login_issues_a_working_pair_and_records_the_login(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    await make_user("ann@example.com")
    payload = await signed_in(client, "ANN@example.com")
    assert payload["user"] == {"email": "ann@example.com"}
    assert (await me_status(client, payload["accessToken"]))[0] == 200
    assert (await models.User.get(email="ann@example.com")).last_login_at is not None


async def test_unknown_email_and_wrong_password_fail_alike(app: Starlette, client: httpx.AsyncClient) -> None:
    await make_user("known@example.com")
    timings: dict[str, list[float]] = {"unknown": [], "wrong": []}
    results = {}
    for _ in range(3):
        for kind, email in (("unknown", "nobody@example.com"), ("wrong", "known@example.com")):
            start = time.perf_counter()
            results[kind] = await login(client, email, "not-the-password-1")
            timings[kind].append(time.perf_counter() - start)
    # same answer, word for word
    assert results["unknown"]["errors"][0]["message"] == results["wrong"]["errors"][0]["message"]
    assert results["unknown"]["errors"][0]["extensions"] == results["wrong"]["errors"][0]["extensions"]
    assert results["wrong"]["errors"][0]["extensions"] == {
        "code": "UNAUTHENTICATED",
        "reason": "INVALID_CREDENTIALS",
    }
    # both run one argon2 verification: their times are of the same order (generous bound against noise)
    ratio = min(timings["unknown"]) / min(timings["wrong"])
    assert 0.33 < ratio < 3, timings


async def test_lockout_refuses_even_the_right_password_then_a_success_resets(
    app: Starlette, client: httpx.AsyncClient
):
    await make_user("locked@example.com")
    await make_user("other@example.com")
    for _ in range(app.state.runtime.settings.auth.max_failed_logins):
        assert_error(await login(client, "locked@example.com", "wrong-password-123"), "UNAUTHENTICATED")
    locked = await login(client, "locked@example.com")
    assert locked["errors"][0]["extensions"] == {"code": "UNAUTHENTICATED", "reason": "ACCOUNT_LOCKED"}
    assert_ok(await login(client, "other@example.com"))  # other accounts are unaffected
    await app.state.runtime.auth.throttle.reset("locked@example.com")  # the lock expires
    assert_ok(await login(client, "locked@example.com"))


async def test_refresh_rotates_and_a_retry_in_the_grace_window_gets_the_same_pair(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    await make_user("rot@example.com")
    first = await signed_in(client, "rot@example.com")
    rotated = assert_ok(await execute(client, REFRESH, {"t": first["refreshToken"]}))["refreshToken"]
    assert rotated["refreshToken"] != first["refreshToken"]
    retried = assert_ok(await execute(client, REFRESH, {"t": first["refreshToken"]}))["refreshToken"]
    assert retried == rotated
    assert (await me_status(client, rotated["accessToken"]))[0] == 200


async def test_reusing_a_rotated_token_after_the_grace_window_ends_the_session(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    sessions = app.state.runtime.auth.sessions
    await make_user("reuse@example.com")
    first = await signed_in(client, "reuse@example.com")
    rotated = assert_ok(await execute(client, REFRESH, {"t": first["refreshToken"]}))["refreshToken"]
    grace, sessions.grace_seconds = sessions.grace_seconds, 0.0
    try:
        reused = await execute(client, REFRESH, {"t": first["refreshToken"]})
    finally:
        sessions.grace_seconds = grace
    assert reused["errors"][0]["extensions"] == {"code": "UNAUTHENTICATED", "reason": "TOKEN_REUSED"}
    newest = await execute(client, REFRESH, {"t": rotated["refreshToken"]})
    assert newest["errors"][0]["extensions"]["reason"] == "TOKEN_REUSED"
    status, body = await me_status(client, rotated["accessToken"])
    assert status == 401 and body["errors"][0]["extensions"]["reason"] == "TOKEN_REUSED"


async def test_an_unknown_refresh_token_is_refused(app: Starlette, client: httpx.AsyncClient) -> None:
    assert_error(await execute(client, REFRESH, {"t": "made-up"}), "UNAUTHENTICATED")


async def test_logout_ends_the_session_at_once(app: Starlette, client: httpx.AsyncClient) -> None:
    await make_user("out@example.com")
    pair = await signed_in(client, "out@example.com")
    assert assert_ok(await execute(client, "mutation { logout }", token=pair["accessToken"])) == {
        "logout": True
    }
    status, body = await me_status(client, pair["accessToken"])
    assert status == 401 and body["errors"][0]["extensions"]["reason"] == "SESSION_REVOKED"
    assert_error(await execute(client, REFRESH, {"t": pair["refreshToken"]}), "UNAUTHENTICATED")


async def test_sessions_are_listed_and_revoked(app: Starlette, client: httpx.AsyncClient) -> None:
    await make_user("multi@example.com")
    pairs = [await signed_in(client, "multi@example.com") for _ in range(3)]
    listing = assert_ok(
        await execute(client, "{ mySessions { id current ip userAgent } }", token=pairs[0]["accessToken"])
    )
    sessions = listing["mySessions"]
    assert len(sessions) == 3 and sum(s["current"] for s in sessions) == 1
    other = next(s for s in sessions if not s["current"])
    revoked = await execute(
        client,
        "mutation($id: ID!) { revokeSession(id: $id) }",
        {"id": other["id"]},
        token=pairs[0]["accessToken"],
    )
    assert assert_ok(revoked) == {"revokeSession": True}
    still = [await me_status(client, p["accessToken"]) for p in pairs]
    assert sorted(s for s, _ in still) == [200, 200, 401]
    count = assert_ok(await execute(client, "mutation { revokeAllSessions }", token=pairs[0]["accessToken"]))
    assert count == {"revokeAllSessions": 1}
    assert [(await me_status(client, p["accessToken"]))[0] for p in pairs].count(200) == 1


async def test_someone_elses_session_is_not_found(app: Starlette, client: httpx.AsyncClient) -> None:
    await make_user("a1@example.com")
    await make_user("b1@example.com")
    a, b = await signed_in(client, "a1@example.com"), await signed_in(client, "b1@example.com")
    their = assert_ok(await execute(client, "{ mySessions { id } }", token=b["accessToken"]))["mySessions"][
        0
    ]["id"]
    result = await execute(
        client, "mutation($id: ID!) { revokeSession(id: $id) }", {"id": their}, token=a["accessToken"]
    )
    assert_error(result, "NOT_FOUND")


async def test_max_sessions_per_user_ends_the_least_recently_used(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    limit = app.state.runtime.settings.auth.max_sessions_per_user
    await make_user("many@example.com")
    pairs = [await signed_in(client, "many@example.com") for _ in range(limit + 1)]
    assert (await me_status(client, pairs[0]["accessToken"]))[0] == 401
    assert (await me_status(client, pairs[-1]["accessToken"]))[0] == 200


async def test_change_password_needs_the_current_one_and_ends_other_sessions(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    await make_user("pw@example.com")
    here, elsewhere = await signed_in(client, "pw@example.com"), await signed_in(client, "pw@example.com")
    doc = "mutation($i: ChangePasswordInput!) { changePassword(input: $i) }"
    wrong = await execute(
        client,
        doc,
        {"i": {"currentPassword": "nope-nope-nope", "newPassword": "brand-new-pass-7"}},
        token=here["accessToken"],
    )
    assert_error(wrong, "BAD_USER_INPUT", field="currentPassword")
    ok = await execute(
        client,
        doc,
        {"i": {"currentPassword": PASSWORD, "newPassword": "brand-new-pass-7"}},
        token=here["accessToken"],
    )
    assert assert_ok(ok) == {"changePassword": True}
    assert (await me_status(client, here["accessToken"]))[0] == 200
    assert (await me_status(client, elsewhere["accessToken"]))[0] == 401
    assert_ok(await login(client, "pw@example.com", "brand-new-pass-7"))


def _claims(app: Starlette, user: models.User, **changes: object) -> dict:
    now = int(time.time())
    settings = app.state.runtime.settings
    claims = {
        "sub": str(user.id),
        "sid": "s",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 60,
        "iss": settings.jwt.issuer,
        "aud": settings.jwt.audience,
        "typ": "access",
    }
    return {**claims, **changes}


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda app, c, key: jwt.encode(c, None, algorithm="none"), id="alg-none"),
        pytest.param(lambda app, c, key: jwt.encode(c, "x" * 48, algorithm="HS256"), id="wrong-key"),
        pytest.param(
            lambda app, c, key: jwt.encode({**c, "exp": int(time.time()) - 5}, key, algorithm="HS256"),
            id="expired",
        ),
        pytest.param(
            lambda app, c, key: jwt.encode({**c, "typ": "refresh"}, key, algorithm="HS256"),
            id="refresh-typed",
        ),
        pytest.param(
            lambda app, c, key: jwt.encode({**c, "aud": "someone-else"}, key, algorithm="HS256"),
            id="foreign-audience",
        ),
        pytest.param(
            lambda app, c, key: jwt.encode({**c, "iss": "evil"}, key, algorithm="HS256"), id="foreign-issuer"
        ),
        pytest.param(
            lambda app, c, key: jwt.encode(
                {k: v for k, v in c.items() if k != "sid"}, key, algorithm="HS256"
            ),
            id="no-session",
        ),
    ],
)
async def test_forged_or_misused_tokens_are_refused(app: Starlette, client: httpx.AsyncClient, forge) -> None:
    user = await make_user()
    session, _ = await app.state.runtime.auth.sessions.create(user.id)
    key = app.state.runtime.tokens.keys.signing_key
    token = forge(app, _claims(app, user, sid=session.id), key)
    status, body = await me_status(client, token)
    assert status == 401
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def _token_with_someone_elses_session(app: Starlette) -> tuple[models.User, str]:
    """A token correctly signed for ``victim`` but carrying the live session of another user."""
    victim, holder = await make_user(), await make_user()
    session, _ = await app.state.runtime.auth.sessions.create(holder.id)
    key = app.state.runtime.tokens.keys.signing_key
    return victim, jwt.encode(_claims(app, victim, sid=session.id), key, algorithm="HS256")


async def test_a_token_naming_another_user_than_its_session_is_refused(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    _, token = await _token_with_someone_elses_session(app)
    status, body = await me_status(client, token)
    assert status == 401
    assert body["errors"][0]["extensions"] == {"code": "UNAUTHENTICATED", "reason": "TOKEN_INVALID"}


async def test_websocket_refuses_a_token_naming_another_user_than_its_session(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    _, token = await _token_with_someone_elses_session(app)
    ws = await GraphQLWS.open(server_url, token)
    assert await ws.closed_with() == 4403


async def test_no_password_or_token_is_ever_logged(
    app: Starlette, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_password = "Sup3r-secret-passw0rd"
    reg = assert_ok(
        await execute(client, REGISTER, {"input": {"email": "log@example.com", "password": secret_password}})
    )
    await login(client, "log@example.com", "Wrong-" + secret_password)
    pair = await signed_in_with(client, "log@example.com", secret_password)
    rotated = assert_ok(await execute(client, REFRESH, {"t": pair["refreshToken"]}))["refreshToken"]
    await execute(client, "mutation { logout }", token=rotated["accessToken"])
    secrets = [
        secret_password,
        reg["register"]["accessToken"],
        reg["register"]["refreshToken"],
        pair["accessToken"],
        pair["refreshToken"],
        rotated["accessToken"],
        rotated["refreshToken"],
    ]
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "auth_failed" in logged and "auth_succeeded" in logged
    for secret in secrets:
        assert secret not in logged


async def signed_in_with(client: httpx.AsyncClient, email: str, password: str) -> dict:
    return assert_ok(await login(client, email, password))["login"]
