"""A document with several operations and no ``operationName`` is refused (GraphQL spec, GetOperation)."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette

from tests.factories import make_user, token_for
from tests.ws import GraphQLWS

TWO_QUERIES = "query A { __typename } query B { me { email } }"
TWO_SUBSCRIPTIONS = (
    "subscription A { taskUpdates(taskId: $x) { id } } subscription B { projectEvents(projectId: $x) { type } }"
).replace("$x", '"VGFzazox"')
REFUSED = {"code": "BAD_USER_INPUT", "field": "operationName"}


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_two_operations_without_a_name_are_refused_over_http(
    client: httpx.AsyncClient, method: str
) -> None:
    if method == "POST":
        response = await client.post("/graphql", json={"query": TWO_QUERIES})
    else:
        response = await client.get("/graphql", params={"query": TWO_QUERIES})
    body = response.json()
    assert response.status_code == 200, body
    assert body["data"] is None
    assert [e["extensions"] for e in body["errors"]] == [REFUSED]


async def test_the_named_operation_runs(app: Starlette, client: httpx.AsyncClient) -> None:
    user = await make_user("named@example.com")
    headers = {"Authorization": f"Bearer {await token_for(app, user)}"}
    response = await client.post(
        "/graphql", json={"query": TWO_QUERIES, "operationName": "B"}, headers=headers
    )
    assert response.json() == {"data": {"me": {"email": "named@example.com"}}}
    response = await client.post("/graphql", json={"query": TWO_QUERIES, "operationName": "A"})
    assert response.json() == {"data": {"__typename": "Query"}}


async def test_one_operation_needs_no_name(client: httpx.AsyncClient) -> None:
    response = await client.post("/graphql", json={"query": "query A { __typename }"})
    assert response.json() == {"data": {"__typename": "Query"}}


@pytest.mark.parametrize("document", [TWO_QUERIES, TWO_SUBSCRIPTIONS], ids=["queries", "subscriptions"])
async def test_two_operations_without_a_name_are_refused_over_websocket(
    app: Starlette, client: httpx.AsyncClient, server_url: str, document: str
) -> None:
    ws = await (await GraphQLWS.open(server_url, await token_for(app, await make_user()))).acked()
    try:
        await ws.subscribe("1", document)
        message = await ws.receive()
        while message.get("type") in {"ping", "pong"}:
            message = await ws.receive()
        assert message["type"] == "error", message
        assert [e["extensions"] for e in message["payload"]] == [REFUSED]
    finally:
        await ws.close()
