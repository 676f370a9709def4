"""scripts/backup.sh and scripts/restore.sh: write data, back up, wipe, restore, find the data again.

Data is made through the app's own commands (``aicli-api migrate``, ``create-admin``) in a database each test
creates for itself: a fresh SQLite file, or a fresh PostgreSQL database on the server of
``AICM_TEST_DATABASE_URL`` (created and dropped here; the shared test database is never touched). Redis is
restored into a throwaway ``redis-server`` on a loopback port of its own; the shared Redis is only read
(``redis-cli --rdb``).
"""

from __future__ import annotations

import asyncio
import gzip
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import REQUIRE_SERVICES, require_services
from tests.servers import CLI, clean_env, free_port

ROOT = Path(__file__).resolve().parent.parent
BACKUP = str(ROOT / "scripts" / "backup.sh")
RESTORE = str(ROOT / "scripts" / "restore.sh")
ADMIN, PASSWORD = "backup-admin@example.com", "a-long-Passw0rd-for-backups"


def script_env(home: Path, **extra: str) -> dict[str, str]:
    return clean_env(AICM_HOME=str(home), AICM_PYTHON=sys.executable, APP_ENV="test", **extra)


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )
    return result


def make_admin(home: Path, env: dict[str, str]) -> str:
    """Migrate and create the admin through the CLI; returns create-admin's answer."""
    migrated = run([*CLI, "migrate"], env, home)
    assert migrated.returncode == 0, migrated.stderr
    created = run([*CLI, "create-admin", "--email", ADMIN, "--password", PASSWORD], env, home)
    assert created.returncode == 0, created.stderr
    return created.stdout


def admin_exists(home: Path, env: dict[str, str]) -> bool:
    """create-admin is idempotent: it answers 'already admin' only when the user and the role are there."""
    result = run([*CLI, "create-admin", "--email", ADMIN, "--password", PASSWORD], env, home)
    assert result.returncode == 0, result.stderr
    return result.stdout.startswith("already admin")


def only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def need_tool(name: str) -> None:
    if shutil.which(name):
        return
    message = f"{name} is not installed"
    if REQUIRE_SERVICES:
        pytest.fail(message + " and AICM_REQUIRE_SERVICES=1")
    pytest.skip(message)


# -------------------------------------------------------------------------------------------- SQLite


@pytest.mark.parametrize("sqlite3_cli", ["sqlite3", "none"], ids=["sqlite3-cli", "python-fallback"])
def test_sqlite_backup_wipe_restore_brings_the_data_back(tmp_path: Path, sqlite3_cli: str) -> None:
    if sqlite3_cli == "sqlite3":
        need_tool("sqlite3")
    home, backups = tmp_path / "home", tmp_path / "backups"
    home.mkdir()
    database = home / "data" / "aicm.db"
    env = script_env(home, DATABASE_URL=f"sqlite://{database}", SQLITE3_BIN=sqlite3_cli)
    # given an admin written by the app
    assert "created admin" in make_admin(home, env)
    # when backed up
    backed = run([BACKUP, "--dir", str(backups)], env, home)
    assert backed.returncode == 0, backed.stderr
    archive = only(backups, "db_backup_*.sqlite.gz")
    assert oct(archive.stat().st_mode & 0o777) == "0o600"
    assert "redis: not configured" in backed.stdout
    # and the database wiped
    for leftover in database.parent.glob("aicm.db*"):
        leftover.unlink()
    # and restored
    restored = run([RESTORE, "--yes", str(archive)], env, home)
    assert restored.returncode == 0, restored.stderr
    # then
    assert admin_exists(home, env)
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM users WHERE email = ?", (ADMIN,)).fetchone() == (1,)


def test_sqlite_restore_over_a_live_database_keeps_the_replaced_one(tmp_path: Path) -> None:
    home, backups = tmp_path / "home", tmp_path / "backups"
    home.mkdir()
    database = home / "data" / "aicm.db"
    env = script_env(home, DATABASE_URL=f"sqlite://{database}")
    make_admin(home, env)
    assert run([BACKUP, "--dir", str(backups)], env, home).returncode == 0
    # given a change after the backup
    with sqlite3.connect(database) as db:
        db.execute("DELETE FROM user_roles")
        db.execute("DELETE FROM users")
    # when restored over it
    restored = run([RESTORE, "--yes", str(only(backups, "*.sqlite.gz"))], env, home)
    # then the backup's data is back and the replaced database kept
    assert restored.returncode == 0, restored.stderr
    assert admin_exists(home, env)
    kept = only(database.parent, "aicm.db.pre-restore-*")
    with sqlite3.connect(kept) as db:
        assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)


def test_restore_refuses_without_yes_and_leaves_the_database_alone(tmp_path: Path) -> None:
    home, backups = tmp_path / "home", tmp_path / "backups"
    home.mkdir()
    database = home / "data" / "aicm.db"
    env = script_env(home, DATABASE_URL=f"sqlite://{database}")
    make_admin(home, env)
    assert run([BACKUP, "--dir", str(backups)], env, home).returncode == 0
    database.unlink()
    # when, with no terminal and no --yes
    refused = run([RESTORE, str(only(backups, "*.sqlite.gz"))], env, home)
    # then
    assert refused.returncode == 1
    assert "without --yes" in refused.stderr
    assert not database.exists()


def test_restore_refuses_a_damaged_backup(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = script_env(home, DATABASE_URL=f"sqlite://{home / 'aicm.db'}")
    damaged = tmp_path / "db_backup_20240101_020000.sqlite.gz"
    damaged.write_bytes(gzip.compress(b"not a database at all" * 100))
    result = run([RESTORE, "--yes", str(damaged)], env, home)
    assert result.returncode == 1
    assert "not a sound SQLite database" in result.stderr
    assert not (home / "aicm.db").exists()


def test_backup_keeps_thirty_days_of_its_own_files(tmp_path: Path) -> None:
    home, backups = tmp_path / "home", tmp_path / "backups"
    home.mkdir()
    backups.mkdir()
    env = script_env(home, DATABASE_URL=f"sqlite://{home / 'aicm.db'}")
    make_admin(home, env)
    # given old and recent backups, and an old file that is not a backup
    month_ago = time.time() - 31 * 86400
    old = [backups / "db_backup_20200101_020000.sql.gz", backups / "redis_backup_20200101_020000.rdb"]
    recent = backups / "db_backup_20990101_020000.sqlite.gz"
    other = backups / "notes.gz"
    for path in (*old, recent, other):
        path.write_bytes(b"x")
    for path in (*old, other):
        os.utime(path, (month_ago, month_ago))
    # when
    result = run([BACKUP, "--dir", str(backups)], env, home)
    # then
    assert result.returncode == 0, result.stderr
    assert not any(path.exists() for path in old)
    assert recent.exists() and other.exists()
    assert len(list(backups.glob("db_backup_2*.sqlite.gz"))) == 2


def test_backup_never_prints_the_database_password(tmp_path: Path) -> None:
    # given a PostgreSQL URL with a password, on a port nobody listens on
    url = f"postgres://aicm:Sup3r-s3cret-pw@127.0.0.1:{free_port()}/aicli_web"
    env = script_env(tmp_path, DATABASE_URL=url, PGCONNECT_TIMEOUT="3")
    # when
    result = run([BACKUP, "--dir", str(tmp_path / "backups"), "--no-redis"], env, tmp_path)
    # then it fails, says where, and leaves no partial file
    assert result.returncode != 0
    assert "aicm@127.0.0.1" in result.stdout
    assert "Sup3r-s3cret-pw" not in result.stdout + result.stderr
    assert list((tmp_path / "backups").iterdir()) == []


# ---------------------------------------------------------------------------------------- PostgreSQL


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _admin_sql(url: str, statement: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(_with_database(url, "postgres"), timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(go())


@pytest.fixture
def scratch_database() -> Iterator[str]:
    """A PostgreSQL database of this test's own, on the server of AICM_TEST_DATABASE_URL."""
    database_url, _ = require_services()
    name = f"aicm_backup_{os.getpid()}_{secrets.token_hex(4)}"
    _admin_sql(database_url, f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(database_url, name)
    finally:
        _admin_sql(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.services
def test_postgres_backup_wipe_restore_brings_the_data_back(tmp_path: Path, scratch_database: str) -> None:
    need_tool("pg_dump")
    need_tool("psql")
    _, redis_url = require_services()
    home, backups = tmp_path / "home", tmp_path / "backups"
    home.mkdir()
    name = urlsplit(scratch_database).path.lstrip("/")
    env = script_env(home, DATABASE_URL=scratch_database, REDIS_URL=redis_url)
    # given an admin written by the app
    assert "created admin" in make_admin(home, env)
    # when backed up (the database, and the Redis RDB: only read)
    backed = run([BACKUP, "--dir", str(backups)], env, home)
    assert backed.returncode == 0, backed.stderr
    archive = only(backups, "db_backup_*.sql.gz")
    assert only(backups, "redis_backup_*.rdb").read_bytes()[:5] == b"REDIS"
    password = urlsplit(scratch_database).password
    if password:
        assert password not in backed.stdout + backed.stderr
    # and the database dropped and created empty
    _admin_sql(scratch_database, f'DROP DATABASE "{name}" WITH (FORCE)')
    _admin_sql(scratch_database, f'CREATE DATABASE "{name}"')
    # and restored
    restored = run([RESTORE, "--yes", str(archive)], env, home)
    assert restored.returncode == 0, restored.stderr
    # then
    assert admin_exists(home, env)
    # and restoring again over the live database works too (the dump drops what it recreates)
    again = run([RESTORE, "--yes", str(archive)], env, home)
    assert again.returncode == 0, again.stderr
    assert admin_exists(home, env)


@pytest.mark.services
def test_postgres_restore_into_another_database_with_database_url(
    tmp_path: Path, scratch_database: str
) -> None:
    need_tool("pg_dump")
    database_url, _ = require_services()
    home, backups = tmp_path / "home", tmp_path / "backups"
    home.mkdir()
    env = script_env(home, DATABASE_URL=scratch_database)
    make_admin(home, env)
    assert run([BACKUP, "--dir", str(backups), "--no-redis"], env, home).returncode == 0
    # given a second, empty database
    other = f"aicm_restore_{os.getpid()}_{secrets.token_hex(4)}"
    _admin_sql(database_url, f'CREATE DATABASE "{other}"')
    try:
        other_url = _with_database(scratch_database, other)
        # when restored there with --database-url
        result = run(
            [RESTORE, "--yes", "--database-url", other_url, str(only(backups, "*.sql.gz"))], env, home
        )
        # then
        assert result.returncode == 0, result.stderr
        assert admin_exists(home, script_env(home, DATABASE_URL=other_url))
    finally:
        _admin_sql(database_url, f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')


# --------------------------------------------------------------------------------------------- Redis


class ThrowawayRedis:
    """redis-server on a loopback port of its own, keeping its RDB in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return result.stdout.strip()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
             "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while self.cli("ping") != "PONG":
            assert self.proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer within 10 s"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.cli("shutdown", "nosave")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    need_tool("redis-server")
    need_tool("redis-cli")
    folder = tmp_path / "redis"
    folder.mkdir()
    redis = ThrowawayRedis(folder)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def test_redis_rdb_backup_wipe_restore_brings_the_keys_back(
    tmp_path: Path, throwaway_redis: ThrowawayRedis
) -> None:
    home, backups = tmp_path / "home", tmp_path / "backups"
    home.mkdir()
    env = script_env(home, DATABASE_URL=f"sqlite://{home / 'aicm.db'}", REDIS_URL=throwaway_redis.url)
    make_admin(home, env)
    # given a key in Redis
    assert throwaway_redis.cli("set", "aicm:backup-test", "kept") == "OK"
    # when backed up
    backed = run([BACKUP, "--dir", str(backups)], env, home)
    assert backed.returncode == 0, backed.stderr
    rdb = only(backups, "redis_backup_*.rdb")
    # and Redis wiped
    throwaway_redis.stop()
    (throwaway_redis.folder / "dump.rdb").unlink(missing_ok=True)
    # and the RDB restored while Redis is stopped
    restored = run([RESTORE, "--yes", "--redis-dir", str(throwaway_redis.folder), str(rdb)], env, home)
    assert restored.returncode == 0, restored.stderr
    throwaway_redis.start()
    # then
    assert throwaway_redis.cli("get", "aicm:backup-test") == "kept"


def test_redis_restore_refuses_while_redis_runs(tmp_path: Path, throwaway_redis: ThrowawayRedis) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = script_env(home, DATABASE_URL=f"sqlite://{home / 'aicm.db'}", REDIS_URL=throwaway_redis.url)
    rdb = tmp_path / "redis_backup_20240101_020000.rdb"
    rdb.write_bytes(b"REDIS0011" + b"\0" * 16)
    result = run([RESTORE, "--yes", "--redis-dir", str(throwaway_redis.folder), str(rdb)], env, home)
    assert result.returncode == 1
    assert "stop it first" in result.stderr
