"""Container health probes, standard library only (deploy/Dockerfile, deploy/docker-compose.prod.yml).

    python deploy/healthcheck.py http [URL]   # GET URL (default http://127.0.0.1:8080/health);
                                              #   0 when it answers 200 with a status other than "unhealthy"
    python deploy/healthcheck.py deps         # TCP-connect the database and Redis the configuration points at
                                              #   (the worker has no HTTP port); 0 when every one answers

Exit 1 with one line on stderr otherwise. Nothing secret is printed: only host names and ports.
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

TIMEOUT = 3.0
DEFAULT_URL = "http://127.0.0.1:8080/health"


def probe_http(url: str) -> str | None:
    """None when healthy, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            body = json.loads(response.read().decode("utf-8") or "{}")
    except urllib.error.HTTPError as exc:
        return f"{url} answered HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{url}: {exc}"
    status = body.get("status") if isinstance(body, dict) else None
    if status == "unhealthy":
        return f"{url} reports unhealthy: {body.get('services')}"
    return None


def _endpoints() -> list[tuple[str, str, int]]:
    """(name, host, port) of the configured PostgreSQL and Redis; SQLite and the in-process broker: none."""
    from aicm.config import load_settings

    settings = load_settings(None)
    found = []
    if not settings.database.is_sqlite:
        parts = urlsplit(settings.database.dsn)
        found.append(("database", parts.hostname or "localhost", parts.port or 5432))
    if settings.redis.dsn and settings.redis.dsn.startswith(("redis://", "rediss://")):
        parts = urlsplit(settings.redis.dsn)
        found.append(("redis", parts.hostname or "localhost", parts.port or 6379))
    return found


def probe_deps() -> str | None:
    try:
        endpoints = _endpoints()
    except Exception as exc:  # a config error: say which kind, never the values
        return f"configuration: {type(exc).__name__}"
    for name, host, port in endpoints:
        try:
            socket.create_connection((host, port), timeout=TIMEOUT).close()
        except OSError as exc:
            return f"{name} at {host}:{port} unreachable: {exc.strerror or exc}"
    return None


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("http", "deps"):
        print(__doc__, file=sys.stderr)
        return 2
    problem = probe_http(argv[1] if len(argv) > 1 else DEFAULT_URL) if argv[0] == "http" else probe_deps()
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
