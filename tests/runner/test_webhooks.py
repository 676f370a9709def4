"""Project webhooks (CONTRACT §10): signed, Slack-compatible, retried from the queue, logged."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aicm import models
from aicm.auth.permissions import DEVELOPER, MAINTAINER, VIEWER
from aicm.config import Settings
from aicm.errors import BadUserInput
from aicm.runner import webhooks
from aicm.schema.relay import encode_id
from tests.factories import add_member, make_project, make_user, token_for
from tests.graphql import assert_error, assert_ok, execute
from tests.runner.test_approvals import claude_runner, pending_request  # noqa: F401 - a fixture
from tests.schema.test_tasks import finished, start
from tests.servers import free_port

SECRET = "s3cret-for-signing"
ADD = """mutation($p: ID!, $url: String!, $events: [WebhookEvent!]!, $secret: String!) {
  addProjectWebhook(projectId: $p, input: {url: $url, events: $events, secret: $secret}) { id url events }
}"""
HOOKS = """query($p: ID!) { project(id: $p) { webhooks { id url events deliveries { at status event error attempt } } } }"""


@dataclass
class Receiver:
    """A loopback webhook receiver answering each request with the next of ``statuses`` (then 200)."""

    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def endpoint(self, request: Request) -> JSONResponse:
        self.received.append((dict(request.headers), await request.body()))
        status = self.statuses.pop(0) if self.statuses else 200
        return JSONResponse({"ok": status == 200}, status_code=status)


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    """``app`` on a loopback port for the block; its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.025)
    assert server.started, "the receiver did not start"
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = Starlette(routes=[Route("/hook", hook.endpoint, methods=["POST"])])
    async with serving(app) as base:
        hook.url = f"{base}/hook"
        yield hook


def signed(headers: dict[str, str], body: bytes) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get("x-aicm-signature", ""), expected)


async def received(hook: Receiver, count: int, wait: float = 20.0) -> None:
    deadline = time.monotonic() + wait
    while len(hook.received) < count:
        assert time.monotonic() < deadline, f"only {len(hook.received)} of {count} requests came"
        await asyncio.sleep(0.05)


async def setup(app: Starlette, client: httpx.AsyncClient, url: str, events: list[str]) -> dict[str, Any]:
    owner, maintainer, developer = await make_user(), await make_user(), await make_user()
    project = await make_project(owner, "Hooks")
    await add_member(project, maintainer, MAINTAINER)
    await add_member(project, developer, DEVELOPER)
    tokens = {"maintainer": await token_for(app, maintainer), "developer": await token_for(app, developer)}
    variables = {"p": encode_id("Project", project.id), "url": url, "events": events, "secret": SECRET}
    hook = assert_ok(await execute(client, ADD, variables, token=tokens["maintainer"]))["addProjectWebhook"]
    assert hook["events"] == sorted(events) and hook["url"] == url
    return {"project": project, "tokens": tokens, "hook": hook}


async def test_task_finished_is_signed_retried_after_a_500_and_logged(
    app: Starlette, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.statuses = [500]
    w = await setup(app, client, receiver.url, ["TASK_FINISHED"])
    task = await finished(await start(client, w["tokens"]["developer"], w["project"], "ship it"))
    await received(receiver, 2)
    (first_headers, first), (second_headers, second) = receiver.received
    assert first == second  # the same delivery, again
    assert signed(first_headers, first) and signed(second_headers, second)
    body = json.loads(second)
    assert body["event"] == "TASK_FINISHED" and body["task"]["id"] == encode_id("Task", task.id)
    assert body["task"]["status"] == "SUCCEEDED" and "SUCCEEDED" in body["text"] and "Hooks" in body["text"]
    assert second_headers["x-aicm-event"] == "TASK_FINISHED"

    deadline = time.monotonic() + 10
    while len(deliveries := await models.WebhookDelivery.filter(webhook__project_id=w["project"].id)) < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    data = assert_ok(
        await execute(
            client, HOOKS, {"p": encode_id("Project", w["project"].id)}, token=w["tokens"]["maintainer"]
        )
    )
    (hook,) = data["project"]["webhooks"]
    log = [(d["attempt"], d["status"], d["event"], d["error"]) for d in hook["deliveries"]]
    assert log == [(2, 200, "TASK_FINISHED", None), (1, 500, "TASK_FINISHED", "HTTP 500")]
    assert len(deliveries) == 2
    assert await models.WebhookJob.filter(webhook__project_id=w["project"].id, done=True).count() == 1
    # the developer may not manage webhooks: they see none
    hidden = await execute(
        client, HOOKS, {"p": encode_id("Project", w["project"].id)}, token=w["tokens"]["developer"]
    )
    assert assert_ok(hidden)["project"]["webhooks"] == []


async def test_approval_requested_reaches_the_webhook(
    app: Starlette,
    client: httpx.AsyncClient,
    receiver: Receiver,
    claude_runner: Any,  # noqa: F811
) -> None:
    w = await setup(app, client, receiver.url, ["APPROVAL_REQUESTED"])
    task_id = await start(client, w["tokens"]["developer"], w["project"], "write")
    request = await pending_request(task_id)
    await received(receiver, 1)
    headers, raw = receiver.received[0]
    assert signed(headers, raw)
    body = json.loads(raw)
    assert body["event"] == "APPROVAL_REQUESTED" and body["approval"]["toolName"] == "Write"
    assert body["approval"]["id"] == encode_id("ApprovalRequest", request.id)
    assert "asks to use Write" in body["text"]
    await models.ApprovalRequest.filter(id=request.id).update(
        status=models.ApprovalStatus.DENIED, reason="no"
    )
    await finished(task_id)
    assert len(receiver.received) == 1  # TASK_FINISHED is not among its events


async def test_who_may_manage_webhooks_and_bad_input(
    app: Starlette, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    w = await setup(app, client, receiver.url, ["TASK_FINISHED"])
    p = encode_id("Project", w["project"].id)
    good = {"p": p, "url": receiver.url, "events": ["TASK_FINISHED"], "secret": SECRET}
    assert_error(await execute(client, ADD, good, token=w["tokens"]["developer"]), "FORBIDDEN")
    for bad, name in (
        ({"url": "ftp://example.com/x"}, "url"),
        ({"events": []}, "events"),
        ({"secret": "short"}, "secret"),
    ):
        assert_error(
            await execute(client, ADD, {**good, **bad}, token=w["tokens"]["maintainer"]),
            "BAD_USER_INPUT",
            name,
        )
    remove = "mutation($id: ID!) { removeProjectWebhook(id: $id) }"
    viewer = await make_user()
    await add_member(w["project"], viewer, VIEWER)
    assert_error(
        await execute(client, remove, {"id": w["hook"]["id"]}, token=await token_for(app, viewer)),
        "NOT_FOUND",
    )
    assert assert_ok(await execute(client, remove, {"id": w["hook"]["id"]}, token=w["tokens"]["maintainer"]))
    assert not await models.Webhook.filter(project_id=w["project"].id).exists()
    audit = await models.AuditLog.filter(action__in=["webhook.add", "webhook.remove"]).values_list(
        "action", flat=True
    )
    assert sorted(audit)[-2:] == ["webhook.add", "webhook.remove"]
    assert all(SECRET not in json.dumps(row.details) for row in await models.AuditLog.all())


async def test_production_refuses_private_addresses_unless_allowed() -> None:
    settings = Settings()
    settings.app.env = "production"
    for url in (
        "http://127.0.0.1:9/x",
        "http://10.1.2.3/x",
        "http://[::1]/x",
        "http://169.254.169.254/latest",
    ):
        with pytest.raises(BadUserInput):
            await webhooks.check_url(settings, url)
    for url in ("gopher://example.com/", "http://user:pw@93.184.216.34/", "http:///nohost"):
        with pytest.raises(BadUserInput):
            await webhooks.check_url(settings, url)
    assert await webhooks.check_url(settings, "https://93.184.216.34/hook") == "https://93.184.216.34/hook"
    settings.webhooks.allow_private = True
    assert await webhooks.check_url(settings, "http://127.0.0.1:9/x") == "http://127.0.0.1:9/x"
    settings.webhooks.allow_private, settings.app.env = False, "development"
    assert await webhooks.check_url(settings, "http://127.0.0.1:9/x")  # only production refuses them
