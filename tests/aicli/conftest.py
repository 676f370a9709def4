"""A real ``aicli-api serve`` (demo agent, 3-second access tokens) and the real ``aicli`` console script.

The server runs on the embedded default (SQLite, in-process broker) and, with AICM_TEST_DATABASE_URL and
AICM_TEST_REDIS_URL, on PostgreSQL and Redis. Access tokens live 3 s, so every test that takes longer than
that goes through transparent refreshes, and the server closes followers' WebSockets when their token expires.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import DEMO_AGENT, EMBEDDED, SERVICES, require_services
from tests.servers import TEST_JWT_SECRET, clean_env, serve

AICLI = str(Path(sys.executable).parent / "aicli")
PASSWORD = "a-long-passphrase-for-aicli"
ACCESS_TOKEN_SECONDS = 3
_emails = itertools.count(1)


@dataclass
class Server:
    url: str
    log: Path | None = None  # the server's output (tests.servers.serve writes it)

    def websockets_accepted(self) -> int:
        """How many WebSocket connections the server has accepted so far (its uvicorn log lines)."""
        assert self.log is not None
        return self.log.read_text().count('"WebSocket /graphql\\" [accepted]')

    def graphql(self, query: str, variables: dict[str, Any] | None = None, token: str | None = None) -> dict:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = httpx.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": variables or {}},
            headers=headers,
            timeout=10,
        ).json()
        assert not body.get("errors"), body
        return body["data"]

    def register(self) -> tuple[str, str]:
        """A new user; (email, access token)."""
        email = f"cli-{os.getpid()}-{time.time_ns()}-{next(_emails)}@example.com"
        data = self.graphql(
            "mutation($i: RegisterInput!) { register(input: $i) { accessToken } }",
            {"i": {"email": email, "password": PASSWORD, "name": "Cli User"}},
        )
        return email, data["register"]["accessToken"]

    def as_user(self, email: str, query: str, variables: dict[str, Any] | None = None) -> dict:
        """Run ``query`` with a fresh sign-in of that user (tokens here outlive no test)."""
        return self.graphql(query, variables, self.login(email))

    def login(self, email: str) -> str:
        data = self.graphql(
            "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            {"i": {"email": email, "password": PASSWORD}},
        )
        return data["login"]["accessToken"]


# The server passes Claude Code's flags to the agent unless runner.agent_cli is generic; then the demo agent
# asks before its edit (CONTRACT §10). Only the approvals tests want that.
PLAIN_AGENT = {"agent_cli": "generic"}


@contextlib.contextmanager
def start_server(tmp: Path, backend: str, **runner: Any) -> Iterator[Server]:
    env = clean_env(APP_ENV="test")
    if backend == SERVICES:
        database_url, redis_url = require_services()
        env |= {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "JWT_SECRET": TEST_JWT_SECRET}
    config = {
        "app": {"data_dir": str(tmp / "data")},
        "jwt": {"access_token_duration": f"{ACCESS_TOKEN_SECONDS}s"},
        "runner": {
            "command": DEMO_AGENT,
            # CLAUDE_CONFIG_DIR: where an unsandboxed demo agent keeps its session files
            "env": {"AICM_DEMO_DELAY": "0.01", "CLAUDE_CONFIG_DIR": str(tmp / "claude")},
            "workspace_root": str(tmp / "ws"),
            **runner,
        },
        "security": {
            "rate_limit": {"burst_size": 1500, "auth_requests_per_minute": 100_000, "auth_burst_size": 10_000}
        },
    }
    (tmp / "server.yaml").write_text(yaml.safe_dump(config))
    with serve(tmp, env, "--config", str(tmp / "server.yaml")) as base:
        yield Server(base, tmp / f"server-{base.rsplit(':', 1)[1]}.log")


@pytest.fixture(scope="package", params=[EMBEDDED, SERVICES])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp(f"aicli-{request.param}")
    with start_server(tmp, request.param, **PLAIN_AGENT) as running:
        yield running


class Aicli:
    """The ``aicli`` console script with its own config directory (one person at one machine)."""

    def __init__(self, server: Server, home: Path) -> None:
        self.server = server
        self.home = home
        self.env = clean_env(XDG_CONFIG_HOME=str(home), COLUMNS="200", TERM="xterm-256color")

    def __call__(
        self, *args: str, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [AICLI, *args], env=self.env, input=stdin, capture_output=True, text=True, timeout=timeout
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self(*args, stdin=stdin)
        assert result.returncode == 0, (result.stdout, result.stderr)
        return result.stdout

    @property
    def credentials(self) -> dict[str, Any]:
        return json.loads((self.home / "aicli" / "credentials.json").read_text())


@pytest.fixture
def person(server: Server, tmp_path: Path) -> tuple[Aicli, str]:
    """A registered user signed in with ``aicli login``; (the client, their email)."""
    email, _ = server.register()
    cli = Aicli(server, tmp_path / "config")
    cli.ok("login", server.url, "--email", email, "--password-stdin", stdin=PASSWORD + "\n")
    return cli, email
