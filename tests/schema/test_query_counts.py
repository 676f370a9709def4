"""Lists run a constant number of SQL statements whatever the page size (DataLoaders, no N+1)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import httpx
import pytest
from starlette.applications import Starlette

from aicm import models
from aicm.auth.permissions import DEVELOPER, VIEWER
from aicm.metrics import GIT_OPERATIONS
from aicm.workspaces.changes import FileChange, FileStatus, TaskChanges
from tests.factories import add_member, make_project, make_user, token_for
from tests.graphql import assert_ok, execute

PROJECTS = """
query($first: Int!) {
  projects(first: $first) {
    totalCount
    edges { node { owner { email } viewerRole { name } monthCostUsd monthlyBudgetUsd hasAgentCredential
                   members { user { email } role { name permissions } } } }
  }
}
"""

TASK_LOGS = """
query($first: Int!) {
  tasks(first: $first) { edges { node { prompt project { name } logs(first: 5) { seq } } } }
}
"""


TASK_CHANGES = """
query($first: Int!) {
  tasks(first: $first) { edges { node { branch changes { filesChanged files { path patch } } commits { sha }
                                        overlapsWith { id } } } }
}
"""


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.statements: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.lstrip().split(" ", 1)[0].upper() in {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"}:
            self.statements.append(message)


@contextmanager
def count_sql() -> Iterator[list[str]]:
    """Every SQL statement Tortoise sends while the block runs (its client logs each one at DEBUG)."""
    logger = logging.getLogger("tortoise.db_client")
    counter, level = _Counter(), logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    try:
        yield counter.statements
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)


async def _count_for_page(client: httpx.AsyncClient, token: str, size: int, document: str = PROJECTS) -> int:
    with count_sql() as statements:
        data = assert_ok(await execute(client, document, {"first": size}, token=token))
    (connection,) = data.values()
    assert len(connection["edges"]) == size
    return len(statements)


@pytest.mark.parametrize("viewer_kind", ["member", "admin"])
async def test_project_list_runs_constant_sql_at_page_sizes_5_and_50(
    app: Starlette, client: httpx.AsyncClient, viewer_kind: str
) -> None:
    # given 50 projects, each with an owner, a developer and a viewer, all visible to the viewer
    viewer = await make_user(roles=("member", "admin") if viewer_kind == "admin" else ("member",))
    for _ in range(50):
        project = await make_project(await make_user())
        await add_member(project, await make_user(), DEVELOPER)
        await add_member(project, viewer, VIEWER)
    token = await token_for(app, viewer)
    # when
    small = await _count_for_page(client, token, 5)
    large = await _count_for_page(client, token, 50)
    # then
    assert small == large, (small, large)
    assert large <= 11  # monthCostUsd: one grouped SUM for the page


@pytest.mark.parametrize("viewer_kind", ["member", "admin"])
async def test_task_logs_in_a_task_list_run_constant_sql_at_page_sizes_2_and_20(
    app: Starlette, client: httpx.AsyncClient, viewer_kind: str
) -> None:
    # given 20 tasks of a project the viewer reads, each with 8 stored log lines
    viewer = await make_user(roles=("member", "admin") if viewer_kind == "admin" else ("member",))
    project = await make_project(await make_user())
    await add_member(project, viewer, VIEWER)
    for _ in range(20):
        task = await models.Task.create(project=project, prompt="p", last_seq=8)
        await models.TaskLog.bulk_create(
            [
                models.TaskLog(
                    task=task, seq=seq, at=datetime.now(UTC), stream="stdout", kind="text", text="x"
                )
                for seq in range(1, 9)
            ]
        )
    token = await token_for(app, viewer)
    # when
    small = await _count_for_page(client, token, 2, TASK_LOGS)
    large = await _count_for_page(client, token, 20, TASK_LOGS)
    # then
    assert small == large, (small, large)
    assert large <= 8


async def test_a_tasks_logs_are_the_first_lines_after_after_seq(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    # given a task with 8 stored lines
    viewer = await make_user()
    project = await make_project(viewer)
    task = await models.Task.create(project=project, prompt="p", last_seq=8)
    for seq in range(1, 9):
        await models.TaskLog.create(task=task, seq=seq, at=datetime.now(UTC), stream="stdout", kind="text")
    token = await token_for(app, viewer)
    query = (
        "{ tasks { edges { node { a: logs(afterSeq: 2, first: 3) { seq } b: logs(afterSeq: 6) { seq } } } } }"
    )
    # when
    data = assert_ok(await execute(client, query, token=token))
    # then
    (node,) = [edge["node"] for edge in data["tasks"]["edges"]]
    assert [line["seq"] for line in node["a"]] == [3, 4, 5]
    assert [line["seq"] for line in node["b"]] == [7, 8]


def _git_commands() -> float:
    return sum(s.value for m in GIT_OPERATIONS.collect() for s in m.samples if s.name.endswith("_total"))


async def test_task_changes_in_a_task_list_run_constant_sql_and_no_git_at_page_sizes_5_and_50(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    # given 50 tasks with stored changes, every one touching a shared file (so all overlap)
    viewer = await make_user()
    project = await make_project(await make_user())
    await add_member(project, viewer, VIEWER)
    for n in range(50):
        files = [FileChange("shared.txt", FileStatus.MODIFIED, 1, 1, False, "@@ -1 +1 @@\n-a\n+b\n")]
        await models.Task.create(
            project=project,
            prompt="p",
            status=models.TaskStatus.SUCCEEDED,
            branch=f"aicm/task-x{n}",
            changes=TaskChanges(1, 1, 1, False, files).to_json(),
            changed_paths=["shared.txt"],
            commits=[],
        )
    token = await token_for(app, viewer)
    before = _git_commands()
    # when
    small = await _count_for_page(client, token, 5, TASK_CHANGES)
    large = await _count_for_page(client, token, 50, TASK_CHANGES)
    # then
    assert small == large, (small, large)
    assert large <= 8
    assert _git_commands() == before


def _reads(statements: list[str], table: str) -> list[str]:
    """The SELECTs reading rows of ``table`` (not a COUNT, not a subquery of another table's filter)."""
    return [
        s
        for s in statements
        if s.startswith("SELECT")
        and not s.startswith("SELECT COUNT")
        and f'FROM "{table}" WHERE' in s.split(" IN (")[0]
    ]


OWNERS_AND_MEMBERS = """
query($first: Int!) {
  projects(first: $first) {
    edges { node { id ...People } }
  }
}
fragment People on Project {
  owner { email }
  ... on Project { members { addedAt user { email } role { name } } }
  skipped: viewerRole @skip(if: true) { name }
}
"""


async def test_a_project_page_reads_owners_and_members_users_in_one_batch_through_fragments(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    # given 5 projects, each with an owner, a developer and the viewer
    viewer = await make_user()
    owners = []
    for _ in range(5):
        owner = await make_user()
        project = await make_project(owner)
        await add_member(project, await make_user(), DEVELOPER)
        await add_member(project, viewer, VIEWER)
        owners.append(owner.email)
    token = await token_for(app, viewer)
    # when the nested fields are spread from fragments
    with count_sql() as statements:
        data = assert_ok(await execute(client, OWNERS_AND_MEMBERS, {"first": 5}, token=token))
    # then the page's projects are read once (the nested fields do not re-check them), the owners' and the
    # members' users in one batch, and the skipped field not at all
    nodes = [edge["node"] for edge in data["projects"]["edges"]]
    assert sorted(node["owner"]["email"] for node in nodes) == sorted(owners)
    assert all(len(node["members"]) == 3 and node["members"][0]["role"]["name"] for node in nodes)
    assert all(viewer.email in [m["user"]["email"] for m in node["members"]] for node in nodes)
    assert all("skipped" not in node for node in nodes)
    assert len(_reads(statements, "projects")) == 1, statements
    assert len(_reads(statements, "project_members")) == 1, statements
    assert len([s for s in _reads(statements, "users") if '"id" IN' in s]) == 1, statements
