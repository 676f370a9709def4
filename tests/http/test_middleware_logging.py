from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from aicm.config import LoggingConfig
from aicm.http.middleware.access_log import AccessLogMiddleware
from aicm.http.middleware.request_id import RequestIdMiddleware
from aicm.logs.redaction import REDACTED
from aicm.logs.setup import UVICORN_LOGGERS, configure_logging

REQUEST_FIELDS = (
    "timestamp",
    "level",
    "event",
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "ip",
)
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJVc2VyOjEifQ.c2lnbmF0dXJl"


@pytest.fixture(autouse=True)
def log_stream() -> Iterator[io.StringIO]:
    """configure_logging into a buffer; afterwards remove its handlers and restore the uvicorn loggers."""
    root = logging.getLogger()
    level = root.level
    uvicorn = {name: logging.getLogger(name) for name in UVICORN_LOGGERS}
    saved = {name: (lg.handlers[:], lg.level, lg.propagate) for name, lg in uvicorn.items()}
    buffer = io.StringIO()
    configure_logging(LoggingConfig(), stream=buffer)
    yield buffer
    for handler in [h for h in root.handlers if getattr(h, "_aicm_handler", False)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    for name, logger in uvicorn.items():
        logger.handlers[:], logger.level, logger.propagate = saved[name]


def log_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    """Every line parsed as JSON; the test client's own ``httpx`` lines are left out, and so are the session
    app's task runner's (``task_finished`` of an earlier test's task may land meanwhile)."""
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    return [line for line in lines if line["logger"] not in ("httpx", "aicm.runner")]


def access_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    lines = [line for line in log_lines(buffer) if line["event"] == "http_request"]
    assert all(line["logger"] == "aicm.access" for line in lines)
    return lines


async def echo(request: Request) -> JSONResponse:
    logging.getLogger("tests.inner").info(
        "handled", extra={"event": "inner", "headers": dict(request.headers)}
    )
    return JSONResponse({"request_id": request.state.request_id})


async def sign_in(request: Request) -> PlainTextResponse:
    request.state.user_id = "VXNlcjox"  # what the GraphQL context does once it knows the viewer
    request.state.client_ip = "203.0.113.7"  # what a proxy-aware middleware would set
    return PlainTextResponse("ok")


async def unavailable(request: Request) -> PlainTextResponse:
    return PlainTextResponse("later", status_code=503)


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("database down, password=hunter2")


async def own_header(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok", headers={"X-Request-ID": "from-the-app"})


def make_app(**access_options: Any) -> Starlette:
    routes = [
        Route("/echo", echo),
        Route("/sign-in", sign_in, methods=["POST"]),
        Route("/unavailable", unavailable),
        Route("/boom", boom),
        Route("/own-header", own_header),
        Route("/health", lambda request: PlainTextResponse("healthy")),
    ]
    middleware = [Middleware(RequestIdMiddleware), Middleware(AccessLogMiddleware, **access_options)]
    return Starlette(routes=routes, middleware=middleware)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False, client=("192.0.2.10", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def test_every_line_is_json_and_request_lines_have_the_contract_fields(
    client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    # when
    await client.get("/echo")
    await client.post("/sign-in")
    await client.get("/missing")
    # then
    lines = log_lines(log_stream)  # json.loads on every line
    requests = access_lines(log_stream)
    assert len(requests) == 3
    for line in requests:
        assert set(REQUEST_FIELDS) <= set(line)
        assert "user_id" in line
        assert isinstance(line["duration_ms"], float)
        assert round(line["duration_ms"], 2) == line["duration_ms"]
    assert [(r["method"], r["path"], r["status"]) for r in requests] == [
        ("GET", "/echo", 200),
        ("POST", "/sign-in", 200),
        ("GET", "/missing", 404),
    ]
    assert len(lines) == 4  # the three requests and the handler's own line


async def test_sane_request_id_is_kept_echoed_and_on_every_line(
    client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    # when
    response = await client.get("/echo", headers={"X-Request-ID": "edge-42.a_b-C"})
    # then
    assert response.headers["X-Request-ID"] == "edge-42.a_b-C"
    assert response.json() == {"request_id": "edge-42.a_b-C"}
    inner, access = log_lines(log_stream)
    assert inner["event"] == "inner"
    assert inner["request_id"] == access["request_id"] == "edge-42.a_b-C"
    assert inner["ip"] == access["ip"] == "192.0.2.10"


@pytest.mark.parametrize("incoming", ["has spaces", "x" * 500, "", "semi;colon", "../etc/passwd", "a" * 129])
async def test_insane_request_id_is_replaced(
    client: httpx.AsyncClient, log_stream: io.StringIO, incoming: str
) -> None:
    # when
    response = await client.get("/echo", headers={"X-Request-ID": incoming})
    # then
    generated = response.headers["X-Request-ID"]
    assert GENERATED_ID.match(generated)
    assert response.json() == {"request_id": generated}
    assert access_lines(log_stream)[0]["request_id"] == generated


async def test_missing_request_id_is_generated_per_request(client: httpx.AsyncClient) -> None:
    first = (await client.get("/echo")).headers["X-Request-ID"]
    second = (await client.get("/echo")).headers["X-Request-ID"]
    assert GENERATED_ID.match(first)
    assert GENERATED_ID.match(second)
    assert first != second


async def test_the_apps_own_request_id_header_is_replaced_not_doubled(client: httpx.AsyncClient) -> None:
    response = await client.get("/own-header", headers={"X-Request-ID": "mine"})
    assert response.headers.get_list("X-Request-ID") == ["mine"]


async def test_user_id_and_client_ip_come_from_request_state(
    client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    await client.post("/sign-in")
    [line] = access_lines(log_stream)
    assert (line["user_id"], line["ip"]) == ("VXNlcjox", "203.0.113.7")


async def test_level_follows_status(client: httpx.AsyncClient, log_stream: io.StringIO) -> None:
    # when
    await client.get("/echo")
    await client.get("/missing")
    await client.get("/unavailable")
    # then
    lines = access_lines(log_stream)
    assert [(line["status"], line["level"]) for line in lines] == [
        (200, "info"),
        (404, "warning"),
        (503, "error"),
    ]
    assert lines[2]["error"] == "Service Unavailable"


async def test_a_raising_app_is_logged_as_500_with_the_error_and_reraised(
    client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    # when
    response = await client.get("/boom")
    # then
    assert response.status_code == 500  # Starlette's ServerErrorMiddleware answered after the re-raise
    [line] = access_lines(log_stream)
    assert (line["status"], line["level"], line["path"]) == (500, "error", "/boom")
    assert line["error"] == f"RuntimeError: database down, password={REDACTED}"
    assert "hunter2" not in log_stream.getvalue()
    assert 'status":5' in log_stream.getvalue()


async def test_query_strings_and_credentials_never_reach_the_log(
    client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    # when
    await client.get(
        "/echo?token=qs-secret&password=qs-pass",
        headers={
            "Authorization": f"Bearer {JWT}",
            "Cookie": "session=cookie-secret",
            "X-Api-Key": "k-secret",
        },
    )
    # then
    output = log_stream.getvalue()
    for secret in ("qs-secret", "qs-pass", JWT, "cookie-secret", "k-secret"):
        assert secret not in output
    inner, access = log_lines(log_stream)
    assert access["path"] == "/echo"
    assert inner["headers"]["authorization"] == REDACTED
    assert inner["headers"]["host"] == "testserver"


async def test_excluded_paths_are_not_logged(log_stream: io.StringIO) -> None:
    # given
    transport = httpx.ASGITransport(app=make_app(exclude_paths={"/health"}))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        # when
        health = await http.get("/health")
        await http.get("/echo")
    # then
    assert GENERATED_ID.match(health.headers["X-Request-ID"])
    assert [line["path"] for line in access_lines(log_stream)] == ["/echo"]


async def test_websocket_gets_a_request_id_and_lifespan_passes_through(log_stream: io.StringIO) -> None:
    # given
    seen: list[dict[str, Any]] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)
        if scope["type"] == "websocket":
            logging.getLogger("tests.inner").info("connected")
            await send({"type": "websocket.accept"})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    app = RequestIdMiddleware(AccessLogMiddleware(inner))
    websocket = {"type": "websocket", "path": "/graphql", "headers": [(b"x-request-id", b"ws-1")]}
    # when
    await app(websocket, receive, send)
    await app({"type": "lifespan"}, receive, send)
    # then
    assert seen[0]["state"]["request_id"] == "ws-1"
    assert sent == [{"type": "websocket.accept", "headers": [(b"x-request-id", b"ws-1")]}]
    assert "state" not in seen[1]
    assert [(line["event"], line["request_id"]) for line in log_lines(log_stream)] == [("connected", "ws-1")]
