"""The built wheel is a working installation: it carries the migrations and the web console's build, so
``migrate`` then ``serve`` work from it alone, and ``migrate`` fails loudly when the migrations are missing.

The wheel is built from a copy of the sources (a clean tree: no stale ``build/``), installed without its
dependencies into a fresh virtualenv; the dependencies come from this interpreter's site-packages through
``PYTHONPATH``, which adds no ``.pth`` files, so this checkout's editable install cannot stand in for it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import clean_env, free_port

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("aicm", "migrations", "pyproject.toml", "setup.py", "README.md")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv with the wheel installed; yields its bin directory."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    run([*pip, "wheel", "--no-deps", "--wheel-dir", str(tmp / "dist"), str(source)], timeout=300)
    wheel = next((tmp / "dist").glob("aicode_manager-*.whl"))
    run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")])
    run(
        [*pip, "--python", str(tmp / "venv" / "bin" / "python"), "install", "--no-deps", str(wheel)],
        timeout=120,
    )
    yield tmp / "venv" / "bin"


def run(
    argv: list[str], *, timeout: float = 60, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def installed_env(tmp: Path) -> dict[str, str]:
    return clean_env(
        PYTHONPATH=sysconfig.get_paths()["purelib"],
        APP_ENV="test",
        DATABASE_URL=f"sqlite://{tmp / 'aicm.db'}",
    )


def test_the_wheel_migrates_and_serves_on_its_own(installed: Path, tmp_path: Path) -> None:
    env = installed_env(tmp_path)
    where = run([str(installed / "python"), "-c", "import aicm; print(aicm.__file__)"], env=env, cwd=tmp_path)
    assert where.stdout.startswith(str(installed.parent)), (
        where.stdout
    )  # the wheel's aicm, not the checkout's
    # when
    migrated = run([str(installed / "aicli-api"), "migrate"], env=env, cwd=tmp_path)
    # then
    shipped = sorted((Path(__file__).resolve().parents[1] / "migrations" / "models").glob("[0-9]*_*.py"))
    assert f"applied {len(shipped)} migration(s)" in migrated.stdout
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [str(installed / "aicli-api"), "serve", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "no answer from /health within 30 s"
                time.sleep(0.2)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "healthy"
        assert answer.json()["services"]["database"] == "healthy"
        # the web console and GraphiQL come from the wheel's own built files (no Node, no CDN)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page.status_code == 200 and 'name="aicm-config"' in page.text
        for asset in re.findall(r'(?:src|href)="(/assets/[^"]+)"', page.text):
            assert httpx.get(f"http://127.0.0.1:{port}{asset}", timeout=5).status_code == 200, asset
        graphiql = httpx.get(f"http://127.0.0.1:{port}/graphql", headers={"Accept": "text/html"}, timeout=5)
        assert graphiql.status_code == 200 and "/assets/graphiql-" in graphiql.text
    finally:
        server.terminate()
        server.wait(timeout=15)
        log.close()
    assert "no such table" not in (tmp_path / "serve.log").read_text()


def test_migrate_fails_loudly_when_it_finds_no_migrations(installed: Path, tmp_path: Path) -> None:
    # given an installation that lost its migrations
    broken = tmp_path / "venv"
    shutil.copytree(installed.parent, broken, symlinks=True)
    site = next(broken.glob("lib/python*/site-packages"))
    shutil.rmtree(site / "aicm" / "migrations")
    # when
    result = subprocess.run(
        [str(broken / "bin" / "python"), "-m", "aicm.cli", "migrate"],
        cwd=tmp_path, env=installed_env(tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # then
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no migration files found" in result.stderr
    assert "applied 0" not in result.stdout


def test_the_wheel_ships_the_aicli_client(installed: Path, tmp_path: Path) -> None:
    result = run([str(installed / "aicli"), "--version"], env=installed_env(tmp_path), cwd=tmp_path)
    assert result.stdout.strip() == "aicli 1.0.0"
