"""Stopping drains: no new task starts, running tasks may finish within ``runner.shutdown_grace``, the rest
end FAILED "worker stopped". Real ``aicli-api worker`` processes on the Redis queue, and the embedded
executor ``serve`` runs; every start and end is logged as ``task_started`` / ``task_finished``."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.applications import Starlette

from aicm import models
from aicm.runner.executor import TaskExecutor
from aicm.runner.worker import QueueDispatcher, make_queue
from tests import servers
from tests.conftest import DEMO_AGENT, Backend, require_services
from tests.factories import make_project, make_user
from tests.schema.test_tasks import finished, status_becomes
from tests.servers import CLI, TEST_JWT_SECRET, clean_env, free_port


def start_worker(tmp_path: Path, name: str, *, grace: str, delay: str = "0") -> subprocess.Popen[bytes]:
    runner = {
        "command": DEMO_AGENT,
        "agent_cli": "generic",  # no approvals to wait for (tests/runner/test_approvals.py)
        "env": {"AICM_DEMO_DELAY": delay, "CLAUDE_CONFIG_DIR": str(tmp_path / "claude")},
        "max_concurrent": 1,
        "workspace_root": str(tmp_path / "workspaces"),
        "shutdown_grace": grace,
    }
    return servers.start_worker(tmp_path, name, require_services(), runner)


def start_serve(tmp_path: Path, config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with (tmp_path / "serve.log").open("w") as log:
        return subprocess.Popen(
            [*CLI, "serve", "--port", str(free_port()), "--config", str(config)],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def stop(worker: subprocess.Popen[bytes], timeout: float) -> float:
    """SIGTERM, then the seconds until it exited (killed and failed when it takes longer than ``timeout``)."""
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(timeout=5)
        pytest.fail(f"the worker did not exit within {timeout} s of SIGTERM")
    return time.monotonic() - started


def events(log: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and f'"event":"{name}"' in line:
            found.append(json.loads(line))
    return found


@pytest.fixture
def services(backend: Backend) -> None:
    if not backend.uses_services:
        pytest.skip("workers take tasks from the Redis job queue")


async def test_a_stopped_worker_lets_its_running_task_finish(
    app: Starlette, client: httpx.AsyncClient, services: None, tmp_path: Path
) -> None:
    # given a worker running a task that needs ~2 s
    worker = start_worker(tmp_path, "drain", grace="20s")
    queue = make_queue(app.state.runtime.settings)
    try:
        owner = await make_user()
        project = await make_project(owner)
        task = await models.Task.create(project=project, created_by=owner, prompt="sleep:2")
        await QueueDispatcher(queue, app.state.runtime.broker).submit(task.id)
        await status_becomes(task.id, models.TaskStatus.RUNNING, wait=30)
        # when it is told to stop
        took = stop(worker, timeout=25)
    finally:
        if worker.poll() is None:
            worker.kill()
        await queue.disconnect()
    # then the task ran to its end and the worker exited right after it, not after the whole grace
    done = await models.Task.get(id=task.id)
    assert done.status == models.TaskStatus.SUCCEEDED, done.error
    assert took < 15
    log = tmp_path / "drain.log"
    assert events(log, "runner_draining")
    [started] = events(log, "task_started")
    [ended] = events(log, "task_finished")
    assert (started["task_id"], started["project_id"]) == (task.id, project.id)
    assert (ended["task_id"], ended["project_id"], ended["status"]) == (task.id, project.id, "SUCCEEDED")
    assert ended["duration_ms"] >= 1500 and "cost_usd" in ended


async def test_a_task_still_running_after_the_grace_fails_as_worker_stopped_and_waiting_ones_stay_queued(
    app: Starlette, client: httpx.AsyncClient, services: None, tmp_path: Path
) -> None:
    # given a worker (one task at a time, 1 s grace) running a long task, and a second task queued behind it
    worker = start_worker(tmp_path, "short-grace", grace="1s")
    queue = make_queue(app.state.runtime.settings)
    dispatcher = QueueDispatcher(queue, app.state.runtime.broker)
    later = None
    try:
        owner = await make_user()
        project = await make_project(owner)
        long = await models.Task.create(project=project, created_by=owner, prompt="sleep:60")
        waiting = await models.Task.create(project=project, created_by=owner, prompt="quick")
        await dispatcher.submit(long.id)
        await status_becomes(long.id, models.TaskStatus.RUNNING, wait=30)
        await dispatcher.submit(waiting.id)
        # when it is told to stop
        took = stop(worker, timeout=20)
        # then the long task ended honestly, soon after the grace
        ended = await models.Task.get(id=long.id)
        assert ended.status == models.TaskStatus.FAILED
        assert ended.error.startswith("worker stopped")
        line = await models.TaskLog.filter(task_id=long.id, stream="system").first()
        assert line is not None and line.text == ended.error
        assert took < 12
        # and the waiting task was not started: still PENDING and still queued, so another worker runs it
        assert (await models.Task.get(id=waiting.id)).status == models.TaskStatus.PENDING
        later = start_worker(tmp_path, "later", grace="5s")
        assert (await finished(waiting.id, wait=30)).status == models.TaskStatus.SUCCEEDED
    finally:
        for process in (worker, later):
            if process is not None and process.poll() is None:
                stop(process, timeout=20)
        await queue.disconnect()
    [logged] = [e for e in events(tmp_path / "short-grace.log", "task_finished") if e["task_id"] == long.id]
    assert logged["status"] == "FAILED" and logged["level"] == "warning"


async def test_the_embedded_executor_drains_too(
    app: Starlette, client: httpx.AsyncClient, backend: Backend
) -> None:
    # given serve's executor (two slots) running a short task and a long one, and a third queued behind them
    base = backend.settings
    settings = dataclasses.replace(base, runner=dataclasses.replace(base.runner, max_concurrent=2))
    executor = TaskExecutor(settings, app.state.runtime.broker)
    await executor.start(single_process=False)
    owner = await make_user()
    project = await make_project(owner)
    short = await models.Task.create(project=project, created_by=owner, prompt="sleep:2")
    long = await models.Task.create(project=project, created_by=owner, prompt="sleep:60")
    queued = await models.Task.create(project=project, created_by=owner, prompt="quick")
    for task in (short, long, queued):
        await executor.submit(task.id)
    await status_becomes(short.id, models.TaskStatus.RUNNING)
    await status_becomes(long.id, models.TaskStatus.RUNNING)
    # when it closes with a 3 s grace
    started = time.monotonic()
    await executor.close(grace=3)
    # then the short task finished, the long one was stopped, and the queued one never started
    assert (await models.Task.get(id=short.id)).status == models.TaskStatus.SUCCEEDED
    stopped = await models.Task.get(id=long.id)
    assert stopped.status == models.TaskStatus.FAILED and stopped.error.startswith("worker stopped")
    assert (await models.Task.get(id=queued.id)).status == models.TaskStatus.PENDING
    assert 3 <= time.monotonic() - started < 12
    assert "3 s after the shutdown began" in stopped.error


@pytest.mark.parametrize(
    ("prompt", "grace", "status"), [("sleep:2", "20s", "SUCCEEDED"), ("sleep:60", "1s", "FAILED")]
)
async def test_serve_drains_its_embedded_executor_on_sigterm(
    app: Starlette,
    client: httpx.AsyncClient,
    services: None,
    tmp_path: Path,
    prompt: str,
    grace: str,
    status: str,
) -> None:
    # given a single-process serve (no Redis: it takes the PENDING tasks when it starts) running a task
    database_url, _ = require_services()
    owner = await make_user()
    project = await make_project(owner)
    task = await models.Task.create(project=project, created_by=owner, prompt=prompt)
    config = tmp_path / "serve.yaml"
    demo_env = {"AICM_DEMO_DELAY": "0", "CLAUDE_CONFIG_DIR": str(tmp_path / "claude")}
    runner = {"command": DEMO_AGENT, "agent_cli": "generic", "env": demo_env, "shutdown_grace": grace}
    config.write_text(yaml.safe_dump({"runner": runner | {"workspace_root": str(tmp_path / "w")}}))
    env = clean_env(DATABASE_URL=database_url, JWT_SECRET=TEST_JWT_SECRET, APP_ENV="test")
    server = start_serve(tmp_path, config, env)
    try:
        await status_becomes(task.id, models.TaskStatus.RUNNING, wait=30)
        # when
        stop(server, timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    # then the short task finished; the long one ended honestly
    ended = await models.Task.get(id=task.id)
    assert str(ended.status) == status, ended.error
    if status == "FAILED":
        assert ended.error.startswith("worker stopped")
    assert [e["status"] for e in events(tmp_path / "serve.log", "task_finished")] == [status]
