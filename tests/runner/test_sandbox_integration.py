"""Issue 15's hostile agent as real tasks: created through GraphQL, run by the app's executor in the sandbox.

The agent is ``fixtures/hostile_agent.py`` (a task's prompt is its JSON plan). The server's files are laid out
as badly as a careless install would: the directory holding the database, data directory and workspace root
and a directory holding the config file and ``.env`` are bound into the sandbox read-only, so only the
hiding rules keep them out. Skips only where bubblewrap (or, for the memory and process limits, a writable
cgroup) is missing; ``AICM_REQUIRE_SERVICES=1`` makes those skips failures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from aicm import models
from aicm.runner.isolation import sqlite_path
from aicm.runner.limits import Limits
from aicm.runner.workspace import branch_number
from tests.conftest import AGENT_SCRIPTS
from tests.factories import make_project, make_user, token_for
from tests.runner.test_sandbox import MiB, _skip_or_fail, need_cgroup, no_survivors, rss_kib
from tests.schema.test_tasks import finished, start

HOSTILE = AGENT_SCRIPTS / "hostile_agent.py"
SECRET = "server-secret-" + uuid.uuid4().hex
LIMITS = Limits(
    memory=256 * MiB, processes=64, file_size=8 * MiB, cpu_time=120, output_bytes=64 * MiB, line_bytes=MiB
)
WAIT = 60.0  # seconds any one task may take
EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 "  # a hidden file: /dev/null


@dataclass
class Server:
    """The app's runner settings as these tests changed them, and the files an agent must not see."""

    app: Starlette
    install: Path  # holds the config file and .env
    data_dir: Path
    workspaces: Path

    def set_limits(self, limits: Limits) -> None:
        self.app.state.runtime.executor.isolation.limits = limits


@pytest.fixture
def server(app: Starlette, db: None, tmp_path: Path) -> Iterator[Server]:
    executor = app.state.runtime.executor
    if not executor.isolation.status.active:
        _skip_or_fail(f"bubblewrap cannot run here: {executor.isolation.status.reason}")
    settings = executor.isolation.settings
    runner = settings.runner
    install = tmp_path / "install"
    install.mkdir()
    for name in ("aicm.yaml", ".env"):
        (install / name).write_text(SECRET)
    (install / "README").write_text("public")
    data_dir = Path(settings.app.data_dir).resolve()
    saved = (
        runner.command,
        list(runner.sandbox_paths.read_only),
        settings.config_path,
        executor.isolation.limits,
    )
    runner.command = ["{python}", str(HOSTILE), "plan", "{prompt}"]
    runner.sandbox_paths.read_only = [*runner.sandbox_paths.read_only, str(install), str(data_dir.parent)]
    settings.config_path = install / "aicm.yaml"
    executor.isolation.limits = LIMITS
    yield Server(app, install, data_dir, Path(runner.workspace_root).resolve())
    runner.command, runner.sandbox_paths.read_only, settings.config_path, executor.isolation.limits = saved


def plan(*steps: list[str]) -> str:
    return json.dumps({"steps": [list(step) for step in steps]})


async def run_task(client: httpx.AsyncClient, token: str, project: models.Project, *steps: list[str]) -> int:
    return await start(client, token, project, plan(*steps))


async def reports(task_id: int, action: str) -> dict[str, dict]:
    rows = await models.TaskLog.filter(task_id=task_id, stream="stdout", text__startswith='{"action"')
    found = [row.data for row in rows if row.data]
    return {r["target"]: r for r in found if r["action"] == action}


def worktree(server: Server, task: models.Task) -> Path:
    assert task.branch
    project_id = task.project_id  # type: ignore[attr-defined]
    return server.workspaces / "projects" / str(project_id) / "tasks" / str(branch_number(task.branch))


async def world(app: Starlette) -> tuple[models.User, models.Project, str]:
    owner = await make_user()
    return owner, await make_project(owner), await token_for(app, owner)


# --------------------------------------------------------------------------------------------- the sandbox


async def test_a_task_reads_and_writes_none_of_the_servers_files(
    app: Starlette, client: httpx.AsyncClient, server: Server
) -> None:
    owner, project, token = await world(app)
    own_home = app.state.runtime.executor.isolation.agent_home(owner.id)
    # another user's project, with a task whose worktree holds a secret, and that user's agent home
    other, other_project, other_token = await world(app)
    other_task = await finished(await run_task(client, other_token, other_project, ["sleep", "0"]), WAIT)
    assert other_task.status == models.TaskStatus.SUCCEEDED, other_task.error
    other_tree = worktree(server, other_task)
    (other_tree / "secret.md").write_text(SECRET)
    other_home = app.state.runtime.executor.isolation.agent_home(other.id)
    (other_home / ".claude").mkdir(exist_ok=True)
    (other_home / ".claude" / ".credentials.json").write_text(SECRET)
    jwt = server.data_dir / "jwt_secret"
    if not jwt.exists():  # the services backend signs with JWT_SECRET; plant the file a default install has
        jwt.write_text(SECRET)
    database = sqlite_path(app.state.runtime.settings.database.dsn)
    secrets = {
        "jwt": jwt,
        "other worktree": other_tree / "secret.md",
        "other home": other_home / ".claude" / ".credentials.json",
        "config": server.install / "aicm.yaml",
        "env": server.install / ".env",
        "environ": Path(f"/proc/{os.getpid()}/environ"),
    }
    if database is not None:
        secrets["database"] = database
    outside = {
        "data dir": server.data_dir / "planted",
        "other worktree": other_tree / "planted",
        "other home": other_home / "planted",
        "install": server.install / "planted",
        "system": Path("/usr/planted"),
        "workspace root": server.workspaces / "planted",
    }
    readable = [str(server.install / "README")]

    task_id = await run_task(
        client,
        token,
        project,
        ["read", *map(str, secrets.values()), *readable],
        ["write", *map(str, outside.values()), "mine.txt", str(own_home / "mine.txt")],
    )
    task = await finished(task_id, WAIT)

    assert task.status == models.TaskStatus.SUCCEEDED, task.error
    reads, writes = await reports(task_id, "read"), await reports(task_id, "write")
    for name, path in secrets.items():
        assert str(path) in reads, name
        assert not reads[str(path)]["ok"] or reads[str(path)]["detail"] == EMPTY, (
            name,
            reads[str(path)],
        )
        host = await asyncio.to_thread(path.read_bytes)
        assert host[:100].hex() not in reads[str(path)]["detail"], name
    assert all(reads[path]["ok"] for path in readable), reads  # the control: the read-only extra is there
    for name, path in outside.items():
        assert not writes[str(path)]["ok"], name
        assert not path.exists(), name
    assert writes["mine.txt"]["ok"] and "mine.txt" in (task.changed_paths or [])  # its worktree is its own
    assert (own_home / "mine.txt").read_text() == "hostile\n"  # its home too, inside the hidden data dir


async def test_git_works_in_the_worktree_but_other_branches_cannot_be_rewritten(
    app: Starlette, client: httpx.AsyncClient, server: Server
) -> None:
    _, project, token = await world(app)
    first = await finished(await run_task(client, token, project, ["write", "first.txt"]), WAIT)
    assert first.status == models.TaskStatus.SUCCEEDED, first.error
    other_branch = first.branch
    rewrite = [f"update-ref refs/heads/{other_branch} HEAD~0", f"branch -f {other_branch} HEAD"]

    task_id = await run_task(
        client,
        token,
        project,
        ["write", "new.txt"],
        ["git", "status --porcelain", "log --oneline -1", "diff --stat HEAD", "rev-parse --abbrev-ref HEAD"],
        ["git", *rewrite],
    )
    task = await finished(task_id, WAIT)

    assert task.status == models.TaskStatus.SUCCEEDED, task.error
    git = await reports(task_id, "git")
    assert git["status --porcelain"]["ok"] and "?? new.txt" in git["status --porcelain"]["detail"], git
    assert git["log --oneline -1"]["ok"] and git["diff --stat HEAD"]["ok"], git
    assert git["rev-parse --abbrev-ref HEAD"]["detail"].strip() == task.branch
    for command in rewrite:
        assert not git[command]["ok"], git[command]
    first_again = await models.Task.get(id=first.id)
    assert first_again.head_commit == first.head_commit
    repo = app.state.runtime.executor.workspaces.store.open(project.id)
    assert await repo.commit_of(f"refs/heads/{other_branch}") == first.head_commit


# ---------------------------------------------------------------------------------------------- the limits


async def test_a_fork_bomb_and_a_memory_hog_end_with_their_limit_while_another_task_runs_on(
    app: Starlette, client: httpx.AsyncClient, server: Server
) -> None:
    need_cgroup("pids")
    need_cgroup("memory")
    _, project, token = await world(app)
    bystander = await run_task(client, token, project, ["sleep", "3"], ["write", "calm.txt"])
    bomb = await run_task(client, token, project, ["forkbomb"])
    hog = await run_task(client, token, project, ["alloc", "1024"])

    bomb_task, hog_task = await finished(bomb, WAIT), await finished(hog, WAIT)
    calm = await finished(bystander, WAIT)

    assert bomb_task.status == models.TaskStatus.FAILED
    assert bomb_task.error == "Limit exceeded: runner.limits.processes (64)"
    assert "forked them all" not in json.dumps(await reports(bomb, "fork"))
    assert hog_task.status == models.TaskStatus.FAILED
    assert hog_task.error == "Limit exceeded: runner.limits.memory (256 MiB)"
    assert max(map(int, await reports(hog, "alloc")), default=0) < 256
    assert calm.status == models.TaskStatus.SUCCEEDED, calm.error
    assert "calm.txt" in (calm.changed_paths or [])


async def test_a_50_mb_line_and_2_million_lines_leave_the_server_bounded(
    app: Starlette, client: httpx.AsyncClient, server: Server
) -> None:
    _, project, token = await world(app)
    before = rss_kib()
    big = await finished(await run_task(client, token, project, ["bigline", "50"]), WAIT)
    server.set_limits(dataclasses.replace(LIMITS, output_bytes=256 * 1024))
    many_id = await run_task(client, token, project, ["lines", "2000000"])
    many = await finished(many_id, WAIT)
    growth_mib = (rss_kib() - before) / 1024

    assert big.status == models.TaskStatus.SUCCEEDED, big.error
    lines = await models.TaskLog.filter(task_id=big.id, stream="stdout", kind="text").values_list(
        "text", flat=True
    )
    longest = max(map(len, (line or "" for line in lines)))
    assert MiB <= longest < MiB + 100  # cut at line_bytes, with the count of what was dropped
    assert await models.TaskLog.filter(task_id=big.id, stream="system", text__contains="was cut").exists()
    assert many.status == models.TaskStatus.FAILED
    assert many.error == "Limit exceeded: runner.limits.output_bytes (256 KiB)"
    stored = await models.TaskLog.filter(task_id=many_id, stream="stdout").count()
    assert 10_000 < stored < 2_000_000 // 10  # what fit under the cap, then nothing
    assert growth_mib < 128, f"the server grew by {growth_mib:.0f} MiB"


async def test_file_size_and_cpu_time_limits_name_themselves_and_the_work_is_kept(
    app: Starlette, client: httpx.AsyncClient, server: Server
) -> None:
    _, project, token = await world(app)
    server.set_limits(dataclasses.replace(LIMITS, file_size=MiB, cpu_time=1))
    big = await run_task(client, token, project, ["write", "before.txt"], ["bigfile", "4"])
    busy = await run_task(client, token, project, ["spin"])
    big_task, busy_task = await finished(big, WAIT), await finished(busy, WAIT)

    assert big_task.status == models.TaskStatus.FAILED
    assert big_task.error == "Limit exceeded: runner.limits.file_size (1 MiB)"
    assert "before.txt" in (big_task.changed_paths or [])  # what it wrote is committed to its branch
    assert busy_task.status == models.TaskStatus.FAILED
    assert busy_task.error == "Limit exceeded: runner.limits.cpu_time (1s)"


async def test_without_network_a_task_cannot_reach_the_servers_port(
    app: Starlette, client: httpx.AsyncClient, server: Server
) -> None:
    _, project, token = await world(app)
    runner = app.state.runtime.settings.runner
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = str(listening.getsockname()[1])
        online = await finished(await run_task(client, token, project, ["connect", port]), WAIT)
        runner.network = False
        try:
            offline = await finished(await run_task(client, token, project, ["connect", port]), WAIT)
        finally:
            runner.network = True

    assert (await reports(online.id, "connect"))[port]["ok"]  # the control: reachable with the network
    assert offline.status == models.TaskStatus.SUCCEEDED, offline.error
    assert not (await reports(offline.id, "connect"))[port]["ok"]


async def test_a_child_kept_alive_after_the_agent_exits_ends_with_the_task(
    app: Starlette, client: httpx.AsyncClient, server: Server
) -> None:
    _, project, token = await world(app)
    marker = f"aicm-escape-{uuid.uuid4().hex}"

    task = await finished(await run_task(client, token, project, ["escape", marker]), WAIT)

    assert task.status == models.TaskStatus.SUCCEEDED, task.error
    assert (await reports(task.id, "escape"))[marker]["ok"]
    assert no_survivors(marker), f"a process of task {task.id} outlived it"  # survivors are killed, too
