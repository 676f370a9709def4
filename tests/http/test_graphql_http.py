from __future__ import annotations

import httpx

from tests.graphql import assert_error, execute


async def test_me_is_null_when_anonymous(client: httpx.AsyncClient) -> None:
    result = await execute(client, "{ me { id email } }")
    assert result == {"data": {"me": None}}


async def test_invalid_token_answers_unauthenticated(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql", json={"query": "{ me { id } }"}, headers={"Authorization": "Bearer not-a-jwt"}
    )
    assert response.status_code == 401
    assert_error(response.json(), "UNAUTHENTICATED")


async def test_syntax_error_answers_bad_user_input(client: httpx.AsyncClient) -> None:
    result = await execute(client, "{ me { id ")
    assert_error(result, "BAD_USER_INPUT")


async def test_graphiql_is_served_to_browsers(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert "graphiql" in response.text.lower()


async def test_more_concurrent_requests_than_redis_connections_all_succeed(
    app, client: httpx.AsyncClient
) -> None:
    # given more signed-in requests at once than the Redis pool has connections (sessions are checked in Redis)
    import asyncio

    from tests.factories import make_user, token_for

    user = await make_user()
    token = await token_for(app, user)
    concurrent = app.state.runtime.settings.redis.pool_size * 4
    # when
    results = await asyncio.gather(
        *(execute(client, "{ me { id } }", token=token) for _ in range(concurrent))
    )
    # then none fails for want of a connection
    assert all(result.get("data", {}).get("me") for result in results), results[:3]
