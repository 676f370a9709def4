"""Fixtures for the broker tests: the shared test Redis (``AICM_TEST_REDIS_URL``) and a redis-server of our own.

Redis pub/sub channels are server-wide (not per db), and other test runs share the server: every test channel
starts with a random ``prefix`` so nothing here sees or touches anybody else's traffic.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
from asyncio.subprocess import DEVNULL
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.conftest import REQUIRE_SERVICES, require_services


@pytest.fixture
def prefix() -> str:
    return f"aicm-test:{secrets.token_hex(6)}:"


class OwnedRedis:
    """A throwaway redis-server on a free loopback port that a test may stop and start again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "the server is not running"
        return self._process.pid

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            *[
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=DEVNULL,
            stderr=DEVNULL,
        )
        client = Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            for _ in range(100):  # at most ~5 s
                try:
                    await client.ping()
                    return
                except (OSError, RedisError):  # not listening yet, or still loading
                    pass
                await asyncio.sleep(0.05)
            raise RuntimeError(f"redis-server on port {self.port} did not come up")
        finally:
            await client.aclose()

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        async with asyncio.timeout(5):
            await process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
async def owned_redis() -> AsyncIterator[OwnedRedis]:
    require_services()
    if shutil.which("redis-server") is None:
        message = "redis-server is not on PATH"
        if REQUIRE_SERVICES:
            pytest.fail(message + " (AICM_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    server = OwnedRedis(_free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
