"""Hostile input: whatever a client sends, the server answers 4xx or a coded error, never a 500 or
``INTERNAL_SERVER_ERROR``, and stays healthy.

Hypothesis generates documents, variables, every root field's arguments (NUL, lone surrogates, unicode and
SQL-looking text in every string), deep, aliased and fragment-heavy queries, bodies, JSON and content types.
The number of examples is bounded (``AICM_HOSTILE_EXAMPLES``, default 60) and derandomized, so CI is stable.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from graphql import (
    GraphQLArgument,
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from aicm.config import RateLimitConfig
from aicm.ratelimit import MemoryLimiter, RateLimits
from tests.factories import make_user, token_for

EXAMPLES = int(os.environ.get("AICM_HOSTILE_EXAMPLES", "60"))
HOSTILE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
ALLOWED_CODES = {
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "NOT_FOUND",
    "BAD_USER_INPUT",
    "CONFLICT",
    "RATE_LIMITED",
    "QUERY_TOO_COMPLEX",
    "PERSISTED_QUERY_NOT_FOUND",
}

SQLISH = [
    "'; DROP TABLE users; --",
    "' OR '1'='1",
    '" OR ""="',
    "1; SELECT pg_sleep(10)",
    "admin'--",
    "%' AND 1=0 UNION SELECT password_hash FROM users --",
    "\\x00\\",
    "$1",
    "{{7*7}}",
    "<script>alert(1)</script>",
    "../../../../etc/passwd",
]
WEIRD = [
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "\u202e",
    "\ufeff",
    "\U0001f600" * 50,
    "é" * 300,
    "",
    " ",
    "\r\n\t",
]
hostile_text = st.one_of(
    st.sampled_from(SQLISH + WEIRD),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=()), max_size=20),
    st.text(max_size=5).map(lambda t: t + "\x00" + t),
    st.just("x" * 5000),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | hostile_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture
async def hostile(app: Starlette, db: None) -> AsyncIterator[httpx.AsyncClient]:
    """A client of its own address; the limiter runs with room for every example, then is restored."""
    runtime = app.state.runtime
    saved = runtime.rate_limits
    runtime.rate_limits = RateLimits(
        RateLimitConfig(
            requests_per_second=10_000,
            burst_size=10_000,
            auth_requests_per_minute=1e6,
            auth_burst_size=10_000,
        ),
        MemoryLimiter(),
    )
    transport = httpx.ASGITransport(app=app, client=("198.18.0.1", 40200))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http
            await assert_healthy(http)
    finally:
        runtime.rate_limits = saved


async def assert_healthy(http: httpx.AsyncClient) -> None:
    assert (await http.get("/health")).status_code == 200
    response = await http.post("/graphql", json={"query": "{ __typename me { id } }"})
    assert response.json() == {"data": {"__typename": "Query", "me": None}}


async def post_json(http: httpx.AsyncClient, body: object, **headers: str) -> httpx.Response:
    """JSON with \\u escapes, so lone surrogates and NUL travel as a client library would send them."""
    content = json.dumps(body)
    return await http.post(
        "/graphql", content=content, headers={"Content-Type": "application/json", **headers}
    )


def assert_handled(response: httpx.Response) -> dict[str, Any] | None:
    """4xx or a 200 whose errors all carry a contract code; never a 5xx or INTERNAL_SERVER_ERROR."""
    assert response.status_code < 500, response.text[:500]
    try:
        body = response.json()
    except ValueError:
        assert response.status_code >= 400, response.text[:200]
        return None
    if isinstance(body, dict):
        for error in body.get("errors") or []:
            code = (error.get("extensions") or {}).get("code")
            assert code in ALLOWED_CODES, error
    return body


# --------------------------------------------------------------------------- documents


names = st.sampled_from(
    [
        "me",
        "users",
        "projects",
        "roles",
        "permissions",
        "id",
        "name",
        "email",
        "edges",
        "node",
        "__typename",
        "__schema",
        "types",
        "fields",
        "tasks",
        "owner",
        "members",
        "x",
        "ofType",
    ]
)
arg_values = st.one_of(
    hostile_text.map(json.dumps),
    st.integers(-(2**40), 2**40).map(str),
    st.sampled_from(["true", "null", "[]", "{}", "$v", "SYSTEM", "1.5e400", "9" * 400]),
)


@st.composite
def documents(draw: st.DrawFn) -> str:
    def selection(depth: int) -> str:
        parts = []
        for _ in range(draw(st.integers(1, 3))):
            name = draw(names)
            alias = (
                f"{draw(st.sampled_from(['a', 'b', 'zz']))}{draw(st.integers(0, 99))}: "
                if draw(st.booleans())
                else ""
            )
            args = ""
            if draw(st.booleans()):
                args = f"({draw(names)}: {draw(arg_values)})"
            sub = ""
            if depth > 0 and draw(st.booleans()):
                sub = " { " + selection(depth - 1) + " }"
            spread = " ...F" if draw(st.integers(0, 5)) == 0 else ""
            parts.append(f"{alias}{name}{args}{sub}{spread}")
        return " ".join(parts)

    kind = draw(st.sampled_from(["query", "mutation", "subscription", ""]))
    body = selection(draw(st.integers(0, 25)))
    fragment = f" fragment F on {draw(st.sampled_from(['Query', 'User', 'Nope']))} {{ {selection(3)} }}"
    return f"{kind} {{ {body} }}" + (fragment if "...F" in body or draw(st.booleans()) else "")


@HOSTILE
@given(
    document=st.one_of(documents(), st.text(max_size=300)),
    variables=st.none() | st.dictionaries(st.text(max_size=5), json_values, max_size=3),
)
async def test_generated_documents_and_variables(
    hostile: httpx.AsyncClient, document: str, variables: dict[str, Any] | None
) -> None:
    body = {"query": document, "variables": variables, "operationName": None}
    assert_handled(await post_json(hostile, body))


@HOSTILE
@given(depth=st.integers(1, 400), aliases=st.integers(0, 300), spreads=st.integers(0, 200))
async def test_deep_aliased_and_fragment_heavy_queries(
    hostile: httpx.AsyncClient, depth: int, aliases: int, spreads: int
) -> None:
    deep = "{ me " * depth + "{ id }" + " }" * depth
    aliased = "{ " + " ".join(f"a{i}: __typename" for i in range(aliases)) + " }"
    chain = " ".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(spreads))
    fanned = "{ ...F0 } " + chain + f" fragment F{spreads} on Query {{ __typename }}"
    cyclic = "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }"
    for document in (deep, aliased, fanned, cyclic):
        result = assert_handled(await post_json(hostile, {"query": document}))
        assert result is not None


# --------------------------------------------------------------------------- every string argument of the schema


def _schema(app: Starlette) -> GraphQLSchema:
    endpoint = next(r.endpoint for r in app.routes if getattr(r, "path", "") == "/graphql")
    return endpoint.schema._schema


def _value(draw: st.DrawFn, type_: GraphQLInputType, depth: int = 0) -> Any:
    if isinstance(type_, GraphQLNonNull):
        return _value(draw, type_.of_type, depth)
    if draw(st.integers(0, 9)) == 0 and depth > 0:
        return None
    if isinstance(type_, GraphQLList):
        return [_value(draw, type_.of_type, depth + 1) for _ in range(draw(st.integers(0, 2)))]
    if isinstance(type_, GraphQLInputObjectType):
        return {name: _value(draw, field.type, depth + 1) for name, field in type_.fields.items()}
    if isinstance(type_, GraphQLEnumType):
        return draw(st.sampled_from([*type_.values, "NOPE"]))
    assert isinstance(type_, GraphQLScalarType)
    if type_.name in ("String", "ID"):
        return draw(hostile_text)
    if type_.name == "Int":
        return draw(st.integers(-(2**33), 2**33) | st.sampled_from([0, 1, 20, 100, -1]))
    if type_.name == "Float":
        return draw(st.floats(allow_nan=False, allow_infinity=False))
    if type_.name == "Boolean":
        return draw(st.booleans())
    return draw(json_values)


def _operation(kind: str, name: str, field: GraphQLField) -> str:
    definitions = ", ".join(f"${a}: {arg.type}" for a, arg in field.args.items())
    arguments = ", ".join(f"{a}: ${a}" for a in field.args)
    selection = " { __typename }" if not _is_leaf(field) else ""
    return f"{kind}({definitions}) {{ {name}({arguments}){selection} }}"


def _is_leaf(field: GraphQLField) -> bool:
    type_ = field.type
    while isinstance(type_, GraphQLNonNull | GraphQLList):
        type_ = type_.of_type
    return not isinstance(type_, GraphQLObjectType) and not hasattr(type_, "fields")


def _has_string(argument: GraphQLArgument) -> bool:
    return "String" in str(argument.type) or "ID" in str(argument.type) or "Input" in str(argument.type)


@HOSTILE
@given(data=st.data())
async def test_hostile_strings_in_every_argument_of_every_root_field(
    hostile: httpx.AsyncClient, app: Starlette, data: st.DataObject
) -> None:
    schema = _schema(app)
    token = await token_for(
        app, await make_user(f"hostile-{uuid.uuid4().hex[:8]}@example.com", roles=("admin",))
    )
    roots = [("query", schema.query_type), ("mutation", schema.mutation_type)]
    fields = [
        (kind, name, field)
        for kind, root in roots
        if root
        for name, field in root.fields.items()
        if field.args
    ]
    kind, name, field = data.draw(st.sampled_from(fields), label="field")
    if name in ("revokeAllSessions", "logout"):  # they would end the session the other examples use
        return
    variables = {a: _value(data.draw, arg.type) for a, arg in field.args.items()}
    # Known bug, tested on its own below: login with an email over 254 characters is a 500.
    assume(name != "login" or len(str((variables.get("input") or {}).get("email") or "")) <= 254)
    document = _operation(kind, name, field)
    response = await post_json(
        hostile, {"query": document, "variables": variables}, Authorization=f"Bearer {token}"
    )
    body = assert_handled(response)
    if (
        "\x00" in json.dumps(variables, ensure_ascii=False)
        and body
        and any(map(_has_string, field.args.values()))
    ):
        assert body.get("errors"), body
        assert body["errors"][0]["extensions"]["code"] in ("BAD_USER_INPUT", "QUERY_TOO_COMPLEX"), body


def _plain(type_: GraphQLInputType, text: str) -> Any:
    """A value of ``type_`` with ``text`` in every string, plausible values elsewhere."""
    if isinstance(type_, GraphQLNonNull):
        return _plain(type_.of_type, text)
    if isinstance(type_, GraphQLList):
        return [_plain(type_.of_type, text)]
    if isinstance(type_, GraphQLInputObjectType):
        return {name: _plain(field.type, text) for name, field in type_.fields.items()}
    if isinstance(type_, GraphQLEnumType):
        return next(iter(type_.values))
    assert isinstance(type_, GraphQLScalarType)
    return {"String": text, "ID": text, "Int": 1, "Float": 1.0, "Boolean": False}.get(type_.name, {"k": text})


@pytest.mark.parametrize("text", SQLISH + WEIRD + ["x" * 5000], ids=lambda t: repr(t[:12]))
async def test_each_hostile_string_in_every_string_argument(
    hostile: httpx.AsyncClient, app: Starlette, text: str
) -> None:
    schema = _schema(app)
    token = await token_for(
        app, await make_user(f"every-{uuid.uuid4().hex[:8]}@example.com", roles=("admin",))
    )
    for kind, root in (("query", schema.query_type), ("mutation", schema.mutation_type)):
        assert root is not None
        for name, field in root.fields.items():
            if not field.args or name in ("revokeAllSessions", "logout"):
                continue
            if name == "login" and len(text) > 254:  # the known bug tested on its own below
                continue
            variables = {a: _plain(arg.type, text) for a, arg in field.args.items()}
            body = {"query": _operation(kind, name, field), "variables": variables}
            result = assert_handled(await post_json(hostile, body, Authorization=f"Bearer {token}"))
            if ("\x00" in text or "\ud800" in text or "\udfff" in text) and any(
                map(_has_string, field.args.values())
            ):
                assert result is not None and result["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", (
                    name,
                    result,
                )


# --------------------------------------------------------------------------- bodies, JSON, content types


@HOSTILE
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.sampled_from(
            [
                b"",
                b"{",
                b"[" * 5000 + b"]" * 5000,
                b'{"query": 1}',
                b'{"query": "{}", "variables": "x"}',
                b'{"query": "{ me { id } }", "extensions": []}',
                b'{"query": "\\ud800"}',
                b"\xff\xfe{}",
                b'{"query": "{ __typename }", "operationName": {"a": 1}}',
                b"9" * 5000,
                b"NaN",
            ]
        ),
    ),
    content_type=st.sampled_from(
        [
            "application/json",
            "application/json; charset=latin-1",
            "text/plain",
            "application/graphql",
            "multipart/form-data",
            "",
            "application/json\x00",
        ]
    ),
)
async def test_malformed_bodies_and_content_types(
    hostile: httpx.AsyncClient, raw: bytes, content_type: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    try:
        response = await hostile.post("/graphql", content=raw, headers=headers)
    except httpx.LocalProtocolError:  # a header httpx itself refuses to send
        return
    assert_handled(response)


@HOSTILE
@given(
    params=st.dictionaries(
        st.sampled_from(["query", "variables", "operationName", "extensions", "x"]), hostile_text, max_size=4
    ),
    accept=st.sampled_from(["*/*", "text/html", "application/json", ""]),
)
async def test_hostile_get_requests(hostile: httpx.AsyncClient, params: dict[str, str], accept: str) -> None:
    params = {k: v.replace("\ud800", "").replace("\udfff", "") for k, v in params.items()}
    response = await hostile.get("/graphql", params=params, headers={"Accept": accept} if accept else {})
    if response.headers.get("content-type", "").startswith("text/html"):
        assert response.status_code == 200
        return
    assert_handled(response)


@pytest.mark.parametrize("size", [1_048_575, 1_048_577, 5_000_000])
async def test_huge_bodies(hostile: httpx.AsyncClient, size: int) -> None:
    head = b'{"query": "{ __typename }", "variables": {"s": "'
    body = head + b"a" * max(0, size - len(head) - 3) + b'"}}'
    response = await hostile.post("/graphql", content=body, headers={"Content-Type": "application/json"})
    assert_handled(response)
    assert response.status_code == (200 if len(body) <= 1_048_576 else 413)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"])
async def test_other_methods(hostile: httpx.AsyncClient, method: str) -> None:
    response = await hostile.request(method, "/graphql", json={"query": "mutation { logout }"})
    assert 400 <= response.status_code < 500


async def test_login_with_an_overlong_email_is_not_an_internal_error(hostile: httpx.AsyncClient) -> None:
    variables = {"input": {"email": "x" * 300 + "@example.com", "password": "whatever-password"}}
    document = "mutation($input: LoginInput!) { login(input: $input) { accessToken } }"
    body = assert_handled(await post_json(hostile, {"query": document, "variables": variables}))
    assert body is not None and body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
