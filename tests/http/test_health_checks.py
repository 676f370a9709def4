"""``/health`` against dependencies that really fail: a Redis the test owns and stops (or freezes), and a
PostgreSQL database reached through a proxy the test cuts (or freezes). Real ``aicli-api serve`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from aicm.runner.sandbox import detect
from tests.conftest import REQUIRE_SERVICES, require_services
from tests.servers import TEST_JWT_SECRET, clean_env, free_port, serve
from tests.subscriptions.conftest import OwnedRedis

QUICKLY = 3.0  # seconds: every check has a 2 s timeout and they run side by side


async def health(base: str, path: str = "/health") -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        response = await http.get(path)
    return response.status_code, response.json(), time.monotonic() - started


async def until_status(base: str, status: str, wait: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + wait
    while True:
        _, body, _ = await health(base)
        if body["status"] == status:
            return body
        assert time.monotonic() < deadline, f"health stayed {body}"
        await asyncio.sleep(0.1)


# --- Redis ---------------------------------------------------------------------------------------


@pytest.fixture
async def owned_redis() -> AsyncIterator[OwnedRedis]:
    if shutil.which("redis-server") is None:
        if REQUIRE_SERVICES:
            pytest.fail("redis-server is not on PATH (AICM_REQUIRE_SERVICES=1)")
        pytest.skip("redis-server is not on PATH")
    server = OwnedRedis(free_port())
    await server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError, AssertionError):
            os.kill(server.pid, signal.SIGCONT)
        await server.stop()


@pytest.fixture
def redis_backed(tmp_path: Path, owned_redis: OwnedRedis) -> Iterator[str]:
    """A server on its own SQLite database and the owned Redis (sessions, broker, login throttle)."""
    env = clean_env(
        DATABASE_URL=f"sqlite://{tmp_path / 'aicm.db'}",
        REDIS_URL=owned_redis.url,
        JWT_SECRET=TEST_JWT_SECRET,
        APP_ENV="test",
    )
    with serve(tmp_path, env) as base:
        yield base


async def test_redis_down_degrades_health_and_its_return_heals_it(
    redis_backed: str, owned_redis: OwnedRedis
) -> None:
    # given
    status, body, _ = await health(redis_backed)
    assert (status, body["status"]) == (200, "healthy")
    assert body["services"] == {
        "database": "healthy",
        "redis": "healthy",
        "auth": "healthy",
        "runner": "embedded",
        "sandbox": detect("auto").mode,
    }
    # when Redis stops
    await owned_redis.stop()
    status, body, took = await health(redis_backed)
    # then: still serving (200), degraded, and auth (its session store is Redis) unhealthy
    assert (status, body["status"]) == (200, "degraded"), body
    assert body["services"] == {
        "database": "healthy",
        "redis": "unhealthy",
        "auth": "unhealthy",
        "runner": "embedded",
        "sandbox": detect("auto").mode,
    }
    assert took < QUICKLY
    status, detailed, _ = await health(redis_backed, "/health/detailed")
    assert (status, detailed["status"], detailed["broker"]) == (200, "degraded", "redis")
    assert detailed["latency_ms"]["database"] >= 0 and detailed["latency_ms"]["redis"] >= 0
    # and when it comes back, so does health
    await owned_redis.start()
    body = await until_status(redis_backed, "healthy")
    assert body["services"]["redis"] == body["services"]["auth"] == "healthy"


async def test_a_hung_redis_answers_degraded_within_the_check_timeout(
    redis_backed: str, owned_redis: OwnedRedis
) -> None:
    # given
    assert (await health(redis_backed))[1]["status"] == "healthy"
    # when Redis stops answering (the process is frozen: connections stay open, nothing comes back)
    os.kill(owned_redis.pid, signal.SIGSTOP)
    try:
        status, body, took = await health(redis_backed)
    finally:
        os.kill(owned_redis.pid, signal.SIGCONT)
    # then
    assert (status, body["status"], body["services"]["redis"]) == (200, "degraded", "unhealthy"), body
    assert took < QUICKLY
    await until_status(redis_backed, "healthy")


# --- PostgreSQL ----------------------------------------------------------------------------------


class TcpProxy:
    """A loopback TCP relay on its own thread and event loop: ``freeze()`` stops relaying (a hung peer),
    ``cut()`` closes every connection and refuses new ones (a server gone)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None

    def __enter__(self) -> TcpProxy:
        self.thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def freeze(self) -> None:
        self._call(self._set_flowing(False))

    def cut(self) -> None:
        self._call(self._cut())

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        (self._flowing.set if flowing else self._flowing.clear)()

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        await self._set_flowing(True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, upstream_writer))
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer), return_exceptions=True
        )
        for each in (writer, upstream_writer):
            self._writers.discard(each)
            each.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        while data := await reader.read(65536):
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()
        writer.close()


@pytest.fixture
async def scratch_database() -> AsyncIterator[str]:
    """A PostgreSQL database of this test's own (dropped afterwards, whatever state it was left in)."""
    database_url, _ = require_services()
    name = f"aicm_health_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(database_url)
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def proxied_server(tmp_path: Path, scratch_database: str) -> Iterator[tuple[str, TcpProxy]]:
    """A server (embedded broker) whose PostgreSQL connections all go through a proxy the test controls."""
    parts = urlsplit(scratch_database)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        url = urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{proxy.port}"))
        env = clean_env(DATABASE_URL=url, JWT_SECRET=TEST_JWT_SECRET, APP_ENV="test")
        with serve(tmp_path, env) as base:
            yield base, proxy
            proxy.cut()  # the server then stops at once instead of waiting on frozen connections


async def test_database_down_answers_unhealthy_503_quickly(proxied_server: tuple[str, TcpProxy]) -> None:
    # given
    base, proxy = proxied_server
    status, body, _ = await health(base)
    assert (status, body["services"]) == (
        200,
        {
            "database": "healthy",
            "redis": "embedded",
            "auth": "healthy",
            "runner": "embedded",
            "sandbox": detect("auto").mode,
        },
    )
    # when the database becomes unreachable
    proxy.cut()
    status, body, took = await health(base)
    # then
    assert (status, body["status"], body["services"]["database"]) == (503, "unhealthy", "unhealthy"), body
    assert took < QUICKLY
    status, detailed, _ = await health(base, "/health/detailed")
    assert (status, detailed["status"], detailed["database"]["pool"]) == (503, "unhealthy", None)


async def test_a_hung_database_answers_unhealthy_503_within_the_check_timeout(
    proxied_server: tuple[str, TcpProxy],
) -> None:
    # given
    base, proxy = proxied_server
    assert (await health(base))[0] == 200
    # when the database stops answering
    proxy.freeze()
    status, body, took = await health(base)
    # then
    assert (status, body["status"], body["services"]["database"]) == (503, "unhealthy", "unhealthy"), body
    assert took < QUICKLY
    # and a scrape is not held up either: the ping gauge says "no measurement"
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        scraped = await http.get("/metrics")
    assert scraped.status_code == 200 and time.monotonic() - started < QUICKLY
    assert "database_ping_duration_seconds NaN" in scraped.text
