"""``server.read_timeout`` and ``max_header_bytes`` reach the connections of a real ``aicli-api serve``
(short limits, raw sockets on loopback), a client that goes away mid-body is logged as what it is, and
``write_timeout`` ends a response the client does not read (the protocol under uvicorn, in this process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from aicm.http.protocol import HTTPLimits
from tests.servers import TEST_JWT_SECRET, clean_env, free_port, serve

READ_TIMEOUT = 2.0
MAX_HEADER_BYTES = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    tmp = tmp_path_factory.mktemp("limits")
    config = tmp / "config.yaml"
    config.write_text(f"server:\n  read_timeout: {READ_TIMEOUT}s\n  max_header_bytes: {MAX_HEADER_BYTES}\n")
    env = clean_env(APP_ENV="test", DATABASE_URL=f"sqlite://{tmp / 'aicm.db'}", JWT_SECRET=TEST_JWT_SECRET)
    with serve(tmp, env, "--config", str(config)) as base:
        host, port = base.removeprefix("http://").split(":")
        yield host, int(port), next(tmp.glob("server-*.log"))


def connect(server: tuple[str, int, Path]) -> socket.socket:
    sock = socket.create_connection(server[:2], timeout=10)
    return sock


def read_all(sock: socket.socket, wait: float) -> bytes:
    """What the server sends until it closes the connection (bounded by ``wait``)."""
    sock.settimeout(wait)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        chunks.append(b"<still open>")
    return b"".join(chunks)


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body) from a kept-alive connection."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or pytest.fail(f"closed after {data!r}")
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
    while len(body) < length:
        body += sock.recv(65536) or pytest.fail(f"closed after {data!r}")
    return head + b"\r\n\r\n" + body


def log_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_connections_that_never_finish_their_headers_are_closed_with_408(
    server: tuple[str, int, Path],
) -> None:
    # given many clients that each send half a request and then nothing
    clients = [connect(server) for _ in range(100)]
    started = time.monotonic()
    for sock in clients:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    # then every one of them is answered 408 and closed once read_timeout has passed
    try:
        answers = [read_all(sock, wait=READ_TIMEOUT + 8) for sock in clients]
    finally:
        for sock in clients:
            sock.close()
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), {a[:40] for a in answers}
    assert all(not answer.endswith(b"<still open>") for answer in answers)
    assert READ_TIMEOUT - 0.5 <= time.monotonic() - started < READ_TIMEOUT + 8


def test_a_silent_connection_is_closed_too(server: tuple[str, int, Path]) -> None:
    with connect(server) as sock:
        assert read_all(sock, wait=READ_TIMEOUT + 8).startswith(b"HTTP/1.1 408 ")


def test_headers_larger_than_max_header_bytes_get_431(server: tuple[str, int, Path]) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n"
        )
        assert read_all(sock, wait=5).startswith(b"HTTP/1.1 431 ")
    with connect(server) as sock:  # just below the limit still works
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")


def test_a_kept_alive_connection_may_idle_longer_than_read_timeout(server: tuple[str, int, Path]) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(READ_TIMEOUT + 1)  # idle between requests: server.idle_timeout (120 s) applies
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")


def test_a_body_that_stops_arriving_is_cut_off_and_logged_as_a_client_disconnect(
    server: tuple[str, int, Path],
) -> None:
    body = json.dumps({"query": "{ __typename }"}).encode()
    head = (
        b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"X-Request-ID: slow-body-1\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with connect(server) as sock:
        sock.sendall(head + body[:5])
        assert read_all(sock, wait=READ_TIMEOUT + 8) == b""  # closed, nothing answered
    assert_logged_as_disconnect(server[2], "slow-body-1")


def test_a_client_that_hangs_up_mid_body_is_logged_as_499_without_a_traceback(
    server: tuple[str, int, Path],
) -> None:
    head = (
        b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"X-Request-ID: gone-mid-body-1\r\nContent-Length: 1000\r\n\r\n"
    )
    with connect(server) as sock:
        sock.sendall(head + b'{"query": "{ __typ')
        time.sleep(0.3)
    assert_logged_as_disconnect(server[2], "gone-mid-body-1")


def assert_logged_as_disconnect(log: Path, request_id: str) -> None:
    deadline = time.monotonic() + 10
    while not (lines := [r for r in log_records(log) if r.get("request_id") == request_id]):
        assert time.monotonic() < deadline, f"no log line for {request_id}"
        time.sleep(0.1)
    time.sleep(0.3)  # anything else the request logs
    lines = [r for r in log_records(log) if r.get("request_id") == request_id]
    assert [(r["event"], r["status"], r["level"]) for r in lines] == [("client_disconnected", 499, "info")]
    assert "stack" not in lines[0]
    assert "Traceback" not in log.read_text()


async def test_a_response_the_client_does_not_read_ends_after_write_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given a server (this protocol, write_timeout 1 s) whose app streams 64 MiB, and a client that reads none
    chunk = b"x" * 65536
    finished = asyncio.Event()

    async def app(scope: dict, receive: object, send: object) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        for _ in range(1024):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        finished.set()

    port = free_port()
    limits = HTTPLimits(read_timeout=30, write_timeout=1, max_header_bytes=8192)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, http=limits, lifespan="off", log_config=None)
    )
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.025)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        # when the client reads nothing, then the server gives up within seconds (not after 64 MiB)
        with caplog.at_level(logging.INFO, logger="aicm.http"):
            deadline = asyncio.get_running_loop().time() + 15
            while not any(r.event == "response_write_timeout" for r in caplog.records):
                assert asyncio.get_running_loop().time() < deadline, "the blocked write was never given up"
                await asyncio.sleep(0.1)
        received = 0
        sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(1 << 20):
                received += len(data)
        sock.close()
        assert received < 1024 * len(chunk)  # cut off: the client never got the whole body
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
