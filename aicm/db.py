"""Database wiring: the Tortoise config built from Settings, and applying migrations (aerich).

Migration files in ``migrations/models/`` hold SQL for both SQLite and PostgreSQL and pick by dialect, so one
migration history serves the embedded default and production (see ``scripts/make_migration.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tortoise import Tortoise
from tortoise.backends.base.config_generator import expand_db_url

from aicm.config import Settings

log = logging.getLogger("aicm.db")

MODEL_MODULES = ["aicm.models", "aerich.models"]
# An installed wheel carries them as aicm/migrations (setup.py maps the folder there); a checkout has them
# at the repository's top level.
_MIGRATION_DIRS = (
    Path(__file__).resolve().parent / "migrations",
    Path(__file__).resolve().parent.parent / "migrations",
)
# Any constant works; it only has to be the same for every instance of this application.
_MIGRATION_LOCK_KEY = 0x41494_34D


class MigrationsMissing(RuntimeError):
    """No migration files where they should be: a broken installation, never "nothing to do"."""


def migrations_dir() -> Path:
    """The folder holding ``models/<n>_<name>.py`` migration files; MigrationsMissing when none has any."""
    for directory in _MIGRATION_DIRS:
        if any((directory / "models").glob("[0-9]*_*.py")):
            return directory
    searched = ", ".join(str(d / "models") for d in _MIGRATION_DIRS)
    raise MigrationsMissing(f"no migration files found (looked in {searched}): the installation is broken")


def connection_config(settings: Settings) -> dict[str, Any]:
    """One Tortoise connection entry for the configured database."""
    db = settings.database
    conn = expand_db_url(db.dsn)
    creds = conn["credentials"]
    if conn["engine"] == "tortoise.backends.sqlite":
        path = creds["file_path"]
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    else:
        creds.setdefault("minsize", min(db.max_idle_conns, db.max_open_conns))
        creds.setdefault("maxsize", db.max_open_conns)
        creds.setdefault("max_inactive_connection_lifetime", db.conn_max_lifetime)
        creds.setdefault("ssl", db.ssl_mode)
    return conn


def tortoise_config(settings: Settings) -> dict[str, Any]:
    return {
        "connections": {"default": connection_config(settings)},
        "apps": {"models": {"models": MODEL_MODULES, "default_connection": "default"}},
        "use_tz": True,
        "timezone": "UTC",
    }


def placeholders(connection: Any, count: int) -> list[str]:
    """The ``count`` parameter marks of a raw statement on ``connection`` (a Tortoise client): ``$1, $2...``
    on PostgreSQL, ``?`` on SQLite."""
    if connection.capabilities.dialect == "postgres":
        return [f"${n}" for n in range(1, count + 1)]
    return ["?"] * count


def is_postgres(settings: Settings) -> bool:
    return connection_config(settings)["engine"] == "tortoise.backends.asyncpg"


async def apply_migrations(settings: Settings) -> list[str]:
    """Apply pending migrations; returns the files applied.

    On PostgreSQL an advisory lock, held on a connection of its own, serialises instances that start together.
    Raises MigrationsMissing, before touching the database, when no migration files can be found.
    """
    migrations_dir()
    if not is_postgres(settings):
        return await _upgrade(settings)
    import asyncpg

    creds = connection_config(settings)["credentials"]
    lock_conn = await asyncpg.connect(
        host=creds["host"],
        port=creds["port"],
        user=creds["user"],
        password=creds.get("password"),
        database=creds["database"],
        ssl=creds.get("ssl"),
    )
    try:
        await lock_conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
        return await _upgrade(settings)
    finally:
        await lock_conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
        await lock_conn.close()


async def _upgrade(settings: Settings) -> list[str]:
    from aerich import Command

    command = Command(tortoise_config(settings), app="models", location=str(migrations_dir()))
    try:
        await command.init()
        applied = await command.upgrade(run_in_transaction=True)
    finally:
        await Tortoise.close_connections()
    for name in applied:
        log.info("migration applied", extra={"event": "migration_applied", "migration": name})
    return applied
