"""Persisted queries: Apollo's automatic persisted queries (POST and GET), and the safelist mode."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from aicm import models
from aicm.config import ConfigError
from aicm.http.graphql import GraphQLApp
from aicm.http.persisted_queries import MemoryQueryStore
from aicm.schema.extensions.persisted_queries import load_manifest, sha256
from tests.conftest import Backend
from tests.graphql import assert_error, assert_ok, error_codes

QUERY = "query Me { me { id } }"
OTHER = "{ __typename }"


def persisted(query: str, *, digest: str | None = None) -> dict[str, object]:
    return {
        "persistedQuery": {"version": 1, "sha256Hash": digest or hashlib.sha256(query.encode()).hexdigest()}
    }


async def post(client: httpx.AsyncClient, **body: object) -> dict[str, object]:
    response = await client.post("/graphql", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def graphql_endpoint(app: Starlette) -> GraphQLApp:
    return next(r.endpoint for r in app.routes if getattr(r, "path", "") == "/graphql")


# --------------------------------------------------------------------------- apq (the default)


async def test_an_unknown_hash_answers_persisted_query_not_found(client: httpx.AsyncClient) -> None:
    result = await post(client, extensions=persisted("{ me { name } }"))
    error = assert_error(result, "PERSISTED_QUERY_NOT_FOUND")
    assert error["message"] == "PersistedQueryNotFound"  # what Apollo clients look for


async def test_a_registered_query_runs_by_hash_alone(client: httpx.AsyncClient) -> None:
    query = "query Registered { me { email } }"
    # given: Apollo's client registers the query after a miss
    assert error_codes(await post(client, extensions=persisted(query))) == ["PERSISTED_QUERY_NOT_FOUND"]
    assert assert_ok(await post(client, query=query, extensions=persisted(query))) == {"me": None}
    # when / then
    assert assert_ok(await post(client, extensions=persisted(query))) == {"me": None}


async def test_a_persisted_query_runs_over_get(client: httpx.AsyncClient) -> None:
    query = "query OverGet { me { name } }"
    await post(client, query=query, extensions=persisted(query))
    params = {"extensions": json.dumps(persisted(query)), "operationName": "OverGet"}
    response = await client.get("/graphql", params=params, headers={"Accept": "*/*"})
    assert response.status_code == 200
    assert response.json() == {"data": {"me": None}}
    assert "Authorization" in response.headers.get("vary", "")


async def test_a_persisted_mutation_never_runs_over_get(client: httpx.AsyncClient, app: Starlette) -> None:
    # given: a stored mutation
    mutation = 'mutation { register(input: {email: "get@example.com", password: "a-long-password-1"}) { accessToken } }'
    await graphql_endpoint(app).persisted.remember(app.state.runtime.redis, sha256(mutation), mutation)
    # when
    response = await client.get("/graphql", params={"extensions": json.dumps(persisted(mutation))})
    # then
    assert response.status_code == 405
    assert_error(response.json(), "BAD_USER_INPUT")
    assert await models.User.filter(email="get@example.com").count() == 0


async def test_a_hash_that_does_not_match_the_query_is_refused(client: httpx.AsyncClient) -> None:
    result = await post(client, query=QUERY, extensions=persisted(OTHER))
    assert_error(result, "BAD_USER_INPUT", field="extensions")
    # and nothing was stored under the wrong hash
    assert error_codes(await post(client, extensions=persisted(OTHER))) == ["PERSISTED_QUERY_NOT_FOUND"]


@pytest.mark.parametrize(
    "extension",
    [
        {"version": 2, "sha256Hash": "0" * 64},
        {"sha256Hash": "0" * 64},
        {"version": 1, "sha256Hash": "zz"},
        "x",
    ],
)
async def test_malformed_persisted_query_extensions_are_bad_user_input(
    client: httpx.AsyncClient, extension: object
) -> None:
    assert_error(await post(client, extensions={"persistedQuery": extension}), "BAD_USER_INPUT")


async def test_apq_uses_redis_when_configured(
    client: httpx.AsyncClient, app: Starlette, backend: Backend
) -> None:
    query = "query InRedis { me { id name } }"
    await post(client, query=query, extensions=persisted(query))
    redis = app.state.runtime.redis
    if backend.uses_services:
        assert await redis.get(f"aicm:apq:{sha256(query)}") == query.encode()
    else:
        assert await graphql_endpoint(app).persisted.memory.get(sha256(query)) == query


async def test_the_in_process_store_forgets_the_least_recently_used() -> None:
    store = MemoryQueryStore(maxsize=2)
    for key in "abc":
        await store.put(key, key)
    assert await store.get("a") is None and await store.get("c") == "c"


# --------------------------------------------------------------------------- off, safelist


def _endpoint(app: Starlette, backend: Backend, tmp_path: Path, **graphql: object) -> httpx.AsyncClient:
    settings = dataclasses.replace(
        backend.settings, graphql=dataclasses.replace(backend.settings.graphql, **graphql)
    )
    tiny = Starlette(routes=[Route("/graphql", GraphQLApp(settings), methods=["GET", "POST"])])
    tiny.state.runtime = app.state.runtime
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=tiny), base_url="http://testserver")


@pytest.fixture
async def safelisted(
    app: Starlette, backend: Backend, db: None, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    manifest = tmp_path / "manifest.json"
    operations = [{"id": "me-v1", "name": "Me", "type": "query", "body": QUERY}]
    manifest.write_text(
        json.dumps({"format": "apollo-persisted-query-manifest", "version": 1, "operations": operations})
    )
    async with _endpoint(
        app, backend, tmp_path, persisted_queries="safelist", persisted_queries_manifest=str(manifest)
    ) as http:
        yield http


async def test_safelist_runs_a_manifest_operation_by_hash_or_id(safelisted: httpx.AsyncClient) -> None:
    assert assert_ok(await post(safelisted, extensions=persisted(QUERY))) == {"me": None}
    assert assert_ok(await post(safelisted, extensions=persisted("", digest="me-v1"))) == {"me": None}


async def test_safelist_runs_the_exact_text_of_a_manifest_operation(safelisted: httpx.AsyncClient) -> None:
    assert assert_ok(await post(safelisted, query=QUERY)) == {"me": None}


async def test_safelist_refuses_any_other_operation(safelisted: httpx.AsyncClient) -> None:
    error = assert_error(await post(safelisted, query=OTHER), "BAD_USER_INPUT")
    assert error["extensions"]["reason"] == "QUERY_NOT_IN_SAFELIST"
    # nor can a client register one
    assert_error(await post(safelisted, query=OTHER, extensions=persisted(OTHER)), "BAD_USER_INPUT")
    assert error_codes(await post(safelisted, extensions=persisted(OTHER))) == ["PERSISTED_QUERY_NOT_FOUND"]


async def test_safelist_applies_to_every_transport(safelisted: httpx.AsyncClient) -> None:
    graphql = safelisted._transport.app.routes[0].endpoint  # type: ignore[attr-defined]
    result = await graphql.schema.execute(OTHER)
    assert result.errors and result.errors[0].extensions["reason"] == "QUERY_NOT_IN_SAFELIST"


async def test_with_persisted_queries_off_a_hash_is_not_supported(
    app: Starlette, backend: Backend, db: None, tmp_path: Path
) -> None:
    async with _endpoint(app, backend, tmp_path, persisted_queries="off") as http:
        assert error_codes(await post(http, extensions=persisted(QUERY))) == ["PERSISTED_QUERY_NOT_SUPPORTED"]
        assert assert_ok(await post(http, query=OTHER)) == {"__typename": "Query"}


def test_a_manifest_may_be_a_plain_map(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"abc": QUERY}))
    manifest = load_manifest(path)
    assert manifest.by_id["abc"] == QUERY and manifest.by_id[sha256(QUERY)] == QUERY and QUERY in manifest


@pytest.mark.parametrize("content", ["[]", "{not json", '{"operations": [{"id": "x"}]}', '{"a": 1}'])
def test_an_unusable_manifest_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=r"graphql\.persisted_queries_manifest"):
        load_manifest(path)
