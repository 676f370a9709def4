"""Budgets (CONTRACT §9): a task's maxBudgetUsd reaches the CLI as --max-budget-usd, and a project's monthly
budget refuses new tasks (FORBIDDEN, reason BUDGET_EXCEEDED) once this month's task costs reach it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from starlette.applications import Starlette

from aicm import models
from aicm.auth.permissions import DEVELOPER, MAINTAINER
from aicm.resolvers.budgets import month_start
from aicm.schema.relay import encode_id
from tests.conftest import AGENT_SCRIPTS
from tests.factories import add_member, make_project, make_user, token_for
from tests.graphql import assert_error, assert_ok, execute
from tests.schema.test_tasks import FOLLOW_UP, finished, pk, start

ENV_AGENT = [sys.executable, str(AGENT_SCRIPTS / "env_agent.py"), "{prompt}"]

CREATE = """mutation($p: ID!, $prompt: String!, $max: Float) {
  createTask(input: {projectId: $p, prompt: $prompt, maxBudgetUsd: $max}) { id maxBudgetUsd } }"""
BUDGET = """mutation($p: ID!, $budget: Float) {
  updateProject(id: $p, input: {monthlyBudgetUsd: $budget}) { monthlyBudgetUsd monthCostUsd } }"""
RENAME = 'mutation($p: ID!) { updateProject(id: $p, input: {name: "Renamed"}) { monthlyBudgetUsd } }'
COSTS = "query($p: ID!) { project(id: $p) { monthlyBudgetUsd monthCostUsd } }"
PROJECTS = "{ projects { edges { node { monthCostUsd } } } }"


@pytest.fixture(autouse=True)
def claude_flags(app: Starlette) -> Iterator[None]:
    """The runner passes Claude Code's flags (tests/conftest.py turns them off for everything else)."""
    runner = app.state.runtime.settings.runner
    saved, runner.agent_cli = runner.agent_cli, "claude"
    yield
    runner.agent_cli = saved


def flag(argv: list[str], name: str) -> str | None:
    """The value after ``name`` in ``argv``."""
    return argv[argv.index(name) + 1] if name in argv else None


async def world(app: Starlette):
    owner, maintainer, dev = await make_user(), await make_user(), await make_user()
    # BYPASS: no tool approvals to wait for (those are tests/runner/test_approvals.py's)
    project = await make_project(owner, "Budgeted", agent_permission_mode=models.AgentPermissionMode.BYPASS)
    await add_member(project, maintainer, MAINTAINER)
    await add_member(project, dev, DEVELOPER)
    return project, await token_for(app, maintainer), await token_for(app, dev)


def pid(project: models.Project) -> str:
    return encode_id("Project", project.id)


async def create(
    client: httpx.AsyncClient, token: str, project: models.Project, prompt: str, **extra
) -> dict:
    return await execute(client, CREATE, {"p": pid(project), "prompt": prompt, **extra}, token=token)


async def test_the_task_that_reaches_the_budget_succeeds_and_the_next_is_refused(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    # given a monthly budget of $1, set by a maintainer
    project, maintainer_token, dev_token = await world(app)
    set_budget = assert_ok(
        await execute(client, BUDGET, {"p": pid(project), "budget": 1.0}, token=maintainer_token)
    )
    assert set_budget["updateProject"] == {"monthlyBudgetUsd": 1.0, "monthCostUsd": 0.0}
    # when two tasks spend $0.60 each (the second one starts under the budget and reaches it)
    first = await finished(await start(client, dev_token, project, "cost:0.6"))
    second = await finished(await start(client, dev_token, project, "cost:0.6"))
    assert [first.status, second.status] == [models.TaskStatus.SUCCEEDED] * 2
    costs = assert_ok(await execute(client, COSTS, {"p": pid(project)}, token=dev_token))["project"]
    assert costs == {"monthlyBudgetUsd": 1.0, "monthCostUsd": pytest.approx(1.2)}
    # then the next createTask and followUpTask are refused, saying why
    for refused in (
        await create(client, dev_token, project, "one more"),
        await execute(
            client, FOLLOW_UP, {"id": encode_id("Task", second.id), "prompt": "more"}, token=dev_token
        ),
    ):
        error = assert_error(refused, "FORBIDDEN")
        assert error["extensions"]["reason"] == "BUDGET_EXCEEDED"
    assert await models.Task.filter(project_id=project.id).count() == 2
    # a name change keeps the budget; raising it lets tasks start again, and so does removing it
    assert (
        assert_ok(await execute(client, RENAME, {"p": pid(project)}, token=maintainer_token))[
            "updateProject"
        ]["monthlyBudgetUsd"]
        == 1.0
    )
    assert_ok(await execute(client, BUDGET, {"p": pid(project), "budget": 5.0}, token=maintainer_token))
    assert_ok(await create(client, dev_token, project, "under the new budget"))
    assert_ok(await execute(client, BUDGET, {"p": pid(project), "budget": 1.0}, token=maintainer_token))
    assert_error(await create(client, dev_token, project, "over again"), "FORBIDDEN")
    cleared = assert_ok(
        await execute(client, BUDGET, {"p": pid(project), "budget": None}, token=maintainer_token)
    )
    assert cleared["updateProject"]["monthlyBudgetUsd"] is None
    assert_ok(await create(client, dev_token, project, "no budget"))


async def test_only_this_months_tasks_count(app: Starlette, client: httpx.AsyncClient) -> None:
    # given a big spend last month and a small one this month
    project, maintainer_token, dev_token = await world(app)
    old = await finished(await start(client, dev_token, project, "cost:50"))
    await models.Task.filter(id=old.id).update(created_at=month_start() - timedelta(seconds=1))
    await finished(await start(client, dev_token, project, "cost:0.25"))
    other = await make_project(await make_user(), "Elsewhere")
    await models.Task.create(project=other, prompt="x", cost_usd=7.0, status=models.TaskStatus.SUCCEEDED)
    # then the month's cost is this month's tasks of this project only, and a $1 budget still lets tasks in
    costs = assert_ok(await execute(client, COSTS, {"p": pid(project)}, token=dev_token))["project"]
    assert costs["monthCostUsd"] == pytest.approx(0.25)
    listed = assert_ok(await execute(client, PROJECTS, token=dev_token))["projects"]["edges"]
    assert [edge["node"]["monthCostUsd"] for edge in listed] == [pytest.approx(0.25)]
    assert_ok(await execute(client, BUDGET, {"p": pid(project), "budget": 1.0}, token=maintainer_token))
    assert_ok(await create(client, dev_token, project, "fits"))


async def test_only_maintainers_set_the_budget(app: Starlette, client: httpx.AsyncClient) -> None:
    project, _, dev_token = await world(app)
    assert_error(
        await execute(client, BUDGET, {"p": pid(project), "budget": 100.0}, token=dev_token), "FORBIDDEN"
    )
    assert (await models.Project.get(id=project.id)).monthly_budget_usd is None


@pytest.mark.parametrize("value", [0, -1, 0.0, 2_000_000])
async def test_bad_amounts_are_refused(app: Starlette, client: httpx.AsyncClient, value: float) -> None:
    project, maintainer_token, dev_token = await world(app)
    bad_budget = await execute(client, BUDGET, {"p": pid(project), "budget": value}, token=maintainer_token)
    assert_error(bad_budget, "BAD_USER_INPUT", field="monthlyBudgetUsd")
    assert_error(
        await create(client, dev_token, project, "x", max=value), "BAD_USER_INPUT", field="maxBudgetUsd"
    )
    assert not await models.Task.filter(project_id=project.id).exists()


async def test_max_budget_reaches_the_cli_argv_and_a_follow_up_keeps_it(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    project, _, dev_token = await world(app)
    runner = app.state.runtime.settings.runner
    command, runner.command = runner.command, ENV_AGENT
    try:
        created = assert_ok(await create(client, dev_token, project, "capped", max=0.25))["createTask"]
        assert created["maxBudgetUsd"] == 0.25
        first = await finished(pk(created["id"]))
        follow = await execute(client, FOLLOW_UP, {"id": created["id"], "prompt": "again"}, token=dev_token)
        second = await finished(pk(assert_ok(follow)["followUpTask"]["id"]))
        uncapped = await finished(
            pk(assert_ok(await create(client, dev_token, project, "free"))["createTask"]["id"])
        )
    finally:
        runner.command = command
    assert flag(await _argv(first.id), "--max-budget-usd") == "0.25"
    assert second.max_budget_usd == 0.25 and flag(await _argv(second.id), "--max-budget-usd") == "0.25"
    assert "--max-budget-usd" not in await _argv(uncapped.id)


async def test_a_generic_agent_cli_gets_no_claude_flags(app: Starlette, client: httpx.AsyncClient) -> None:
    project, _, dev_token = await world(app)
    runner = app.state.runtime.settings.runner
    saved = runner.command, runner.agent_cli
    runner.command, runner.agent_cli = ENV_AGENT, "generic"
    try:
        task = await finished(
            pk(assert_ok(await create(client, dev_token, project, "go", max=3.0))["createTask"]["id"])
        )
    finally:
        runner.command, runner.agent_cli = saved
    assert task.max_budget_usd == 3.0
    assert await _argv(task.id) == ["go"]


async def test_the_demo_agent_stops_at_its_budget(app: Starlette, client: httpx.AsyncClient) -> None:
    # the bundled demo agent (the default test command) honours --max-budget-usd like the CLI
    project, _, dev_token = await world(app)
    created = assert_ok(await create(client, dev_token, project, "expensive cost:5", max=0.5))["createTask"]
    task = await finished(pk(created["id"]))
    assert task.status == models.TaskStatus.FAILED
    assert task.cost_usd == 0.5
    assert "maximum budget" in (task.error or "")


async def _argv(task_id: int) -> list[str]:
    """The arguments the env agent reported (after its script path)."""
    line = await models.TaskLog.get(task_id=task_id, kind="system")
    assert line.data is not None
    return line.data["argv"]
