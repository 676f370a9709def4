"""Real ``aicli-api serve`` processes on loopback ports, for tests that need a second instance."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

CLI = [sys.executable, "-m", "aicm.cli"]
# Shared by the in-process app and the server processes of the services backend, so tokens work on both.
TEST_JWT_SECRET = "aicm-test-secret-that-is-long-enough-0123456789"


def clean_env(**extra: str) -> dict[str, str]:
    """The process environment without anything that would change which config the CLI loads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AICM_", "AICLI_"))}
    for key in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "APP_ENV", "LOG_LEVEL"):
        env.pop(key, None)
    return env | extra


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(cwd: Path, env: dict[str, str], *args: str) -> Iterator[str]:
    """Run ``aicli-api serve`` until the block ends; yields its base URL once /health answers."""
    port = free_port()
    log = (cwd / f"server-{port}.log").open("w")
    proc = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (cwd / f"server-{port}.log").read_text()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code in (200, 503):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not answer /health within 30 s"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def start_worker(
    tmp_path: Path, name: str, services: tuple[str, str], runner: dict[str, Any]
) -> subprocess.Popen[bytes]:
    """``aicli-api worker`` on PostgreSQL and Redis (``services``: their URLs) with these runner settings;
    its config is ``<name>.yaml`` and its output ``<name>.log`` in ``tmp_path``."""
    database_url, redis_url = services
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"runner": runner, "app": {"data_dir": str(tmp_path / name)}}))
    env = clean_env(
        DATABASE_URL=database_url, REDIS_URL=redis_url, JWT_SECRET=TEST_JWT_SECRET, APP_ENV="test"
    )
    with (tmp_path / f"{name}.log").open("w") as log:
        return subprocess.Popen(
            [*CLI, "worker", "--config", str(config)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
