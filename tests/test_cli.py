"""The ``aicli-api`` commands, run as real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import require_services

FIXTURES = Path(__file__).parent / "fixtures"
CLI = [sys.executable, "-m", "aicm.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """The process environment without anything that would change which config the CLI loads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AICM_", "AICLI_"))}
    for key in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "APP_ENV", "LOG_LEVEL"):
        env.pop(key, None)
    return env | extra


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None):
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env=env or clean_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_version_prints_and_exits_zero(tmp_path: Path) -> None:
    result = run(["--version"], tmp_path)
    assert result.returncode == 0
    assert "1.0.0" in result.stdout


def test_config_check_accepts_the_guides_config_with_its_env_file(tmp_path: Path) -> None:
    # given the guide's .env in the working directory, as an operator would have it
    shutil.copy(FIXTURES / "guide.env", tmp_path / ".env")
    # when
    result = run(["--config-check", "--config", str(FIXTURES / "guide-config.yaml")], tmp_path)
    # then
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout


def test_config_check_names_every_bad_key_and_exits_one(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: abc\nlogging:\n  level: loud\njwt:\n  access_token_duration: soon\n")
    result = run(["--config-check", "--config", str(bad)], tmp_path)
    assert result.returncode == 1
    assert "server.port" in result.stderr
    assert "logging.level" in result.stderr
    assert "jwt.access_token_duration" in result.stderr


def test_config_check_refuses_a_missing_file(tmp_path: Path) -> None:
    result = run(["--config-check", "--config", str(tmp_path / "nope.yaml")], tmp_path)
    assert result.returncode == 1
    assert "not found" in result.stderr


def test_migrate_creates_the_embedded_database_and_is_idempotent(tmp_path: Path) -> None:
    first = run(["migrate"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert "0_init.py" in first.stdout
    assert (tmp_path / "data" / "aicm.db").exists()
    second = run(["migrate"], tmp_path)
    assert second.returncode == 0
    assert "applied 0 migration(s)" in second.stdout


def test_create_admin_creates_then_promotes_idempotently(tmp_path: Path) -> None:
    created = run(
        ["create-admin", "--email", "Root@Example.com", "--password", "a-long-password-1"], tmp_path
    )
    assert created.returncode == 0, created.stderr
    assert "created admin root@example.com" in created.stdout
    again = run(
        ["create-admin", "--email", "root@example.com", "--password-stdin"],
        tmp_path,
        stdin="ignored-password\n",
    )
    assert again.returncode == 0, again.stderr
    assert "already" in again.stdout


def test_create_admin_refuses_a_weak_password(tmp_path: Path) -> None:
    result = run(["create-admin", "--email", "root@example.com", "--password", "short"], tmp_path)
    assert result.returncode == 1
    assert "at least 10 characters" in result.stderr


def test_serve_with_many_workers_needs_redis(tmp_path: Path) -> None:
    result = run(["serve", "--workers", "2"], tmp_path)
    assert result.returncode == 1
    assert "Redis" in result.stderr


def _serve(args: list[str], cwd: Path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        else:
            pytest.fail("server did not answer /health within 30 s")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_serve_runs_the_embedded_default_with_no_config(tmp_path: Path) -> None:
    for base in _serve([], tmp_path, clean_env()):
        health = httpx.get(f"{base}/health").json()
        assert health["services"]["redis"] == "embedded"
        answer = httpx.post(f"{base}/graphql", json={"query": "{ me { id } }"})
        assert answer.json() == {"data": {"me": None}}
        assert "graphiql" in httpx.get(f"{base}/graphql", headers={"Accept": "text/html"}).text.lower()
    assert (tmp_path / "data" / "aicm.db").exists()
    secret = tmp_path / "data" / "jwt_secret"
    assert secret.exists() and len(secret.read_text().strip()) >= 32
    assert oct(secret.stat().st_mode & 0o777) == "0o600"


@pytest.mark.services
def test_serve_with_workers_on_postgres_and_redis(tmp_path: Path) -> None:
    database_url, redis_url = require_services()
    env = clean_env(DATABASE_URL=database_url, REDIS_URL=redis_url, JWT_SECRET="x" * 40)
    for base in _serve(["--workers", "2"], tmp_path, env):
        health = httpx.get(f"{base}/health").json()
        assert health == {**health, "status": "healthy"}
        assert health["services"] == {"database": "healthy", "redis": "healthy", "auth": "healthy"}
        answers = {
            json.dumps(httpx.post(f"{base}/graphql", json={"query": "{ me { id } }"}).json())
            for _ in range(10)
        }
        assert answers == {json.dumps({"data": {"me": None}})}
