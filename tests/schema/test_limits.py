"""GraphQL query limits: depth, aliases, tokens, cost and repeats, with fragments expanded; the NUL rule;
introspection and suggestions. Every rejection comes before any resolver runs."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator

import httpx
import pytest
import strawberry
from graphql import get_introspection_query, parse
from starlette.applications import Starlette
from starlette.routing import Route

from aicm import models
from aicm.config import Settings
from aicm.http.graphql import GraphQLApp
from aicm.schema import build_schema
from aicm.schema.errors import Schema
from aicm.schema.extensions.limits import MAX_SAME_FIELD, Limits, QueryLimits, measure
from aicm.schema.extensions.nul import RejectNul
from aicm.schema.extensions.validation import CachedValidation
from tests.conftest import Backend
from tests.factories import make_user, token_for
from tests.graphql import assert_error, assert_ok, error_codes, execute
from tests.ws import GraphQLWS

LIMITS = Limits(max_depth=5, max_aliases=4, max_cost=100, max_tokens=200)

# --------------------------------------------------------------------------- a tiny schema that counts resolvers

calls: list[str] = []


@strawberry.type
class Node:
    @strawberry.field
    def name(self) -> str:
        calls.append("name")
        return "n"

    @strawberry.field
    def child(self) -> Node:
        calls.append("child")
        return Node()

    @strawberry.field
    def items(self, first: int = 10) -> list[Node]:
        calls.append("items")
        return [Node() for _ in range(min(first, 3))]


@strawberry.type
class Query:
    @strawberry.field
    def root(self, text: str = "") -> Node:
        calls.append("root")
        return Node()


@strawberry.type
class Mutation:
    @strawberry.mutation
    def touch(self, text: str) -> bool:
        calls.append("touch")
        return True


TINY = Schema(
    query=Query,
    mutation=Mutation,
    extensions=[lambda: QueryLimits(LIMITS), RejectNul, lambda: CachedValidation(hide_suggestions=True)],
)


async def run_tiny(document: str, variables: dict[str, object] | None = None) -> list[str | None]:
    calls.clear()
    result = await TINY.execute(document, variable_values=variables)
    return [(e.extensions or {}).get("code") for e in result.errors or []]


def nested(depth: int, leaf: str = "name") -> str:
    return "child { " * (depth - 2) + leaf + " }" * (depth - 2)


@pytest.mark.parametrize(
    ("document", "variables"),
    [
        ("{ root { " + nested(6) + " } }", None),  # depth 6
        ("{ root { a: name b: name c: name d: name e: name } }", None),  # 5 aliases
        ("{ root { " + "name " * 200 + "} }", None),  # tokens
        ("{ root { items(first: 10) { items(first: 10) { name } } } }", None),  # cost 1 + 1 + 10*(1 + 10*1)
        ("query($n: Int) { root { items(first: $n) { items(first: $n) { name } } } }", {"n": 10}),
        ("{ root { ...D } } fragment D on Node { child { child { child { child { name } } } } }", None),
        ("{ root { ...A ...A ...A } } fragment A on Node { a: name b: name }", None),  # aliases x3
        (
            "{ root { ...A } } fragment A on Node { child { ...B } } fragment B on Node { child { ...C } } "
            "fragment C on Node { child { ...E } } fragment E on Node { child { name } }",
            None,
        ),
        ("{ root { ... on Node { child { ... on Node { child { child { child { name } } } } } } } }", None),
        (
            "{ root { ...F } } fragment F on Node { items(first: 10) { ...G } } "
            "fragment G on Node { items(first: 10) { name } }",
            None,
        ),
    ],
)
async def test_limits_refuse_before_any_resolver_runs(
    document: str, variables: dict[str, object] | None
) -> None:
    codes = await run_tiny(document, variables)
    assert codes == ["QUERY_TOO_COMPLEX"]
    assert calls == []


async def test_fragments_fanning_out_are_measured_without_expanding_them() -> None:
    # each fragment spreads the next twice: 2**40 fields once expanded; measured in linear time
    names = [f"F{i}" for i in range(41)]
    fragments = " ".join(f"fragment {a} on Node {{ ...{b} ...{b} }}" for a, b in itertools.pairwise(names))
    document = f"{{ root {{ ...F0 }} }} {fragments} fragment F40 on Node {{ name }}"
    limits = dataclasses.replace(LIMITS, max_tokens=5000)
    with pytest.raises(Exception, match="cost"):
        measure(TINY._schema, parse(document), limits)


async def test_a_fragment_cycle_is_refused_with_bad_user_input() -> None:
    codes = await run_tiny(
        "{ root { ...A } } fragment A on Node { child { ...B } } fragment B on Node { ...A }"
    )
    assert codes == ["BAD_USER_INPUT"]
    assert calls == []


async def test_a_query_within_every_limit_runs() -> None:
    codes = await run_tiny("{ root { a: name child { ...F } } } fragment F on Node { child { name } }")
    assert codes == []
    assert "root" in calls


def test_measure_expands_fragments_where_they_are_spread() -> None:
    document = parse(
        "{ root { ...F child { ...F } } } fragment F on Node { x: name items(first: 5) { name } }"
    )
    m = measure(TINY._schema, document, Limits(100, 100, 10_000, 10_000))
    # root(1) child(2) items(3) name(4); aliases x2; cost: root 1 + [F: 1 + 1 + 5] + child 1 + [F: 7]
    assert (m.depth, m.aliases, m.cost) == (4, 2, 1 + 7 + 1 + 7)


def test_a_list_without_first_costs_its_schema_default() -> None:
    m = measure(TINY._schema, parse("{ root { items { name } } }"), Limits(100, 100, 10_000, 10_000))
    assert m.cost == 1 + 1 + 10 * 1


def test_out_of_range_first_is_capped_so_the_resolver_answers_it() -> None:
    m = measure(
        TINY._schema, parse("{ root { items(first: 100000) { name } } }"), Limits(100, 100, 10_000, 10_000)
    )
    assert m.cost == 1 + 1 + 100


async def test_one_field_repeated_past_the_limit_is_refused() -> None:
    document = "{ root { " + "child { name } " * (MAX_SAME_FIELD + 1) + "} }"
    limits = Limits(100, 100, 100_000, 100_000)
    with pytest.raises(Exception, match="selected more than"):
        measure(TINY._schema, parse(document), limits)


# --------------------------------------------------------------------------- the NUL rule


@pytest.mark.parametrize(
    ("document", "variables", "field"),
    [
        ('{ root(text: "a\\u0000b") { name } }', None, "text"),
        ('mutation { touch(text: "\\u0000") }', None, "text"),
        ("query($t: String) { root(text: $t) { name } }", {"t": "x\x00"}, "t"),
        ('query($t: String = "\\u0000") { root(text: $t) { name } }', None, "t"),
    ],
)
async def test_nul_in_any_string_is_bad_user_input_naming_the_field(
    document: str, variables: dict[str, object] | None, field: str
) -> None:
    calls.clear()
    result = await TINY.execute(document, variable_values=variables)
    assert result.errors and result.errors[0].extensions == {"code": "BAD_USER_INPUT", "field": field}
    assert calls == []


async def test_nul_deep_in_an_input_names_the_innermost_key(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    user = await make_user()
    token = await token_for(app, user)
    variables = {"input": {"name": "ok", "description": "fine\x00", "repositoryUrl": ""}}
    result = await execute(
        client,
        "mutation($input: CreateProjectInput!) { createProject(input: $input) { id } }",
        variables,
        token=token,
    )
    assert_error(result, "BAD_USER_INPUT", field="description")
    assert await models.Project.all().count() == 0


# --------------------------------------------------------------------------- over HTTP, on the real schema


async def test_http_depth_through_fragments_answers_query_too_complex(client: httpx.AsyncClient) -> None:
    deep = "owner { " * 6 + "id" + " }" * 6
    document = (
        "{ projects { edges { node { ...P } } } } "
        f"fragment P on Project {{ tasks {{ edges {{ node {{ project {{ {deep} }} }} }} }} }}"
    )
    assert error_codes(await execute(client, document)) == ["QUERY_TOO_COMPLEX"]


async def test_http_aliases_spread_through_a_fragment_count_each_time(client: httpx.AsyncClient) -> None:
    aliases = " ".join(f"a{i}: __typename" for i in range(10))
    document = "{ ...F ...G ...H ...I } " + " ".join(
        f"fragment {name} on Query {{ {aliases} }}" for name in "FGHI"
    )
    assert error_codes(await execute(client, document)) == ["QUERY_TOO_COMPLEX"]
    assert error_codes(await execute(client, "{ ...F } fragment F on Query { " + aliases + " }")) == []


async def test_http_cost_of_nested_pages_answers_query_too_complex(client: httpx.AsyncClient) -> None:
    document = "{ projects(first: 100) { edges { node { tasks(first: 100) { edges { node { id } } } } } } }"
    error = assert_error(await execute(client, document), "QUERY_TOO_COMPLEX")
    assert error["extensions"]["limit"] == "cost"


async def test_http_too_many_tokens_answers_query_too_complex(client: httpx.AsyncClient) -> None:
    error = assert_error(await execute(client, "{ " + "__typename " * 6000 + "}"), "QUERY_TOO_COMPLEX")
    assert error["extensions"]["limit"] == "tokens"


async def test_a_mutation_refused_for_complexity_changes_nothing(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    token = await token_for(app, await make_user())
    spread = " ".join(f'p{i}: createProject(input: {{name: "p{i}"}}) {{ id }}' for i in range(31))
    result = await execute(client, "mutation { " + spread + " }", token=token)
    assert error_codes(result) == ["QUERY_TOO_COMPLEX"]
    assert await models.Project.all().count() == 0


async def test_graphiqls_introspection_query_fits_the_default_limits(client: httpx.AsyncClient) -> None:
    assert_ok(await execute(client, get_introspection_query(descriptions=True, input_value_deprecation=True)))


async def test_ordinary_frontend_queries_fit_the_default_limits(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    token = await token_for(app, await make_user())
    document = """{ projects(first: 20) { totalCount edges { cursor node { id name members { user { id name }
      role { name } } tasks(first: 10) { edges { node { id status logs(first: 10) { seq text } } } } } } } }"""
    assert_ok(await execute(client, document, token=token))


# --------------------------------------------------------------------------- production: introspection, suggestions


@pytest.fixture
async def production_client(app: Starlette, backend: Backend, db: None) -> AsyncIterator[httpx.AsyncClient]:
    """A GraphQL endpoint built with production settings, on the session app's runtime."""
    settings = dataclasses.replace(
        backend.settings, app=dataclasses.replace(backend.settings.app, env="production")
    )
    tiny = Starlette(routes=[Route("/graphql", GraphQLApp(settings), methods=["GET", "POST"])])
    tiny.state.runtime = app.state.runtime
    transport = httpx.ASGITransport(app=tiny, client=("127.0.0.1", 40010))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def test_production_hides_did_you_mean_suggestions(
    production_client: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    document = "{ mee { id } }"
    assert "Did you mean" in assert_error(await execute(client, document), "BAD_USER_INPUT")["message"]
    message = assert_error(await execute(production_client, document), "BAD_USER_INPUT")["message"]
    assert "Did you mean" not in message and "'me'" not in message


async def test_production_hides_suggestions_in_variable_errors(production_client: httpx.AsyncClient) -> None:
    document = "mutation($input: LoginInput!) { login(input: $input) { accessToken } }"
    result = await execute(production_client, document, {"input": {"emial": "a@b.c", "password": "x"}})
    assert "Did you mean" not in str(result) and set(error_codes(result)) == {"BAD_USER_INPUT"}


async def test_production_turns_introspection_and_graphiql_off(production_client: httpx.AsyncClient) -> None:
    result = await execute(production_client, "{ __schema { queryType { name } } }")
    assert set(error_codes(result)) == {"BAD_USER_INPUT"}
    assert_ok(await execute(production_client, "{ __typename }"))
    response = await production_client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 404 and "graphiql" not in response.text.lower()


def test_introspection_can_be_forced_on_in_production() -> None:
    def extension_names(settings: Settings) -> set[str]:
        return {getattr(e, "__name__", "") for e in build_schema(settings).extensions}

    settings = Settings()
    settings.app.env = "production"
    assert "DisableIntrospection" in extension_names(settings)
    settings.graphql.introspection = True
    assert "DisableIntrospection" not in extension_names(settings)


# --------------------------------------------------------------------------- over WebSocket


async def test_a_subscription_over_the_limits_gets_an_error_and_no_stream(
    app: Starlette, server_url: str
) -> None:
    token = await token_for(app, await make_user())
    deep = (
        "project { tasks { edges { node { project { tasks { edges { node { project { owner { roles { name } } } }"
        " } } } } } } } }"
    )
    document = (
        'subscription { projectEvents(projectId: "UHJvamVjdDox") { ...E } } fragment E on ProjectEvent { '
        + deep
    )
    ws = await (await GraphQLWS.open(server_url, token)).acked()
    try:
        await ws.subscribe("1", document)
        message = await ws.receive()
    finally:
        await ws.close()
    assert message["type"] == "error" and message["id"] == "1"
    assert message["payload"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"
