"""``runner.embedded: false``: ``/health`` is degraded while tasks wait and no worker was seen in the last
minute, ``/health/detailed`` lists the live workers, and ``/metrics`` has the queue depth and live workers.
A real ``aicli-api serve`` and a real ``aicli-api worker`` on PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import pytest
import yaml
from starlette.applications import Starlette

from aicm import models
from tests.conftest import Backend, require_services
from tests.factories import make_project, make_user
from tests.runner.test_shutdown import start_worker, stop
from tests.servers import TEST_JWT_SECRET, clean_env, serve


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def until(base: str, condition, wait: float = 20.0) -> dict:
    deadline = time.monotonic() + wait
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        while True:
            body = (await http.get("/health/detailed")).json()
            if condition(body):
                return body
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.2)


async def test_health_sees_pending_tasks_without_workers_and_the_workers_that_run(
    app: Starlette, client: httpx.AsyncClient, backend: Backend, tmp_path: Path
) -> None:
    if not backend.uses_services:
        pytest.skip("separate workers need Redis")
    database_url, redis_url = require_services()
    config = tmp_path / "server.yaml"
    config.write_text(
        yaml.safe_dump({"runner": {"embedded": False}, "app": {"data_dir": str(tmp_path / "d")}})
    )
    env = clean_env(
        DATABASE_URL=database_url, REDIS_URL=redis_url, JWT_SECRET=TEST_JWT_SECRET, APP_ENV="test"
    )
    owner = await make_user()
    project = await make_project(owner)
    await models.Task.create(project=project, created_by=owner, prompt="nobody takes me")
    with serve(tmp_path, env, "--config", str(config)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            # given a task waiting and no worker: degraded, and said why
            response = await http.get("/health")
            assert response.status_code == 200
            assert response.json()["status"] == "degraded"
            assert response.json()["services"]["runner"] == "unhealthy"
            assert (await http.get("/health/detailed")).json()["workers"]["live"] == []
            scraped = (await http.get("/metrics")).text
            assert metric(scraped, "aicm_task_queue_depth") == 1
            assert metric(scraped, "aicm_workers_live") == 0
            # when a worker starts
            worker = start_worker(tmp_path, "seen", grace="5s")
            try:
                body = await until(base, lambda b: b["workers"]["live"])
                # then it is listed and the runner is healthy again
                assert body["status"] == "healthy" and body["services"]["runner"] == "healthy"
                [seen] = body["workers"]["live"]
                assert seen["id"].split(":")[1] == str(worker.pid)
                assert metric((await http.get("/metrics")).text, "aicm_workers_live") == 1
            finally:
                stop(worker, timeout=20)
            # and once it stopped it no longer counts
            body = await until(base, lambda b: not b["workers"]["live"])
            assert body["status"] == "degraded"
