"""Crash recovery of tasks left RUNNING, and separate workers fed by the Redis job queue."""

from __future__ import annotations

import asyncio
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from aicm import models
from aicm.runner.worker import QueueDispatcher, make_queue
from tests import servers
from tests.conftest import DEMO_AGENT, Backend
from tests.factories import make_project, make_user
from tests.schema.test_tasks import finished, status_becomes


async def orphan(project: models.Project, user: models.User, *, lease_age: float) -> models.Task:
    """A task a dead process left RUNNING, its lease renewed ``lease_age`` seconds ago (negative: expired)."""
    return await models.Task.create(
        project=project,
        created_by=user,
        prompt="orphaned",
        status=models.TaskStatus.RUNNING,
        started_at=datetime.now(UTC) - timedelta(minutes=5),
        worker_id="dead-host:1:abc",
        lease_expires_at=datetime.now(UTC) + timedelta(seconds=lease_age),
    )


async def test_single_process_start_up_fails_left_running_tasks_and_runs_pending_ones(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    # given what a crashed single-process server left behind
    owner = await make_user()
    project = await make_project(owner)
    running = await orphan(project, owner, lease_age=60)  # even a fresh lease: nobody else can hold it
    pending = await models.Task.create(project=project, created_by=owner, prompt="never started")
    # when the server starts again
    await app.state.runtime.executor.recover(single_process=True)
    # then
    failed = await models.Task.get(id=running.id)
    assert failed.status == models.TaskStatus.FAILED
    assert "worker lost" in failed.error
    line = await models.TaskLog.get(task_id=running.id, seq=1)
    assert (line.stream, line.text) == ("system", failed.error)
    assert (await finished(pending.id)).status == models.TaskStatus.SUCCEEDED


async def test_with_workers_only_expired_leases_are_failed(app: Starlette, client: httpx.AsyncClient) -> None:
    owner = await make_user()
    project = await make_project(owner)
    expired = await orphan(project, owner, lease_age=-5)
    alive = await orphan(project, owner, lease_age=60)
    await app.state.runtime.executor.recover(single_process=False)
    assert (await models.Task.get(id=expired.id)).status == models.TaskStatus.FAILED
    assert (await models.Task.get(id=alive.id)).status == models.TaskStatus.RUNNING
    await models.Task.filter(id=alive.id).delete()


def start_worker(tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    from tests.conftest import require_services

    runner = {
        "command": DEMO_AGENT,
        "agent_cli": "generic",  # no approvals to wait for (tests/runner/test_approvals.py)
        "env": {"AICM_DEMO_DELAY": "0", "CLAUDE_CONFIG_DIR": str(tmp_path / "claude")},
        "max_concurrent": 1,
        "workspace_root": str(tmp_path / "workspaces"),
    }
    return servers.start_worker(tmp_path, name, require_services(), runner)


async def test_two_workers_and_a_cancel_routed_to_the_right_one(
    app: Starlette, client: httpx.AsyncClient, backend: Backend, tmp_path: Path
) -> None:
    if not backend.uses_services:
        pytest.skip("workers take tasks from the Redis job queue")
    # given two workers that each run one task at a time
    workers = [start_worker(tmp_path, "worker-a"), start_worker(tmp_path, "worker-b")]
    runtime = app.state.runtime
    queue = make_queue(runtime.settings)
    dispatcher = QueueDispatcher(queue, runtime.broker)
    try:
        owner = await make_user()
        project = await make_project(owner)
        tasks = [
            await models.Task.create(project=project, created_by=owner, prompt="sleep:30") for _ in range(2)
        ]
        for task in tasks:
            await dispatcher.submit(task.id)
        running = [await status_becomes(task.id, models.TaskStatus.RUNNING, wait=30) for task in tasks]
        assert running[0].worker_id != running[1].worker_id  # one task on each worker
        # when one is cancelled
        await models.Task.filter(id=tasks[0].id).update(cancel_requested=True)
        started = time.monotonic()
        await dispatcher.cancel(tasks[0].id)
        # then only that one stops, promptly (not at the next lease renewal)
        assert (await finished(tasks[0].id, wait=10)).status == models.TaskStatus.CANCELLED
        assert time.monotonic() - started < 4
        assert (await models.Task.get(id=tasks[1].id)).status == models.TaskStatus.RUNNING
        await dispatcher.cancel(tasks[1].id)
        assert (await finished(tasks[1].id, wait=10)).status == models.TaskStatus.CANCELLED
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
        await queue.disconnect()
    for name in ("worker-a", "worker-b"):
        assert "worker_started" in (tmp_path / f"{name}.log").read_text()


async def test_the_queue_dispatcher_feeds_a_worker_that_runs_the_task(
    app: Starlette, client: httpx.AsyncClient, backend: Backend, tmp_path: Path
) -> None:
    if not backend.uses_services:
        pytest.skip("workers take tasks from the Redis job queue")
    worker = start_worker(tmp_path, "solo")
    queue = make_queue(app.state.runtime.settings)
    try:
        owner = await make_user()
        project = await make_project(owner)
        task = await models.Task.create(project=project, created_by=owner, prompt="quick job")
        await QueueDispatcher(queue, app.state.runtime.broker).submit(task.id)
        done = await finished(task.id, wait=30)
        assert done.status == models.TaskStatus.SUCCEEDED
        assert done.worker_id and done.worker_id != app.state.runtime.executor.worker_id
    finally:
        worker.terminate()
        worker.wait(timeout=15)
        await queue.disconnect()
    await asyncio.sleep(0)
