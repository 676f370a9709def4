"""``aicli-api``: argument parsing only; the work happens in app, db, resolvers and runner."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from aicm import __version__
from aicm.config import ConfigError, Settings, load_settings

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client in every worker


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aicli-api", description="AICode Manager API server")
    parser.add_argument("--version", action="version", version=f"aicli-api {__version__}")
    parser.add_argument("--config-check", action="store_true", help="validate the configuration and exit")
    parser.add_argument(
        "--config", metavar="PATH", help="config file (default: $AICLI_CONFIG, config/config.yaml)"
    )
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="worker processes (needs Redis when more than 1)")

    migrate = sub.add_parser("migrate", help="apply pending database migrations")
    migrate.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS)

    worker = sub.add_parser("worker", help="run task executors only (tasks come from the Redis job queue)")
    worker.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS)

    admin = sub.add_parser("create-admin", help="create or promote a user with the admin role")
    admin.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS)
    admin.add_argument("--email", required=True)
    secret = admin.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password")
    secret.add_argument("--password-stdin", action="store_true")
    return parser


def _settings(path: str | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(1) from exc


def _config_check(path: str | None) -> int:
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"config: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    from aicm.runner.isolation import sandbox_problem

    if problem := sandbox_problem(settings):  # needs the machine, not only the file
        print(problem, file=sys.stderr)
        print("config: 1 problem(s)", file=sys.stderr)
        return 1
    print(f"config OK: {settings.config_path or 'built-in defaults'} (env {settings.app.env})")
    return 0


def _migrate(settings: Settings, *, quiet: bool = False) -> int:
    """Apply pending migrations; ``quiet`` when serving, whose output is JSON log lines only."""
    from aicm.db import MigrationsMissing, apply_migrations

    try:
        applied = asyncio.run(apply_migrations(settings))
    except MigrationsMissing as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    if not quiet:
        print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def _password_from_stdin() -> str | None:
    """``--password-stdin``: one line from a pipe, or, at a terminal, typed twice without echo."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password (again): ") != first:
        print("create-admin: the passwords differ", file=sys.stderr)
        return None
    return first


def _create_admin(settings: Settings, email: str, password: str) -> int:
    from tortoise import Tortoise

    from aicm.db import MigrationsMissing, apply_migrations, tortoise_config
    from aicm.errors import AppError
    from aicm.resolvers.admin import create_admin

    async def run() -> int:
        if settings.auto_migrate:
            try:
                await apply_migrations(settings)
            except MigrationsMissing as exc:
                print(f"create-admin: {exc}", file=sys.stderr)
                return 1
        await Tortoise.init(config=tortoise_config(settings))
        try:
            user, outcome = await create_admin(email, password)
        except AppError as exc:
            print(f"create-admin: {exc.message}", file=sys.stderr)
            return 1
        finally:
            await Tortoise.close_connections()
        messages = {
            "created": "created admin",
            "promoted": "promoted to admin",
            "unchanged": "already admin:",
        }
        print(f"{messages[outcome]} {user.email}")
        return 0

    return asyncio.run(run())


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from aicm.http.protocol import HTTPLimits
    from aicm.logs.setup import configure_logging, log_config

    host = args.host or settings.server.host
    port = args.port or settings.server.port
    workers = args.workers or settings.server.workers
    if workers > 1 and not settings.redis.enabled:
        print("serve: --workers > 1 needs Redis (sessions and live events must be shared)", file=sys.stderr)
        return 1
    try:
        configure_logging(settings.logging)
    except OSError as exc:
        print(f"serve: cannot open the log file: {exc}", file=sys.stderr)
        return 1
    if settings.auto_migrate and (failed := _migrate(settings, quiet=True)):
        return failed
    url = f"http://{host}:{port}/graphql"
    logging.getLogger("aicm").info(
        f"AICode Manager {__version__} serving GraphQL at {url}",
        extra={"event": "server_started", "url": url},
    )
    options = {
        "host": host,
        "port": port,
        "http": HTTPLimits.of(settings.server),  # read_timeout, write_timeout, max_header_bytes
        "timeout_keep_alive": int(settings.server.idle_timeout),
        "log_config": log_config(),
        "access_log": False,  # our access log has the contract's fields and no query strings
        # uvicorn would buffer WebSocket messages up to 16 MiB before the app's own check (1009) sees them
        "ws_max_size": settings.graphql.max_body_bytes,
        "ws_per_message_deflate": settings.server.ws_compression,
    }
    if workers > 1:
        # Worker processes load the same settings: point them at the same file.
        if settings.config_path:
            os.environ["AICLI_CONFIG"] = str(settings.config_path)
        # Metrics add up across workers: prometheus_client's multiprocess mode, one fresh directory per run.
        with _metrics_directory(create=True):
            uvicorn.run("aicm.app:create_app", factory=True, workers=workers, **options)
        return 0
    with _metrics_directory(create=False):
        from aicm.app import build_app

        uvicorn.run(build_app(settings), **options)
    return 0


def _worker(settings: Settings) -> int:
    from aicm.logs.setup import configure_logging
    from aicm.runner.worker import run_worker

    if not settings.redis.enabled:
        print(
            "worker: needs Redis (the job queue and live events): set redis.addr or REDIS_URL",
            file=sys.stderr,
        )
        return 1
    configure_logging(settings.logging)
    if settings.auto_migrate and (failed := _migrate(settings, quiet=True)):
        return failed
    asyncio.run(run_worker(settings))
    return 0


@contextlib.contextmanager
def _metrics_directory(*, create: bool) -> Iterator[str | None]:
    """``PROMETHEUS_MULTIPROC_DIR`` for the server started inside the block, ready before anything imports
    prometheus_client. An operator's own directory is kept but emptied of the last run's samples; else, with
    ``create``, a temporary directory is made and removed afterwards (without it: single-process metrics)."""
    given = os.environ.get(METRICS_DIR_ENV)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink(missing_ok=True)
        yield given
        return
    if not create:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="aicm-metrics-")
    os.environ[METRICS_DIR_ENV] = directory
    try:
        yield directory
    finally:
        os.environ.pop(METRICS_DIR_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.config_check:
        return _config_check(args.config)
    if args.command is None:
        _parser().print_help()
        return 2
    settings = _settings(args.config)
    if args.command == "serve":
        return _serve(settings, args)
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "worker":
        return _worker(settings)
    if args.command == "create-admin":
        password = _password_from_stdin() if args.password_stdin else args.password
        if password is None:
            return 1
        return _create_admin(settings, args.email, password)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
