"""Tasks end to end: create, run the (demo) agent, read logs, cancel, time out, follow up, and the queue."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from aicm import models
from aicm.auth.permissions import DEVELOPER, MAINTAINER, VIEWER
from aicm.schema.relay import encode_id
from tests.factories import add_member, make_project, make_user, token_for
from tests.graphql import assert_error, assert_ok, execute

CREATE = "mutation($p: ID!, $prompt: String!) { createTask(input: {projectId: $p, prompt: $prompt}) { id status } }"
TASK = "query($id: ID!) { task(id: $id) { status exitCode error costUsd startedAt finishedAt logs(first: 100) { seq stream kind text } } }"
CANCEL = "mutation($id: ID!) { cancelTask(id: $id) { status } }"
FOLLOW_UP = "mutation($id: ID!, $prompt: String!) { followUpTask(id: $id, prompt: $prompt) { id } }"


async def finished(task_id: int, wait: float = 20.0) -> models.Task:
    """The task once it has ended (bounded wait)."""
    deadline = time.monotonic() + wait
    while True:
        task = await models.Task.get(id=task_id)
        if task.status in models.FINISHED:
            return task
        assert time.monotonic() < deadline, f"task {task_id} still {task.status}"
        await asyncio.sleep(0.05)


async def status_becomes(task_id: int, status: models.TaskStatus, wait: float = 10.0) -> models.Task:
    deadline = time.monotonic() + wait
    while True:
        task = await models.Task.get(id=task_id)
        if task.status == status:
            return task
        assert time.monotonic() < deadline, f"task {task_id} is {task.status}, not {status}"
        await asyncio.sleep(0.05)


def pk(global_id: str) -> int:
    from aicm.schema.relay import decode_id

    return decode_id(global_id, "Task")


async def start(client: httpx.AsyncClient, token: str, project: models.Project, prompt: str) -> int:
    data = assert_ok(
        await execute(client, CREATE, {"p": encode_id("Project", project.id), "prompt": prompt}, token=token)
    )
    assert data["createTask"]["status"] == "PENDING"
    return pk(data["createTask"]["id"])


async def developer_world(app: Starlette):
    owner, dev = await make_user(), await make_user()
    project = await make_project(owner, "Agents")
    await add_member(project, dev, DEVELOPER)
    return owner, dev, project, await token_for(app, dev)


async def test_a_task_runs_to_success_with_its_stream_json_parsed(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    _, _, project, token = await developer_world(app)
    task_id = await start(client, token, project, "fix the invoice rounding")
    task = await finished(task_id)
    assert task.status == models.TaskStatus.SUCCEEDED, task.error
    data = assert_ok(await execute(client, TASK, {"id": encode_id("Task", task_id)}, token=token))["task"]
    assert data["exitCode"] == 0 and data["costUsd"] > 0 and data["startedAt"] and data["finishedAt"]
    kinds = [line["kind"] for line in data["logs"]]
    assert kinds[0] == "system" and kinds[-1] == "result" and "assistant" in kinds
    assert [line["seq"] for line in data["logs"]] == list(range(1, len(kinds) + 1))
    assert task.cli_session_id  # from the init line
    worktree = Path(app.state.runtime.settings.runner.workspace_root) / "projects" / str(project.id)
    assert (worktree / "tasks" / str(task_id)).is_dir()  # the agent ran in the task's own worktree
    assert task.branch == f"aicm/task-{task_id}" and task.head_commit and task.base_ref == "main"
    assert task.changed_paths == ["AICM_DEMO.md"]  # the demo agent's note: a real diff


async def test_a_non_zero_exit_fails_the_task(app: Starlette, client: httpx.AsyncClient) -> None:
    _, _, project, token = await developer_world(app)
    task = await finished(await start(client, token, project, "please fail stderr"))
    assert task.status == models.TaskStatus.FAILED
    assert task.exit_code == 1
    assert await models.TaskLog.filter(task_id=task.id, stream="stderr").exists()


async def test_cancel_kills_the_whole_process_group(app: Starlette, client: httpx.AsyncClient) -> None:
    _, _, project, token = await developer_world(app)
    task_id = await start(client, token, project, "spawn-child sleep:30")
    await status_becomes(task_id, models.TaskStatus.RUNNING)
    child_pid = await _child_pid(task_id)
    data = assert_ok(await execute(client, CANCEL, {"id": encode_id("Task", task_id)}, token=token))
    assert data["cancelTask"]["status"] in ("RUNNING", "CANCELLED")
    task = await finished(task_id)
    assert task.status == models.TaskStatus.CANCELLED
    deadline = time.monotonic() + 10
    while _alive(child_pid):
        assert time.monotonic() < deadline, "the agent's child survived the cancel"
        await asyncio.sleep(0.05)
    last = await models.TaskLog.filter(task_id=task_id).order_by("-seq").first()
    assert last is not None and last.stream == "system"


async def _child_pid(task_id: int) -> int:
    deadline = time.monotonic() + 10
    while True:
        for line in await models.TaskLog.filter(task_id=task_id, text__contains="Started background process"):
            return _host_pid(int(line.text.rsplit("pid ", 1)[1].rstrip(")")))
        assert time.monotonic() < deadline, "the agent never started its child"
        await asyncio.sleep(0.05)


def _host_pid(pid: int) -> int:
    """The child's pid as this process sees it: in the sandbox's PID namespace the agent saw another one."""
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or b"time.sleep(60)" not in (entry / "cmdline").read_bytes():
                continue
            nspids = next(x for x in (entry / "status").read_text().splitlines() if x.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        if int(nspids.split()[-1]) == pid:
            return int(entry.name)
    raise AssertionError(f"no process runs the agent's child (pid {pid} in its namespace)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


async def test_a_pending_task_is_cancelled_at_once(app: Starlette, client: httpx.AsyncClient) -> None:
    _, _, project, token = await developer_world(app)
    runtime = app.state.runtime
    blockers = [
        await start(client, token, project, "sleep:30") for _ in range(runtime.settings.runner.max_concurrent)
    ]
    queued = await start(client, token, project, "never runs")
    for task_id in blockers:
        await status_becomes(task_id, models.TaskStatus.RUNNING)
    assert (await models.Task.get(id=queued)).status == models.TaskStatus.PENDING
    data = assert_ok(await execute(client, CANCEL, {"id": encode_id("Task", queued)}, token=token))
    assert data["cancelTask"]["status"] == "CANCELLED"
    for task_id in blockers:
        assert_ok(await execute(client, CANCEL, {"id": encode_id("Task", task_id)}, token=token))
    for task_id in [*blockers, queued]:
        assert (await finished(task_id)).status == models.TaskStatus.CANCELLED


async def test_the_concurrency_cap_queues_tasks_in_order(app: Starlette, client: httpx.AsyncClient) -> None:
    _, _, project, token = await developer_world(app)
    cap = app.state.runtime.settings.runner.max_concurrent
    ids = [await start(client, token, project, "sleep:0.6") for _ in range(cap + 2)]
    peak = 0
    deadline = time.monotonic() + 20
    while await models.Task.filter(id__in=ids, status__in=list(models.FINISHED)).count() < len(ids):
        running = await models.Task.filter(id__in=ids, status=models.TaskStatus.RUNNING).count()
        peak = max(peak, running)
        assert running <= cap
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert peak == cap
    started = [task.started_at for task in await models.Task.filter(id__in=ids).order_by("id")]
    assert started == sorted(started)  # first in, first out


async def test_timeout_ends_the_task(app: Starlette, client: httpx.AsyncClient) -> None:
    _, _, project, token = await developer_world(app)
    runner = app.state.runtime.settings.runner
    limit, runner.timeout = runner.timeout, 0.5
    try:
        task = await finished(await start(client, token, project, "sleep:30"))
    finally:
        runner.timeout = limit
    assert task.status == models.TaskStatus.TIMED_OUT
    assert "Timed out" in (task.error or "")


async def test_a_prompt_full_of_shell_metacharacters_reaches_the_agent_literally(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    _, _, project, token = await developer_world(app)
    runner = app.state.runtime.settings.runner
    script = "import sys; print(sys.argv[1])"  # a non-JSON stdout line is stored as it was printed
    command, runner.command = runner.command, [sys.executable, "-c", script, "{prompt}"]
    prompt = "$(touch /tmp/pwned); rm -rf ~ && echo \"q\" 'x' `id` | ; > {prompt} {} \\ * ?"
    try:
        task = await finished(await start(client, token, project, prompt))
    finally:
        runner.command = command
    assert task.status == models.TaskStatus.SUCCEEDED
    lines = await models.TaskLog.filter(task_id=task.id, stream="stdout").values_list("text", flat=True)
    assert lines == [prompt]


async def test_an_agent_that_cannot_start_fails_with_a_clear_error(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    _, _, project, token = await developer_world(app)
    runner = app.state.runtime.settings.runner
    command, runner.command = runner.command, ["no-such-agent-binary", "{prompt}"]
    try:
        task = await finished(await start(client, token, project, "anything"))
    finally:
        runner.command = command
    assert task.status == models.TaskStatus.FAILED
    assert "no-such-agent-binary" in (task.error or "")


async def test_a_follow_up_resumes_the_cli_session(app: Starlette, client: httpx.AsyncClient) -> None:
    _, _, project, token = await developer_world(app)
    first = await finished(await start(client, token, project, "first run"))
    data = assert_ok(
        await execute(
            client, FOLLOW_UP, {"id": encode_id("Task", first.id), "prompt": "and now the tests"}, token=token
        )
    )
    second = await finished(pk(data["followUpTask"]["id"]))
    assert second.status == models.TaskStatus.SUCCEEDED
    assert second.parent_id == first.id
    assert (
        second.cli_session_id == first.cli_session_id
    )  # the demo agent keeps the session it was resumed with
    opening = await models.TaskLog.filter(task_id=second.id, kind="assistant").order_by("seq").first()
    assert opening is not None and "Picking up where we left off" in (opening.text or "")


async def test_task_permissions(app: Starlette, client: httpx.AsyncClient) -> None:
    _, _, project, dev_token = await developer_world(app)
    viewer, other_dev, maintainer, outsider = [await make_user() for _ in range(4)]
    await add_member(project, viewer, VIEWER)
    await add_member(project, other_dev, DEVELOPER)
    await add_member(project, maintainer, MAINTAINER)
    variables = {"p": encode_id("Project", project.id), "prompt": "sleep:30"}
    # viewers read but do not create
    assert_error(await execute(client, CREATE, variables, token=await token_for(app, viewer)), "FORBIDDEN")
    task_id = await start(client, dev_token, project, "sleep:30")
    gid = {"id": encode_id("Task", task_id)}
    assert_ok(await execute(client, TASK, gid, token=await token_for(app, viewer)))
    assert_error(await execute(client, TASK, gid, token=await token_for(app, outsider)), "NOT_FOUND")
    # another developer cannot cancel it; a maintainer can
    assert_error(await execute(client, CANCEL, gid, token=await token_for(app, other_dev)), "FORBIDDEN")
    assert_error(await execute(client, CANCEL, gid, token=await token_for(app, viewer)), "FORBIDDEN")
    assert_ok(await execute(client, CANCEL, gid, token=await token_for(app, maintainer)))
    assert (await finished(task_id)).status == models.TaskStatus.CANCELLED


async def test_the_creator_cancels_their_own_task(app: Starlette, client: httpx.AsyncClient) -> None:
    _, _, project, token = await developer_world(app)
    task_id = await start(client, token, project, "sleep:30")
    assert_ok(await execute(client, CANCEL, {"id": encode_id("Task", task_id)}, token=token))
    assert (await finished(task_id)).status == models.TaskStatus.CANCELLED


@pytest.mark.parametrize("prompt", ["", "   ", "nul\x00here"])
async def test_bad_prompts_are_refused(app: Starlette, client: httpx.AsyncClient, prompt: str) -> None:
    _, _, project, token = await developer_world(app)
    result = await execute(
        client, CREATE, {"p": encode_id("Project", project.id), "prompt": prompt}, token=token
    )
    assert_error(result, "BAD_USER_INPUT", field="prompt")


async def test_tasks_list_and_project_tasks(app: Starlette, client: httpx.AsyncClient) -> None:
    _, _, project, token = await developer_world(app)
    ids = [await start(client, token, project, f"run {n}") for n in range(3)]
    for task_id in ids:
        await finished(task_id)
    data = assert_ok(
        await execute(
            client,
            "query($p: ID!) { tasks(projectId: $p, status: SUCCEEDED, first: 2) { totalCount edges { node { id } } } "
            "project(id: $p) { tasks(first: 5) { totalCount } } }",
            {"p": encode_id("Project", project.id)},
            token=token,
        )
    )
    assert data["tasks"]["totalCount"] == 3
    assert [pk(e["node"]["id"]) for e in data["tasks"]["edges"]] == ids[::-1][:2]
    assert data["project"]["tasks"]["totalCount"] == 3


async def test_deleting_a_project_deletes_its_tasks_and_logs(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    owner, _, project, token = await developer_world(app)
    task_id = await start(client, token, project, "short")
    await finished(task_id)
    assert_ok(
        await execute(
            client,
            "mutation($id: ID!) { deleteProject(id: $id) }",
            {"id": encode_id("Project", project.id)},
            token=await token_for(app, owner),
        )
    )
    assert not await models.Task.filter(id=task_id).exists()
    assert not await models.TaskLog.filter(task_id=task_id).exists()


async def test_creating_a_task_in_an_archived_project_conflicts(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    owner, _, project, token = await developer_world(app)
    assert_ok(
        await execute(
            client,
            "mutation($id: ID!) { archiveProject(id: $id) { id } }",
            {"id": encode_id("Project", project.id)},
            token=await token_for(app, owner),
        )
    )
    result = await execute(
        client, CREATE, {"p": encode_id("Project", project.id), "prompt": "x"}, token=token
    )
    assert_error(result, "CONFLICT")
