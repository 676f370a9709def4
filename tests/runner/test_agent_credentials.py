"""Agent credentials end to end (CONTRACT §9): set through GraphQL, encrypted at rest, injected only into the
runs that should have them (creator's key, else the project's, else runner.env's), and never readable back,
logged, audited, shown in an error or put on a command line.

The agent is a real script (``fixtures/env_agent.py``) that reports the SHA-256 of the ``ANTHROPIC_API_KEY``
it was started with.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from starlette.applications import Starlette

from aicm import models
from aicm.auth.permissions import DEVELOPER, MAINTAINER
from aicm.schema.relay import encode_id
from tests.conftest import AGENT_SCRIPTS
from tests.factories import add_member, make_project, make_user, token_for
from tests.graphql import assert_error, assert_ok, execute
from tests.schema.test_tasks import FOLLOW_UP, finished, pk, start

ENV_AGENT = [sys.executable, str(AGENT_SCRIPTS / "env_agent.py"), "{prompt}"]

SET_MINE = """mutation($input: AgentCredentialInput!) {
  setAgentCredential(input: $input) { hasAgentCredential user { email } } }"""
SET_PROJECT = """mutation($p: ID!, $input: AgentCredentialInput!) {
  setProjectAgentCredential(projectId: $p, input: $input) { hasAgentCredential } }"""
VIEWER = "{ viewer { hasAgentCredential user { email } } }"
PROJECT = "query($p: ID!) { project(id: $p) { hasAgentCredential hasCredential } }"

ALICE_KEY = "sk-ant-alice-0123456789abcdefALICE"
BOB_KEY = "sk-ant-bob-0123456789abcdefBOBBOB"
PROJECT_KEY = "sk-ant-project-0123456789abcdefPROJECT"
RUNNER_KEY = "sk-ant-runner-env-0123456789abcdefRUNNER"


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@contextmanager
def env_agent(app: Starlette, runner_key: str | None = None) -> Iterator[None]:
    """Runs use the env-reporting agent (and ``runner.env``'s key, when given) inside the block."""
    runner = app.state.runtime.settings.runner
    command, env = runner.command, runner.env
    runner.command = ENV_AGENT
    runner.env = {**env, **({"ANTHROPIC_API_KEY": runner_key} if runner_key else {})}
    try:
        yield
    finally:
        runner.command, runner.env = command, env


async def reported(task_id: int) -> dict:
    """What the agent said it was started with (its ``env`` line)."""
    task = await finished(task_id)
    assert task.status == models.TaskStatus.SUCCEEDED, task.error
    line = await models.TaskLog.get(task_id=task_id, kind="system")
    assert line.data is not None and line.data["subtype"] == "env"
    return line.data


async def world(app: Starlette):
    """A project owned by ``owner`` with two developers, Alice and Bob, and their tokens."""
    owner, alice, bob = await make_user(), await make_user(), await make_user()
    project = await make_project(owner, "Keys")
    await add_member(project, alice, DEVELOPER)
    await add_member(project, bob, DEVELOPER)
    tokens = [await token_for(app, user) for user in (owner, alice, bob)]
    return project, tokens


def pid(project: models.Project) -> str:
    return encode_id("Project", project.id)


async def test_the_creators_key_beats_the_projects_which_beats_runner_env(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    # given Alice has her own key, the project has one, and runner.env has a third
    project, (owner_token, alice_token, bob_token) = await world(app)
    mine = assert_ok(await execute(client, SET_MINE, {"input": {"apiKey": ALICE_KEY}}, token=alice_token))
    assert mine["setAgentCredential"]["hasAgentCredential"] is True
    shared = {"p": pid(project), "input": {"provider": "anthropic", "apiKey": PROJECT_KEY}}
    assert_ok(await execute(client, SET_PROJECT, shared, token=owner_token))
    with env_agent(app, RUNNER_KEY):
        # when each developer runs a task
        alices = await reported(await start(client, alice_token, project, "alice's run"))
        bobs = await reported(await start(client, bob_token, project, "bob's run"))
        # a follow-up of Alice's task by Bob runs with Bob's credentials, not hers
        alices_task = encode_id("Task", await _task_of(project, ALICE_KEY))
        variables = {"id": alices_task, "prompt": "bob follows up"}
        follow = assert_ok(await execute(client, FOLLOW_UP, variables, token=bob_token))
        bobs_follow_up = await reported(pk(follow["followUpTask"]["id"]))
        # then the project's key goes once it is removed, and runner.env's is what is left
        removed = {"p": pid(project), "input": {"apiKey": None}}
        assert not assert_ok(await execute(client, SET_PROJECT, removed, token=owner_token))[
            "setProjectAgentCredential"
        ]["hasAgentCredential"]
        bobs_after = await reported(await start(client, bob_token, project, "bob again"))
    with env_agent(app):
        nobody = await reported(await start(client, bob_token, project, "no key anywhere"))
    assert alices["key_sha256"] == sha(ALICE_KEY)
    assert bobs["key_sha256"] == sha(PROJECT_KEY)
    assert bobs_follow_up["key_sha256"] == sha(PROJECT_KEY)
    assert bobs_after["key_sha256"] == sha(RUNNER_KEY)
    assert nobody["key_sha256"] is None
    for report in (alices, bobs, bobs_follow_up, bobs_after):
        assert not report["cmdline_has_key"]
        assert not any(key in arg for arg in report["argv"] for key in (ALICE_KEY, PROJECT_KEY, RUNNER_KEY))


async def _task_of(project: models.Project, key: str) -> int:
    """The project's task whose agent reported ``key``."""
    for line in await models.TaskLog.filter(task__project_id=project.id, kind="system"):
        if line.data and line.data.get("key_sha256") == sha(key):
            return line.task_id  # type: ignore[attr-defined]
    raise AssertionError("no run had that key")


async def test_another_users_run_never_gets_a_key(app: Starlette, client: httpx.AsyncClient) -> None:
    # given Alice's key, and Bob in the same project with none (and no project or runner.env key)
    project, (_, alice_token, bob_token) = await world(app)
    assert_ok(await execute(client, SET_MINE, {"input": {"apiKey": ALICE_KEY}}, token=alice_token))
    with env_agent(app):
        # when both run tasks at the same time
        ids = [
            await start(client, token, project, "sleep:0.3")
            for token in (alice_token, bob_token, alice_token, bob_token)
        ]
        reports = [await reported(task_id) for task_id in ids]
    # then only Alice's runs had her key
    assert [r["key_sha256"] for r in reports] == [sha(ALICE_KEY), None, sha(ALICE_KEY), None]


async def test_a_key_is_in_no_log_line_audit_row_answer_or_command_line(
    app: Starlette, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    project, (owner_token, alice_token, _) = await world(app)
    answers: list[str] = []

    async def call(document: str, variables: dict, token: str) -> dict:
        result = await execute(client, document, variables, token=token)
        answers.append(json.dumps(result))
        return result

    # given both kinds of key, set through GraphQL
    assert_ok(await call(SET_MINE, {"input": {"apiKey": ALICE_KEY}}, alice_token))
    assert_ok(await call(SET_PROJECT, {"p": pid(project), "input": {"apiKey": PROJECT_KEY}}, owner_token))
    with env_agent(app):
        # when a task whose agent prints its key runs, and we look at every process's argv while it runs
        task_id = await start(client, alice_token, project, "leak sleep:2")
        command_lines = await _command_lines_while_running(task_id)
        await reported(task_id)
    task_query = "query($id: ID!) { task(id: $id) { status error logs { text data } } }"
    stored = assert_ok(await call(task_query, {"id": encode_id("Task", task_id)}, alice_token))
    await call(VIEWER, {}, alice_token)
    await call(PROJECT, {"p": pid(project)}, owner_token)
    # then the key is nowhere: not the answers (the agent's own printout is redacted), logs, audit rows, argv
    texts = [line["text"] or "" for line in stored["task"]["logs"]]
    assert any("my key is [REDACTED]" in text for text in texts)
    audit = await models.AuditLog.all().values_list("action", "details")
    actions = {action for action, _ in audit}
    assert {"user.set_agent_credential", "project.set_agent_credential"} <= actions
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    rows = await models.User.filter(agent_credential_secret__isnull=False).values_list(
        "agent_credential_secret", flat=True
    )
    assert rows and all(row.startswith("v1.") for row in rows)  # encrypted at rest
    for key in (ALICE_KEY, PROJECT_KEY):
        assert not any(key in answer for answer in answers)
        assert key not in logged
        assert key not in json.dumps(audit)
        assert key not in command_lines
        assert key not in "".join(rows)


async def _command_lines_while_running(task_id: int, wait: float = 15.0) -> str:
    """Every process's argv (``ps -o args``, no environment) once the task's agent has reported."""
    deadline = time.monotonic() + wait
    while not await models.TaskLog.filter(task_id=task_id, kind="system").exists():
        assert time.monotonic() < deadline, "the agent did not start"
        await asyncio.sleep(0.05)
    ps = await asyncio.create_subprocess_exec("ps", "-eww", "-o", "args=", stdout=asyncio.subprocess.PIPE)
    listing, _ = await asyncio.wait_for(ps.communicate(), 10)
    assert b"env_agent.py" in listing
    return listing.decode()


async def test_removing_ones_key_and_the_viewer_flag(app: Starlette, client: httpx.AsyncClient) -> None:
    _, (_, alice_token, _) = await world(app)
    assert (
        assert_ok(await execute(client, VIEWER, token=alice_token))["viewer"]["hasAgentCredential"] is False
    )
    assert_ok(await execute(client, SET_MINE, {"input": {"apiKey": ALICE_KEY}}, token=alice_token))
    assert assert_ok(await execute(client, VIEWER, token=alice_token))["viewer"]["hasAgentCredential"] is True
    removed = assert_ok(await execute(client, SET_MINE, {"input": {}}, token=alice_token))
    assert removed["setAgentCredential"]["hasAgentCredential"] is False
    assert (
        assert_ok(await execute(client, VIEWER, token=alice_token))["viewer"]["hasAgentCredential"] is False
    )
    actions = await models.AuditLog.filter(action__contains="agent_credential").values_list(
        "action", flat=True
    )
    assert sorted(actions) == ["user.clear_agent_credential", "user.set_agent_credential"]
    assert (await execute(client, VIEWER))["data"]["viewer"] is None


@pytest.mark.parametrize(
    ("provider", "api_key", "field"),
    [
        ("openai", ALICE_KEY, "provider"),
        ("", ALICE_KEY, "provider"),
        ("anthropic", "", "apiKey"),
        ("anthropic", "   ", "apiKey"),
        ("anthropic", "sk-ant-two words", "apiKey"),
        ("anthropic", "sk-ant-line\nbreak", "apiKey"),
        ("anthropic", "k" * 5000, "apiKey"),
    ],
)
async def test_bad_credentials_are_refused_without_echoing_them(
    app: Starlette, client: httpx.AsyncClient, provider: str, api_key: str, field: str
) -> None:
    project, (owner_token, alice_token, _) = await world(app)
    variables = {"input": {"provider": provider, "apiKey": api_key}}
    for result in (
        await execute(client, SET_MINE, variables, token=alice_token),
        await execute(client, SET_PROJECT, {"p": pid(project), **variables}, token=owner_token),
    ):
        error = assert_error(result, "BAD_USER_INPUT", field=field)
        assert api_key.strip() == "" or api_key not in json.dumps(error)
    assert not await models.User.filter(agent_credential_secret__isnull=False).exists()
    assert not await models.Project.filter(agent_credential_secret__isnull=False).exists()


async def test_only_maintainers_set_a_projects_key(app: Starlette, client: httpx.AsyncClient) -> None:
    project, (_, alice_token, _) = await world(app)
    maintainer, outsider = await make_user(), await make_user()
    await add_member(project, maintainer, MAINTAINER)
    variables = {"p": pid(project), "input": {"apiKey": PROJECT_KEY}}
    assert_error(await execute(client, SET_PROJECT, variables, token=alice_token), "FORBIDDEN")
    outsider_token = await token_for(app, outsider)
    assert_error(await execute(client, SET_PROJECT, variables, token=outsider_token), "NOT_FOUND")
    assert_error(await execute(client, SET_PROJECT, variables), "UNAUTHENTICATED")
    assert not await models.Project.filter(agent_credential_secret__isnull=False).exists()
    done = assert_ok(await execute(client, SET_PROJECT, variables, token=await token_for(app, maintainer)))
    assert done["setProjectAgentCredential"]["hasAgentCredential"] is True
    seen = assert_ok(await execute(client, PROJECT, {"p": pid(project)}, token=alice_token))["project"]
    assert seen == {"hasAgentCredential": True, "hasCredential": False}


async def test_a_key_that_no_longer_decrypts_fails_the_run_instead_of_using_another(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    # given Bob's row holds a key sealed for Alice's row (as if it had been encrypted under another key)
    project, (_, alice_token, bob_token) = await world(app)
    assert_ok(await execute(client, SET_MINE, {"input": {"apiKey": ALICE_KEY}}, token=alice_token))
    alice = await models.User.get(agent_credential_secret__isnull=False)
    bob_id = (await models.User.get(email=await _email(client, bob_token))).id
    await models.User.filter(id=bob_id).update(agent_credential_secret=alice.agent_credential_secret)
    with env_agent(app, RUNNER_KEY):
        # when Bob runs a task
        task = await finished(await start(client, bob_token, project, "run"))
    # then it fails with a clear reason, and no agent ran (not even with runner.env's key)
    assert task.status == models.TaskStatus.FAILED
    assert "agent credential cannot be decrypted" in (task.error or "")
    assert ALICE_KEY not in (task.error or "")
    assert not await models.TaskLog.filter(task_id=task.id, stream="stdout").exists()


async def _email(client: httpx.AsyncClient, token: str) -> str:
    return assert_ok(await execute(client, VIEWER, token=token))["viewer"]["user"]["email"]
