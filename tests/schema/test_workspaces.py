"""Tasks on real git branches (CONTRACT §8): a file:// bare remote made here, the agent a small script."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from aicm import models
from aicm.metrics import GIT_OPERATIONS, record_git_operation
from aicm.schema.relay import decode_id, encode_id
from aicm.workspaces.git import Git
from tests.factories import make_project, make_user, token_for
from tests.graphql import assert_error, assert_ok, execute
from tests.schema.test_tasks import finished, pk
from tests.workspaces.helpers import Upstream, sh
from tests.workspaces.https_remote import GitHttpsRemote

AGENT = Path(__file__).resolve().parents[1] / "runner" / "fixtures" / "git_agent.py"

CREATE = """mutation($p: ID!, $prompt: String!, $base: String) {
  createTask(input: {projectId: $p, prompt: $prompt, baseRef: $base}) { id }
}"""
FOLLOW_UP = "mutation($id: ID!, $prompt: String!) { followUpTask(id: $id, prompt: $prompt) { id } }"
CANCEL = "mutation($id: ID!) { cancelTask(id: $id) { status } }"
MERGE = "mutation($id: ID!, $s: MergeStrategy!) { mergeTask(id: $id, input: {strategy: $s}) { mergedAt } }"
PUSH = "mutation($id: ID!) { pushTask(id: $id) { pushedAt } }"
TASK = """query($id: ID!) { task(id: $id) {
  status branch baseRef baseCommit headCommit pushedAt mergedAt
  commits { sha message authorName authorEmail }
  changes { filesChanged additions deletions truncated files { path status additions deletions patch } }
  overlapsWith { id }
} }"""
CREATE_PROJECT = """mutation($url: String!) {
  createProject(input: {name: "Over HTTPS", repositoryUrl: $url}) { id hasCredential }
}"""
SET_CREDENTIAL = """mutation($p: ID!, $t: String) {
  setProjectCredential(projectId: $p, input: {token: $t}) { hasCredential }
}"""
TOKEN = "ghp_ProductToken0123456789abcdefSECRET"
LIST = "query($p: ID!) { tasks(projectId: $p, first: 50) { edges { node { changes { filesChanged } } } } }"


def plan(label: str, **steps: object) -> str:
    return f"{label}\n{json.dumps(steps)}"


@pytest.fixture
def git_agent(app: Starlette) -> Iterator[None]:
    runner = app.state.runtime.settings.runner
    saved = runner.command, runner.timeout
    runner.command = [sys.executable, str(AGENT), "{prompt}"]
    yield
    runner.command, runner.timeout = saved


@pytest.fixture
async def upstream(tmp_path: Path) -> Upstream:
    remote = Upstream(Git(), tmp_path)
    await remote.create({"README.md": "hello\n", "src/app.py": "print('v1')\n"})
    return remote


async def world(app: Starlette, upstream: Upstream) -> tuple[models.Project, str]:
    owner = await make_user(name="Olga Owner")
    project = await make_project(owner, repository_url=upstream.url)
    return project, await token_for(app, owner)


async def start(client: httpx.AsyncClient, token: str, project: models.Project, prompt: str) -> int:
    variables = {"p": encode_id("Project", project.id), "prompt": prompt}
    return pk(assert_ok(await execute(client, CREATE, variables, token=token))["createTask"]["id"])


async def read(client: httpx.AsyncClient, token: str, task_id: int) -> dict:
    return assert_ok(await execute(client, TASK, {"id": encode_id("Task", task_id)}, token=token))["task"]


async def branch_files(upstream: Upstream, branch: str) -> dict[str, str]:
    """Every file of ``branch`` as the remote has it (the task branches are pushed after every run)."""
    names = await sh(upstream.git, "--git-dir", str(upstream.bare), "ls-tree", "-r", "--name-only", branch)
    return {
        name: await sh(upstream.git, "--git-dir", str(upstream.bare), "show", f"{branch}:{name}")
        for name in names.split()
    }


async def test_parallel_tasks_keep_their_own_changes_overlap_and_the_second_merge_conflicts(
    app: Starlette, client: httpx.AsyncClient, git_agent: None, upstream: Upstream
) -> None:
    project, token = await world(app, upstream)
    first = await start(
        client, token, project, plan("Say hi", write={"README.md": "hi from one\n"}, sleep=0.5)
    )
    second = await start(
        client, token, project, plan("Say yo", write={"README.md": "yo from two\n"}, sleep=0.5)
    )
    for task_id in (first, second):
        assert (await finished(task_id)).status == models.TaskStatus.SUCCEEDED

    one, two = await read(client, token, first), await read(client, token, second)
    assert one["branch"] == f"aicm/task-{first}" and two["branch"] == f"aicm/task-{second}"
    assert one["baseRef"] == "main" and one["baseCommit"] == await upstream.head()
    for data, text in ((one, "hi from one"), (two, "yo from two")):
        assert data["changes"]["filesChanged"] == 1 and data["pushedAt"]
        (change,) = data["changes"]["files"]
        assert (change["path"], change["status"], change["additions"], change["deletions"]) == (
            "README.md",
            "MODIFIED",
            1,
            1,
        )
        assert f"+{text}" in change["patch"] and "-hello" in change["patch"]
        assert [c["message"] for c in data["commits"]] == [data["commits"][0]["message"]]
        assert data["commits"][0]["authorName"] == "Olga Owner"
    assert one["commits"][0]["message"] == "Say hi"
    assert (await branch_files(upstream, one["branch"]))["README.md"] == "hi from one\n"
    assert (await branch_files(upstream, two["branch"]))["README.md"] == "yo from two\n"
    assert one["overlapsWith"] == [{"id": encode_id("Task", second)}]
    assert two["overlapsWith"] == [{"id": encode_id("Task", first)}]

    merged = await execute(client, MERGE, {"id": encode_id("Task", first), "s": "MERGE"}, token=token)
    assert assert_ok(merged)["mergeTask"]["mergedAt"]
    main_after_merge = await upstream.head()
    assert (await branch_files(upstream, "main"))["README.md"] == "hi from one\n"

    conflict = await execute(client, MERGE, {"id": encode_id("Task", second), "s": "SQUASH"}, token=token)
    assert_error(conflict, "CONFLICT")
    assert await upstream.head() == main_after_merge  # nothing changed
    assert (await read(client, token, second))["mergedAt"] is None
    assert (await read(client, token, first))["overlapsWith"] == []  # merged tasks no longer warn


async def test_failed_cancelled_and_timed_out_runs_keep_what_the_agent_wrote(
    app: Starlette, client: httpx.AsyncClient, git_agent: None, upstream: Upstream
) -> None:
    project, token = await world(app, upstream)
    app.state.runtime.settings.runner.timeout = 1.5
    failed = await start(client, token, project, plan("Fail", write={"failed.txt": "f\n"}, exit=3))
    timed_out = await start(client, token, project, plan("Hang", write={"slow.txt": "s\n"}, sleep=30))
    cancelled = await start(client, token, project, plan("Stop", write={"stopped.txt": "c\n"}, sleep=30))
    worktree = Path(app.state.runtime.settings.runner.workspace_root) / "projects" / str(project.id) / "tasks"
    deadline = time.monotonic() + 20
    while not (worktree / str(cancelled) / "stopped.txt").exists():
        assert time.monotonic() < deadline, "the agent never wrote its file"
        await asyncio.sleep(0.05)
    assert_ok(await execute(client, CANCEL, {"id": encode_id("Task", cancelled)}, token=token))

    expected = {
        failed: (models.TaskStatus.FAILED, "failed.txt"),
        timed_out: (models.TaskStatus.TIMED_OUT, "slow.txt"),
        cancelled: (models.TaskStatus.CANCELLED, "stopped.txt"),
    }
    for task_id, (status, name) in expected.items():
        task = await finished(task_id, wait=30)
        assert task.status == status, task.error
        data = await read(client, token, task_id)
        assert [f["path"] for f in data["changes"]["files"]] == [name]
        assert name in await branch_files(upstream, data["branch"])


async def test_a_follow_up_continues_the_branch_and_the_moving_base_never_shows_in_changes(
    app: Starlette, client: httpx.AsyncClient, git_agent: None, upstream: Upstream
) -> None:
    project, token = await world(app, upstream)
    first = await start(client, token, project, plan("Start", write={"a.txt": "a\n"}))
    assert (await finished(first)).status == models.TaskStatus.SUCCEEDED
    await upstream.commit({"upstream.txt": "later on main\n"})  # the base branch moves on

    variables = {"id": encode_id("Task", first), "prompt": plan("Continue", write={"b.txt": "b\n"})}
    follow_up = pk(assert_ok(await execute(client, FOLLOW_UP, variables, token=token))["followUpTask"]["id"])
    assert (await finished(follow_up)).status == models.TaskStatus.SUCCEEDED

    data = await read(client, token, follow_up)
    assert data["branch"] == f"aicm/task-{first}"
    assert [f["path"] for f in data["changes"]["files"]] == ["a.txt", "b.txt"]
    assert [c["message"] for c in data["commits"]] == ["Start", "Continue"]
    assert (await read(client, token, first))["headCommit"] == data["headCommit"]  # refreshed on both
    files = await branch_files(upstream, data["branch"])
    assert set(files) == {"README.md", "src/app.py", "a.txt", "b.txt"}


async def test_an_unknown_base_ref_is_bad_input_and_a_tag_works(
    app: Starlette, client: httpx.AsyncClient, git_agent: None, upstream: Upstream
) -> None:
    project, token = await world(app, upstream)
    first = await start(client, token, project, plan("Clone it"))
    assert (await finished(first)).status == models.TaskStatus.SUCCEEDED  # the repository now exists here
    variables = {"p": encode_id("Project", project.id), "prompt": "x", "base": "no-such-branch"}
    assert_error(await execute(client, CREATE, variables, token=token), "BAD_USER_INPUT", field="baseRef")

    # a tag made upstream after the clone is found (the check fetches once before it refuses)
    tagged = await upstream.commit({"v2.txt": "two\n"}, "Release 2")
    await sh(upstream.git, "tag", "v2", cwd=upstream.work)
    await sh(upstream.git, "push", "--quiet", "origin", "v2", cwd=upstream.work)
    await upstream.commit({"after.txt": "later\n"}, "After the release")
    variables = {"p": encode_id("Project", project.id), "prompt": plan("From v2"), "base": "v2"}
    task_id = pk(assert_ok(await execute(client, CREATE, variables, token=token))["createTask"]["id"])
    assert (await finished(task_id)).status == models.TaskStatus.SUCCEEDED
    data = await read(client, token, task_id)
    assert (data["baseRef"], data["baseCommit"]) == ("v2", tagged)


async def test_the_default_branch_comes_from_the_remote_and_is_settable(
    app: Starlette, client: httpx.AsyncClient, git_agent: None, upstream: Upstream
) -> None:
    project, token = await world(app, upstream)
    assert (await finished(await start(client, token, project, plan("Clone")))).status == (
        models.TaskStatus.SUCCEEDED
    )
    update = "mutation($id: ID!, $b: String!) { updateProject(id: $id, input: {defaultBranch: $b}) { defaultBranch } }"
    query = "query($id: ID!) { project(id: $id) { defaultBranch hasCredential } }"
    variables = {"id": encode_id("Project", project.id)}
    assert assert_ok(await execute(client, query, variables, token=token))["project"] == {
        "defaultBranch": "main",
        "hasCredential": False,
    }
    bad = await execute(client, update, variables | {"b": "no-such-branch"}, token=token)
    assert_error(bad, "BAD_USER_INPUT", field="defaultBranch")
    await sh(upstream.git, "push", "--quiet", "origin", "HEAD:refs/heads/develop", cwd=upstream.work)
    await app.state.runtime.workspaces.store.open(project.id).fetch()
    changed = await execute(client, update, variables | {"b": "develop"}, token=token)
    assert assert_ok(changed)["updateProject"]["defaultBranch"] == "develop"


async def test_worktrees_past_retention_are_removed_and_a_follow_up_checks_the_branch_out_again(
    app: Starlette, client: httpx.AsyncClient, git_agent: None, upstream: Upstream
) -> None:
    project, token = await world(app, upstream)
    first = await start(client, token, project, plan("Keep me", write={"kept.txt": "k\n"}))
    assert (await finished(first)).status == models.TaskStatus.SUCCEEDED
    workspaces = app.state.runtime.workspaces
    path = workspaces.store.worktree_path(project.id, first)
    assert path.is_dir()
    await workspaces.sweep()
    assert path.is_dir()  # not old enough yet

    await models.Task.filter(id=first).update(finished_at=datetime.now(UTC) - timedelta(days=8))
    assert await workspaces.sweep() >= 1
    assert not path.exists()

    variables = {"id": encode_id("Task", first), "prompt": plan("Again", write={"more.txt": "m\n"})}
    follow_up = pk(assert_ok(await execute(client, FOLLOW_UP, variables, token=token))["followUpTask"]["id"])
    assert (await finished(follow_up)).status == models.TaskStatus.SUCCEEDED
    assert (path / "kept.txt").read_text() == "k\n"  # the branch was checked out again
    assert [f["path"] for f in (await read(client, token, follow_up))["changes"]["files"]] == [
        "kept.txt",
        "more.txt",
    ]


async def test_listing_tasks_with_their_changes_runs_no_git(
    app: Starlette, client: httpx.AsyncClient, git_agent: None, upstream: Upstream
) -> None:
    project, token = await world(app, upstream)
    for n in range(3):
        task_id = await start(client, token, project, plan(f"Task {n}", write={f"f{n}.txt": "x\n"}))
        assert (await finished(task_id)).status == models.TaskStatus.SUCCEEDED

    def git_commands() -> float:
        return sum(s.value for m in GIT_OPERATIONS.collect() for s in m.samples if s.name.endswith("_total"))

    before = git_commands()
    data = assert_ok(await execute(client, LIST, {"p": encode_id("Project", project.id)}, token=token))
    assert [e["node"]["changes"]["filesChanged"] for e in data["tasks"]["edges"]] == [1, 1, 1]
    assert git_commands() == before


async def test_push_needs_a_remote_and_merge_needs_a_maintainer(
    app: Starlette, client: httpx.AsyncClient, git_agent: None
) -> None:
    owner = await make_user()
    project = await make_project(owner)  # no repositoryUrl: an empty repository with one commit
    token = await token_for(app, owner)
    task_id = await start(client, token, project, plan("Local", write={"x.txt": "x\n"}))
    assert (await finished(task_id)).status == models.TaskStatus.SUCCEEDED
    assert_error(
        await execute(client, PUSH, {"id": encode_id("Task", task_id)}, token=token),
        "BAD_USER_INPUT",
        field="repositoryUrl",
    )
    outsider = await token_for(app, await make_user())
    variables = {"id": encode_id("Task", task_id), "s": "REBASE"}
    assert_error(await execute(client, MERGE, variables, token=outsider), "NOT_FOUND")
    assert assert_ok(await execute(client, MERGE, variables, token=token))["mergeTask"]["mergedAt"]


@pytest.fixture
def https(app: Starlette, upstream: Upstream) -> Iterator[GitHttpsRemote]:
    """``upstream`` served over smart HTTP with TLS on loopback; the server's git trusts its certificate."""
    with GitHttpsRemote(upstream.bare.parent, TOKEN) as server:
        workspaces = app.state.runtime.workspaces
        saved = workspaces.git
        trusting = Git(
            timeout=30, extra_env={"GIT_SSL_CAINFO": str(server.ca_file)}, on_operation=record_git_operation
        )
        workspaces.git = workspaces.store.git = trusting
        try:
            yield server
        finally:
            workspaces.git = workspaces.store.git = saved


async def test_a_credential_clones_and_pushes_over_https_and_is_never_shown(
    app: Starlette,
    client: httpx.AsyncClient,
    git_agent: None,
    upstream: Upstream,
    https: GitHttpsRemote,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    token = await token_for(app, await make_user())
    created = assert_ok(await execute(client, CREATE_PROJECT, {"url": https.url("origin.git")}, token=token))
    project_id = created["createProject"]["id"]
    assert created["createProject"]["hasCredential"] is False

    # without the credential the clone is refused, with a clear error on the task
    project = await models.Project.get(id=decode_id(project_id, "Project"))
    refused = await start(client, token, project, plan("No token"))
    failed = await finished(refused)
    assert failed.status == models.TaskStatus.FAILED and "Could not prepare the repository" in (
        failed.error or ""
    )

    set_it = await execute(client, SET_CREDENTIAL, {"p": project_id, "t": TOKEN}, token=token)
    assert assert_ok(set_it)["setProjectCredential"]["hasCredential"] is True
    task_id = await start(client, token, project, plan("Over https", write={"pushed.txt": "secure\n"}))
    task = await finished(task_id)
    assert task.status == models.TaskStatus.SUCCEEDED, task.error
    assert (await branch_files(upstream, f"aicm/task-{task_id}"))["pushed.txt"] == "secure\n"
    pushed = await execute(client, PUSH, {"id": encode_id("Task", task_id)}, token=token)
    assert assert_ok(pushed)["pushTask"]["pushedAt"]
    assert any("git-receive-pack" in path for _, path, status in https.requests if status == 200)

    # the token is nowhere: logs, errors, task lines, audit rows, the stored project row
    stored = await models.Project.get(id=project.id)
    assert stored.credential_kind == "token" and TOKEN not in (stored.credential_secret or "")
    audit = await models.AuditLog.filter(target_type="Project", target_id=str(project.id)).values()
    assert "project.set_credential" in [row["action"] for row in audit]
    lines = await models.TaskLog.filter(task_id__in=[refused, task_id]).values_list("text", flat=True)
    for text in [caplog.text, str(audit), failed.error or "", *map(str, lines)]:
        assert TOKEN not in text

    # clearing it is allowed, with neither value
    cleared = await execute(client, SET_CREDENTIAL, {"p": project_id, "t": None}, token=token)
    assert assert_ok(cleared)["setProjectCredential"]["hasCredential"] is False


async def test_recovering_a_lost_workers_task_commits_what_its_worktree_holds(
    app: Starlette, client: httpx.AsyncClient, upstream: Upstream
) -> None:
    # given a task whose worker died mid-run, its worktree (on this machine) holding the agent's file
    project, token = await world(app, upstream)
    task = await models.Task.create(project=project, prompt="Lost\nmore", created_by_id=project.owner_id)
    task = await models.Task.get(id=task.id).prefetch_related("project")
    tree = await app.state.runtime.workspaces.prepare(task)
    (tree.path / "lost.txt").write_text("saved anyway\n")
    expired = datetime.now(UTC) - timedelta(minutes=5)
    await models.Task.filter(id=task.id).update(status=models.TaskStatus.RUNNING, lease_expires_at=expired)
    # when
    await app.state.runtime.executor.recover(single_process=False)
    # then
    data = await read(client, token, task.id)
    assert data["status"] == "FAILED"
    assert [f["path"] for f in data["changes"]["files"]] == ["lost.txt"]
    assert [c["message"] for c in data["commits"]] == ["Lost"]
    assert (await branch_files(upstream, data["branch"]))["lost.txt"] == "saved anyway\n"


async def test_deleting_a_project_removes_its_repository_and_worktrees(
    app: Starlette, client: httpx.AsyncClient, git_agent: None, upstream: Upstream
) -> None:
    project, token = await world(app, upstream)
    assert (await finished(await start(client, token, project, plan("Work")))).status == (
        models.TaskStatus.SUCCEEDED
    )
    directory = app.state.runtime.workspaces.store.project_dir(project.id)
    assert (directory / "repo.git").is_dir()
    delete = "mutation($id: ID!) { deleteProject(id: $id) }"
    assert assert_ok(await execute(client, delete, {"id": encode_id("Project", project.id)}, token=token))
    assert not directory.exists()
