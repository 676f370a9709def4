"""What the scenarios run on: bench servers on loopback, their config files, fresh PostgreSQL databases, a
Redis database number of the bench's own, and readings of a server process (/proc)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.net import HTTPConnection, build_request, fetch_json, graphql_request

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PASSWORD = "bench-password-Correct-Horse-42"
JWT_SECRET = "bench-jwt-secret-that-is-long-enough-0123456789abcdef"
ENCRYPTION_KEY = "bench-encryption-key-of-32-characters-or-more"  # production requires one
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

DEMO_AGENT = [
    sys.executable,
    "-m",
    "aicm.runner.demo_agent",
    "-p",
    "{prompt}",
    "--output-format",
    "stream-json",
    "--verbose",
]


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by the servers); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1_048_576
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that changes which config the server loads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AICM_", "AICLI_"))}
    for key in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "APP_ENV", "LOG_LEVEL"):
        env.pop(key, None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if "BENCH_GC" in os.environ:  # profiling experiments only (bench/server.py _gc_experiment)
        env["BENCH_GC"] = os.environ["BENCH_GC"]
    return env | extra


# --- backends --------------------------------------------------------------------------------------------


@dataclass
class Backend:
    """``embedded``: SQLite + the in-process broker; ``services``: PostgreSQL + Redis."""

    name: str
    database_url: str
    redis_url: str | None = None

    @property
    def label(self) -> str:
        return "SQLite + in-process broker" if self.redis_url is None else "PostgreSQL + Redis"


def write_config(
    workdir: Path, backend: Backend, *, max_concurrent: int = 1, name: str = "config.yaml"
) -> Path:
    config: dict[str, Any] = {
        "app": {"env": "production", "data_dir": str(workdir / "data")},
        "database": {"url": backend.database_url, "auto_migrate": True, "ssl_mode": "disable"},
        "jwt": {"secret": JWT_SECRET},
        "logging": {"level": "info", "format": "json", "output": "stdout"},
        # One client IP sends everything here: the per-client limiter would measure itself.
        "security": {"rate_limit": {"enabled": False}, "encryption_key": ENCRYPTION_KEY},
        "runner": {
            "command": agent_command(),
            "workspace_root": str(workdir / "workspaces"),
            "max_concurrent": max_concurrent,
            "env": {"AICM_DEMO_DELAY": "0"},
            # The demo agent without Claude's flags: given a permission prompt tool it would stop at its
            # first edit to ask for approval (CONTRACT §10), which is not what these scenarios measure.
            "agent_cli": "generic",
        },
    }
    if backend.redis_url:
        config["redis"] = {"url": backend.redis_url}
    if os.environ.get("BENCH_WS_COMPRESSION") == "off":  # A/B: WebSockets without permessage-deflate
        config["server"] = {"ws_compression": False}
    path = workdir / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", HOST, "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
        check=True,
        capture_output=True,
        timeout=60,
    )


def services_problem(redis_url: str) -> str | None:
    """Why the PostgreSQL + Redis backend cannot run here, or None."""
    try:
        psql("SELECT 1")
    except (OSError, subprocess.SubprocessError) as exc:
        return f"PostgreSQL at {HOST}:5432 (user postgres) unreachable: {exc}"
    try:
        import redis

        redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
    except Exception as exc:
        return f"Redis at {redis_url} unreachable: {exc}"
    return None


@contextlib.contextmanager
def fresh_database() -> Any:
    """A new PostgreSQL database for one scenario, dropped afterwards."""
    name = f"aicm_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    psql(f"CREATE DATABASE {name}")
    try:
        yield f"postgres://postgres@{HOST}:5432/{name}"
    finally:
        with contextlib.suppress(Exception):
            psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def clear_redis(redis_url: str) -> int:
    """Delete the app's keys (``aicm:*``) in the bench's own Redis database; never FLUSHALL."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match="aicm:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        return len(keys)
    finally:
        client.close()


# --- server processes ----------------------------------------------------------------------------------


SERVER_CORES: set[int] | None = None  # set by ``pin_client``: the cores the servers (and their agents) run on


def pin_client() -> dict[str, Any]:
    """Pin this process (the load generator) to the last core and the servers started later to the others,
    so that the figures say what the server does (issue 17); nothing to pin on one core."""
    global SERVER_CORES
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return {"client_cores": cores, "server_cores": cores}
    os.sched_setaffinity(0, {cores[-1]})
    SERVER_CORES = set(cores[:-1])
    return {"client_cores": [cores[-1]], "server_cores": cores[:-1]}


def agent_command() -> list[str]:
    """The demo agent, free of the server's core when pinned: it stands for the agent's own machine time,
    like the load generator, not for what the server does (at 20,000 lines/s it takes ~3/4 of a core)."""
    if SERVER_CORES is None:
        return DEMO_AGENT
    every = ",".join(map(str, sorted(os.sched_getaffinity(0) | SERVER_CORES)))
    return ["taskset", "-c", every, *DEMO_AGENT]


def client_cpu_seconds() -> float:
    """CPU time of the load generator (this process, all threads)."""
    return time.process_time()


class Server:
    """One ``python -m bench.server`` process on a loopback port (on ``SERVER_CORES`` when pinned)."""

    def __init__(self, workdir: Path, config: Path, label: str) -> None:
        self.workdir, self.config, self.label = workdir, config, label
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"server-{label}-{self.port}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60.0) -> Server:
        log = self.log_path.open("wb")
        cores = SERVER_CORES
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.server", "--config", str(self.config), "--port", str(self.port)],
            cwd=self.workdir,
            env=clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bench server exited: {self.tail()}")
            with contextlib.suppress(OSError, asyncio.TimeoutError, Exception):
                status, _ = await fetch_json(HOST, self.port, build_request("GET", "/health", HOST))
                if status in (200, 503):
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"bench server did not answer /health in {timeout:.0f} s: {self.tail()}")
            await asyncio.sleep(0.2)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    # /proc readings
    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    # bench routes
    async def get(self, path: str) -> Any:
        status, body = await fetch_json(HOST, self.port, build_request("GET", path, HOST))
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body}")
        return body

    async def post(self, path: str, payload: Any = None) -> Any:
        body = json.dumps(payload if payload is not None else {}).encode()
        status, answer = await fetch_json(HOST, self.port, build_request("POST", path, HOST, body))
        if status != 200:
            raise RuntimeError(f"POST {path}: {status} {answer}")
        return answer

    async def graphql(
        self, query: str, variables: dict[str, Any] | None = None, token: str | None = None
    ) -> Any:
        status, body = await fetch_json(HOST, self.port, graphql_request(HOST, query, variables, token))
        if status != 200 or body.get("errors"):
            raise RuntimeError(f"GraphQL failed ({status}): {json.dumps(body)[:500]}")
        return body["data"]

    async def login(self, email: str) -> str:
        data = await self.graphql(
            "mutation($e: String!, $p: String!) { login(input: {email: $e, password: $p}) { accessToken } }",
            {"e": email, "p": PASSWORD},
        )
        return data["login"]["accessToken"]

    async def wait_subscribers(self, expected: int, timeout: float) -> int:
        """Poll the broker's open-subscription count until it reaches ``expected``; returns the last count."""
        deadline = time.monotonic() + timeout
        while True:
            count = (await self.get("/bench/stats"))["subscribers"]
            if count >= expected or time.monotonic() > deadline:
                return count
            await asyncio.sleep(0.1)


@dataclass
class Seeded:
    projects: list[str]
    owner: str
    viewer: str
    admin: str


async def seed(server: Server, *, projects: int = 60, tasks: int = 60) -> Seeded:
    answer = await server.post(
        "/bench/seed", {"password": PASSWORD, "projects": projects, "tasks": tasks, "audit": projects}
    )
    owner = await server.login("owner@bench.example.com")
    viewer = await server.login("viewer@bench.example.com")
    admin = await server.login("admin@bench.example.com")
    return Seeded(answer["projects"], owner, viewer, admin)


@contextlib.asynccontextmanager
async def running(servers: list[Server]) -> AsyncIterator[list[Server]]:
    try:
        for server in servers:
            await server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


async def keepalive_pool(server: Server, size: int) -> list[HTTPConnection]:
    return [await HTTPConnection.open(HOST, server.port) for _ in range(size)]
