"""The ``aicli-api`` commands, run as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from aicm.runner.sandbox import detect
from tests.conftest import require_services
from tests.servers import CLI, clean_env, serve

FIXTURES = Path(__file__).parent / "fixtures"


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


def test_version_prints_and_exits_zero(tmp_path: Path) -> None:
    result = run(["--version"], tmp_path)
    assert result.returncode == 0
    assert "1.0.0" in result.stdout


def test_config_check_accepts_the_guides_config_with_its_env_file(tmp_path: Path) -> None:
    # given the guide's .env in the working directory, as an operator would have it
    shutil.copy(FIXTURES / "guide.env", tmp_path / ".env")
    with (tmp_path / ".env").open("a") as env:  # the guide predates repository credentials and their key
        env.write("AICM_ENCRYPTION_KEY=" + "k" * 43 + "\n")
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


@pytest.mark.parametrize(
    ("env", "sandbox", "ok"),
    [
        ("production", "auto", False),  # would fall back to none unannounced
        ("production", "none", True),  # unsandboxed on purpose
        ("development", "auto", True),
        ("development", "bubblewrap", False),  # asked for and not there, in any environment
    ],
)
def test_config_check_without_bubblewrap(tmp_path: Path, env: str, sandbox: str, ok: bool) -> None:
    # given a machine where bwrap is not on PATH
    (tmp_path / "bin").mkdir()
    config = tmp_path / "aicm.yaml"
    config.write_text(
        f"app: {{env: {env}}}\njwt: {{secret: {'s' * 40}}}\nsecurity: {{encryption_key: {'k' * 40}}}\n"
        f"runner: {{sandbox: {sandbox}}}\n"
    )
    # when
    result = run(["--config-check", "--config", str(config)], tmp_path, clean_env(PATH=str(tmp_path / "bin")))
    # then
    assert (result.returncode == 0) is ok, result.stderr
    if not ok:
        assert "runner.sandbox:" in result.stderr and "bwrap is not installed" in result.stderr


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


def at_a_terminal(args: list[str], cwd: Path, answers: list[str]) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin, stdout and stderr; type ``answers`` at its prompts."""
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [*CLI, *args],
        cwd=cwd,
        env=clean_env(),
        stdin=child,
        stdout=child,
        stderr=child,
        start_new_session=True,
    )
    os.close(child)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        pending, answered = list(answers), 0
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(main, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
                if pending and seen[answered:].rstrip().endswith(b":"):  # a new prompt, not the last one
                    os.write(main, pending.pop(0).encode() + b"\n")
                    answered = len(seen)
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=30), seen.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)


def test_create_admin_at_a_terminal_asks_twice_and_never_shows_the_password(tmp_path: Path) -> None:
    secret = "terminal-Passphrase-77"
    code, screen = at_a_terminal(
        ["create-admin", "--email", "tty@example.com", "--password-stdin"], tmp_path, [secret, secret]
    )
    assert code == 0, screen
    assert "Password:" in screen and "Password (again):" in screen
    assert "created admin tty@example.com" in screen
    assert secret not in screen


def test_create_admin_at_a_terminal_refuses_two_different_passwords(tmp_path: Path) -> None:
    code, screen = at_a_terminal(
        ["create-admin", "--email", "tty@example.com", "--password-stdin"],
        tmp_path,
        ["terminal-Passphrase-77", "terminal-Passphrase-78"],
    )
    assert code == 1
    assert "the passwords differ" in screen


def test_create_admin_refuses_a_weak_password(tmp_path: Path) -> None:
    result = run(["create-admin", "--email", "root@example.com", "--password", "short"], tmp_path)
    assert result.returncode == 1
    assert "at least 10 characters" in result.stderr


def test_serve_with_many_workers_needs_redis(tmp_path: Path) -> None:
    result = run(["serve", "--workers", "2"], tmp_path)
    assert result.returncode == 1
    assert "Redis" in result.stderr


def test_serve_runs_the_embedded_default_with_no_config(tmp_path: Path) -> None:
    with serve(tmp_path, clean_env()) as base:
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
    with serve(tmp_path, env, "--workers", "2") as base:
        health = httpx.get(f"{base}/health").json()
        assert health == {**health, "status": "healthy"}
        assert health["services"] == {
            "database": "healthy",
            "redis": "healthy",
            "auth": "healthy",
            "runner": "embedded",
            "sandbox": detect("auto").mode,
        }
        answers = {
            json.dumps(httpx.post(f"{base}/graphql", json={"query": "{ me { id } }"}).json())
            for _ in range(10)
        }
        assert answers == {json.dumps({"data": {"me": None}})}


@pytest.mark.services
def test_instances_migrating_together_do_not_race(tmp_path: Path) -> None:
    # given a fresh PostgreSQL database
    import asyncpg

    database_url, _ = require_services()
    name = f"aicm_race_{os.getpid()}"
    admin_url = database_url.rsplit("/", 1)[0] + "/postgres"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}"'))
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    env = clean_env(DATABASE_URL=database_url.rsplit("/", 1)[0] + f"/{name}")
    try:
        # when three instances migrate at the same moment
        procs = [
            subprocess.Popen(
                [*CLI, "migrate"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        outputs = [proc.communicate(timeout=60) for proc in procs]
        # then all succeed and the migrations were applied exactly once
        assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
        applied = sorted(out for out, _ in outputs)
        assert applied[0].startswith("applied 0") and applied[1].startswith("applied 0")
        assert "0_init.py" in applied[2]
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
