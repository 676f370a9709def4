"""Tool approvals of running agents (CONTRACT §10): the waiting side, and the rules every decision follows.

Each run that may ask (permission mode other than BYPASS, ``runner.agent_cli: claude``) gets an
``ApprovalGate``: a unix socket in a private directory (mode 0700) that the sandbox binds in, and an MCP
config naming the stdio helper ``aicm.runner.approval_mcp`` with the socket's path and a random per-run
credential. The credential is stored as SHA-256 on the task while it runs and cleared when the run ends; a
request whose task id and credential do not match a running task is refused.

A request becomes an ``ApprovalRequest`` (PENDING) and the task ``WAITING_FOR_APPROVAL``; the waiting side
(the process running the agent) then listens on the task's channel and reads the row again on every event,
and at least every ``POLL_SECONDS`` (a decision made on another instance whose event was lost still counts).
Whoever changes a PENDING row does it with one conditional UPDATE, so the first decision (or the expiry)
wins and the others see that they lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from aicm import models
from aicm.config import Settings
from aicm.runner import webhooks
from aicm.runner.status import announce
from aicm.subscriptions import channels, events
from aicm.subscriptions.broker import Broker
from aicm.subscriptions.publisher import publish
from aicm.subscriptions.subscription import Subscription

__all__ = [
    "PERMISSION_MODES",
    "ApprovalGate",
    "allow",
    "authenticate",
    "decide",
    "deny",
    "expire",
    "expire_pending",
    "input_key",
    "publish_decided",
    "request_approval",
    "token_hash",
]

log = logging.getLogger("aicm.runner")

POLL_SECONDS = 2.0
MAX_REQUEST_BYTES = 1024 * 1024  # one request line from the helper
MAX_TOOL_NAME = 200
MCP_SERVER_NAME = "aicm"  # the tool is then mcp__aicm__approval_prompt
ENV_SOCKET, ENV_TOKEN, ENV_TASK = "AICM_APPROVAL_SOCKET", "AICM_APPROVAL_TOKEN", "AICM_TASK_ID"
PENDING = models.ApprovalStatus.PENDING
# Project.agent_permission_mode → the CLI's --permission-mode value.
PERMISSION_MODES = {
    models.AgentPermissionMode.DEFAULT: "default",
    models.AgentPermissionMode.ACCEPT_EDITS: "acceptEdits",
    models.AgentPermissionMode.PLAN: "plan",
    models.AgentPermissionMode.BYPASS: "bypassPermissions",
}


def _now() -> datetime:
    return datetime.now(UTC)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def input_key(tool_name: str, tool_input: dict[str, Any]) -> str:
    """What ``remember`` matches: the tool and its input, as canonical JSON."""
    canonical = json.dumps([tool_name, tool_input], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def allow(tool_input: dict[str, Any]) -> dict[str, Any]:
    """The tool result Claude Code expects for an allowed call."""
    return {"behavior": "allow", "updatedInput": tool_input}


def deny(message: str) -> dict[str, Any]:
    return {"behavior": "deny", "message": message}


async def authenticate(task_id: object, token: object) -> bool:
    """Whether ``token`` is the credential of task ``task_id``'s current run."""
    if not isinstance(task_id, int) or isinstance(task_id, bool) or not isinstance(token, str) or not token:
        return False
    if not 0 < task_id < 2**31:
        return False
    return await models.Task.filter(
        id=task_id, status__in=list(models.ACTIVE), approval_token_hash=token_hash(token)
    ).exists()


async def _resume_if_none_pending(task_id: int, connection: BaseDBAsyncClient) -> bool:
    """WAITING_FOR_APPROVAL → RUNNING once no request of the task is pending; True when it changed."""
    if await models.ApprovalRequest.filter(task_id=task_id, status=PENDING).using_db(connection).exists():
        return False
    waiting = models.TaskStatus.WAITING_FOR_APPROVAL
    return bool(
        await models.Task.filter(id=task_id, status=waiting)
        .using_db(connection)
        .update(status=models.TaskStatus.RUNNING)
    )


async def decide(
    request_id: int,
    status: models.ApprovalStatus,
    connection: BaseDBAsyncClient,
    *,
    user_id: int | None = None,
    reason: str | None = None,
    remember: bool = False,
) -> bool:
    """Decide a PENDING request (one conditional UPDATE: the first decision wins); False when it was not
    pending any more. Puts its task back to RUNNING when nothing else of it is pending."""
    request = await models.ApprovalRequest.get(id=request_id).using_db(connection)
    updated = (
        await models.ApprovalRequest.filter(id=request_id, status=PENDING)
        .using_db(connection)
        .update(
            status=status,
            decided_by_id=user_id,
            decided_at=_now(),
            reason=reason,
            remember=remember and status == models.ApprovalStatus.ALLOWED,
        )
    )
    if not updated:
        return False
    await _resume_if_none_pending(request.task_id, connection)  # type: ignore[attr-defined]
    return True


async def publish_decided(request_id: int, actor_id: int | None) -> None:
    """APPROVAL_DECIDED on the project and task channels, and the task's status (after the commit)."""
    request = await models.ApprovalRequest.get(id=request_id).prefetch_related("task")
    task = request.task
    payload = events.approval_event(
        events.ProjectEventType.APPROVAL_DECIDED,
        request,
        task.project_id,  # type: ignore[attr-defined]
        actor_id,
    )
    await publish(channels.task(task.id), payload)
    await publish(channels.project(task.project_id), payload)  # type: ignore[attr-defined]
    await announce(task, actor_id)


def _answer(request: models.ApprovalRequest, tool_input: dict[str, Any], limit: float) -> dict[str, Any]:
    if request.status == models.ApprovalStatus.ALLOWED:
        return allow(tool_input)
    if request.status == models.ApprovalStatus.EXPIRED:
        return deny(request.reason or f"No decision within runner.approval_timeout ({limit:g} s): denied")
    return deny(request.reason or "Denied by a project member")


async def request_approval(
    settings: Settings,
    broker: Broker,
    task_id: int,
    tool_name: str,
    tool_input: dict[str, Any],
    tool_use_id: str | None = None,
) -> dict[str, Any]:
    """Ask the project's approvers whether the task's agent may use ``tool_name`` with ``tool_input``, wait
    for the decision (or ``runner.approval_timeout``) and return Claude Code's tool result."""
    key = input_key(tool_name, tool_input)
    remembered = models.ApprovalRequest.filter(
        task_id=task_id, input_key=key, status=models.ApprovalStatus.ALLOWED, remember=True
    )
    if await remembered.exists():
        return allow(tool_input)
    timeout = settings.runner.approval_timeout
    async with broker.subscribe([channels.task(task_id)]) as subscription:
        async with in_transaction() as connection:
            request = await models.ApprovalRequest.create(
                task_id=task_id,
                tool_name=tool_name,
                input=tool_input,
                input_key=key,
                tool_use_id=tool_use_id,
                expires_at=_now() + timedelta(seconds=timeout),
                using_db=connection,
            )
            await (
                models.Task.filter(id=task_id, status=models.TaskStatus.RUNNING)
                .using_db(connection)
                .update(status=models.TaskStatus.WAITING_FOR_APPROVAL)
            )
        task = await models.Task.get(id=task_id)
        log.info(
            "approval requested",
            extra={
                "event": "approval_requested",
                "task_id": task_id,
                "approval_id": request.id,
                "tool": tool_name,
            },
        )
        payload = events.approval_event(
            events.ProjectEventType.APPROVAL_REQUESTED,
            request,
            task.project_id,  # type: ignore[attr-defined]
            None,
        )
        await publish(channels.project(task.project_id), payload)  # type: ignore[attr-defined]
        await publish(channels.task(task_id), payload)
        await announce(task)
        await webhooks.approval_requested(request, task)
        return await _wait(request, tool_input, timeout, subscription)


async def _wait(
    request: models.ApprovalRequest, tool_input: dict[str, Any], limit: float, subscription: Subscription
) -> dict[str, Any]:
    """Until the request is decided (by anyone, anywhere) or expires; ``limit``: runner.approval_timeout."""
    events_ = aiter(subscription)
    while True:
        current = await models.ApprovalRequest.get(id=request.id)
        if current.status != PENDING:
            return _answer(current, tool_input, limit)
        left = (current.expires_at - _now()).total_seconds()
        if left <= 0:
            await expire(request.id, f"No decision within runner.approval_timeout ({limit:g} s): denied")
            continue  # read what won
        with contextlib.suppress(TimeoutError, StopAsyncIteration):
            async with asyncio.timeout(min(POLL_SECONDS, left)):
                await anext(events_)


async def expire_pending(task_id: int, reason: str) -> None:
    """End every pending request of a task whose run ended (cancelled, crashed, timed out)."""
    for request_id in await models.ApprovalRequest.filter(task_id=task_id, status=PENDING).values_list(
        "id", flat=True
    ):
        await expire(request_id, reason)


async def expire(request_id: int, reason: str) -> bool:
    """EXPIRED (denied) unless decided meanwhile, with an audit row by nobody; True when this call did it."""
    async with in_transaction() as connection:
        expired = await decide(request_id, models.ApprovalStatus.EXPIRED, connection, reason=reason)
        if expired:
            await models.AuditLog.create(
                actor_id=None,
                action="approval.expire",
                target_type="ApprovalRequest",
                target_id=str(request_id),
                details={"reason": reason},
                using_db=connection,
            )
    if expired:
        await publish_decided(request_id, None)
    return expired


class ApprovalGate:
    """The approval endpoint of one run: ``async with ApprovalGate(...) as gate`` opens the socket and writes
    ``gate.mcp_config``; leaving it closes both, expires what is still pending and revokes the credential."""

    def __init__(self, settings: Settings, broker: Broker, task_id: int) -> None:
        self.settings, self.broker, self.task_id = settings, broker, task_id
        self.directory = Path(tempfile.mkdtemp(prefix="aicm-approvals-"))  # mode 0700
        self.socket_path = self.directory / "approvals.sock"
        self.mcp_config = self.directory / "mcp.json"
        self._token = secrets.token_urlsafe(32)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    def config(self) -> dict[str, Any]:
        """The ``--mcp-config`` document: this system's stdio helper, told where to ask and with what."""
        env = {ENV_SOCKET: str(self.socket_path), ENV_TOKEN: self._token, ENV_TASK: str(self.task_id)}
        server = {"type": "stdio", "command": sys.executable, "args": ["-m", "aicm.runner.approval_mcp"]}
        return {"mcpServers": {MCP_SERVER_NAME: {**server, "env": env}}}

    async def __aenter__(self) -> ApprovalGate:
        try:
            await models.Task.filter(id=self.task_id).update(approval_token_hash=token_hash(self._token))
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.socket_path), limit=MAX_REQUEST_BYTES
            )
            fd = os.open(self.mcp_config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(self.config(), out)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for handler in list(self._handlers):
            handler.cancel()
        for handler in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await handler
        await models.Task.filter(id=self.task_id).update(approval_token_hash=None)
        await expire_pending(self.task_id, "The run ended before a decision")
        shutil.rmtree(self.directory, ignore_errors=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._handlers.add(me)
        try:
            try:
                answer = await self.handle(json.loads(await reader.readline()))
            except (ValueError, asyncio.LimitOverrunError):
                answer = {"error": "not a valid approval request"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the helper went away (its agent ended)
        except Exception:
            log.exception(
                "approval request failed", extra={"event": "approval_error", "task_id": self.task_id}
            )
        finally:
            self._handlers.discard(me)
            writer.close()

    async def handle(self, message: object) -> dict[str, Any]:
        """One helper request ``{task_id, token, tool_name, input, tool_use_id}`` → the tool result, or
        ``{"error": …}`` for a refused credential or a malformed request."""
        if not isinstance(message, dict):
            return {"error": "not a valid approval request"}
        task_id, token = message.get("task_id"), message.get("token")
        if task_id != self.task_id or not await authenticate(task_id, token):
            log.warning(
                "approval credential refused",
                extra={"event": "approval_credential_refused", "task_id": self.task_id},
            )
            return {"error": "the approval credential is not valid for this task's current run"}
        tool_name, tool_input = message.get("tool_name"), message.get("input")
        tool_use_id = message.get("tool_use_id")
        if not isinstance(tool_name, str) or not tool_name or len(tool_name) > MAX_TOOL_NAME:
            return {"error": "tool_name must be a non-empty string"}
        if not isinstance(tool_input, dict):
            return {"error": "input must be an object"}
        if tool_use_id is not None and not isinstance(tool_use_id, str):
            return {"error": "tool_use_id must be a string"}
        return await request_approval(
            self.settings, self.broker, self.task_id, tool_name, tool_input, (tool_use_id or "")[:200] or None
        )
