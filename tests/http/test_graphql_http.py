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
