"""Project webhooks (CONTRACT §10): which URLs are allowed, what is sent, and the sender that retries.

An event (``TASK_FINISHED`` when a task ends, ``APPROVAL_REQUESTED`` when an agent asks) becomes one
``WebhookJob`` per subscribed webhook of the project, in the database: the queue. Every task executor (in
``serve`` and in ``aicli-api worker``) runs a ``WebhookSender`` that claims due jobs with a conditional UPDATE
(so one instance sends each attempt), POSTs them and logs each attempt as a ``WebhookDelivery``. A non-2xx
answer or a network error is retried after 2 s, 4 s, 8 s… up to ``webhooks.max_attempts``. Nothing is sent
from a request handler, and a job survives a restart.

The body is JSON with a Slack-compatible ``text``; ``X-AICM-Signature: sha256=<hex HMAC-SHA256 of the body
with the webhook's secret>`` lets the receiver check it. URLs are ``http``/``https`` only; in production a
host that resolves to a loopback, private, link-local or otherwise non-public address is refused (when added
and again before each attempt) unless ``webhooks.allow_private: true``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from aicm import models
from aicm.config import Settings
from aicm.crypto import SecretBox
from aicm.errors import BadUserInput
from aicm.ids import encode_id
from aicm.runner.workspace import encryption_key
from aicm.subscriptions import channels
from aicm.subscriptions.broker import Broker
from aicm.subscriptions.publisher import publish
from aicm.subscriptions.subscription import FellBehind

__all__ = ["WebhookSender", "approval_requested", "check_url", "enqueue", "sign", "task_finished"]

log = logging.getLogger("aicm.webhooks")

SIGNATURE_HEADER = "X-AICM-Signature"
RETRY_BASE = 2.0  # seconds before the first retry; doubled each time
IDLE_POLL = 60.0  # with nothing due: the wake-up event on the broker comes first
MIN_WAIT = 0.05
BATCH = 20
MAX_URL = 2000
MAX_ERROR = 500
USER_AGENT = "AICode-Manager-Webhooks/1"


def _now() -> datetime:
    return datetime.now(UTC)


def box(settings: Settings) -> SecretBox:
    return SecretBox(encryption_key(settings))


def associated_data(project_id: int) -> str:
    return f"project:{project_id}:webhook"


def sign(secret: str, body: bytes) -> str:
    """The ``X-AICM-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def _addresses(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def check_url(settings: Settings, url: str, *, field: str = "url") -> str:
    """The URL when a webhook may POST to it; ``BadUserInput`` naming ``field`` otherwise."""
    url = url.strip()
    if not url or len(url) > MAX_URL or any(ord(c) < 33 for c in url):
        raise BadUserInput(
            f"'{field}' must be an http or https URL (at most {MAX_URL} characters)", field=field
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadUserInput(f"'{field}' must be an http or https URL with a host", field=field)
    if parts.username or parts.password:
        raise BadUserInput(f"'{field}' must not hold a user name or password", field=field)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise BadUserInput(f"'{field}' has an invalid port", field=field) from exc
    if settings.is_production and not settings.webhooks.allow_private:
        try:
            addresses = await _addresses(parts.hostname, port)
        except OSError as exc:
            raise BadUserInput(f"'{field}': the host does not resolve", field=field) from exc
        if not addresses or not all(_public(address) for address in addresses):
            raise BadUserInput(
                f"'{field}' resolves to a loopback or private address (webhooks.allow_private is off)",
                field=field,
            )
    return url


# --- events ----------------------------------------------------------------------------------------------


def _first_line(text: str, limit: int = 120) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _project(project: models.Project) -> dict[str, Any]:
    return {"id": encode_id("Project", project.id), "name": project.name, "slug": project.slug}


def _task(task: models.Task) -> dict[str, Any]:
    return {
        "id": encode_id("Task", task.id),
        "number": task.id,
        "status": str(task.status),
        "prompt": _first_line(task.prompt),
        "error": task.error,
        "costUsd": task.cost_usd,
        "branch": task.branch,
    }


async def task_finished(task: models.Task) -> None:
    """``TASK_FINISHED`` for the project's webhooks (never raises: a webhook must not fail a task)."""
    try:
        project = await models.Project.get(id=task.project_id)  # type: ignore[attr-defined]
        text = f"Task #{task.id} in {project.name} {task.status}: {_first_line(task.prompt, 80)}"
        if task.error and task.status != models.TaskStatus.SUCCEEDED:
            text += f" ({_first_line(task.error, 120)})"
        payload = {"project": _project(project), "task": _task(task), "text": text}
        await enqueue(project.id, models.WebhookEvent.TASK_FINISHED, payload)
    except Exception:
        log.exception(
            "queueing webhooks failed", extra={"event": "webhook_enqueue_failed", "task_id": task.id}
        )


async def approval_requested(request: models.ApprovalRequest, task: models.Task) -> None:
    """``APPROVAL_REQUESTED`` for the project's webhooks (never raises)."""
    try:
        project = await models.Project.get(id=task.project_id)  # type: ignore[attr-defined]
        summary = _first_line(json.dumps(request.input, ensure_ascii=False, default=str), 120)
        text = (
            f"Task #{task.id} in {project.name} asks to use {request.tool_name}: {summary}. "
            "Decide it in AICode Manager."
        )
        approval = {
            "id": encode_id("ApprovalRequest", request.id),
            "toolName": request.tool_name,
            "input": request.input,
            "expiresAt": request.expires_at.isoformat(),
        }
        payload = {"project": _project(project), "task": _task(task), "approval": approval, "text": text}
        await enqueue(project.id, models.WebhookEvent.APPROVAL_REQUESTED, payload)
    except Exception:
        log.exception(
            "queueing webhooks failed", extra={"event": "webhook_enqueue_failed", "task_id": task.id}
        )


async def enqueue(project_id: int, event: models.WebhookEvent, payload: dict[str, Any]) -> int:
    """One job per webhook of the project subscribed to ``event``; how many."""
    hooks = [h for h in await models.Webhook.filter(project_id=project_id) if str(event) in (h.events or [])]
    body = {"event": str(event), "at": _now().isoformat(), **payload}
    for hook in hooks:
        await models.WebhookJob.create(webhook=hook, event=str(event), payload=body, next_attempt_at=_now())
    if hooks:
        await publish(channels.webhooks(), {"queued": len(hooks)})
    return len(hooks)


# --- sending ---------------------------------------------------------------------------------------------


class WebhookSender:
    """Works off due ``WebhookJob`` rows until cancelled (one per executor; instances share the queue).

    It sleeps until the next job is due (a retry) or a wake-up on the broker says jobs were queued, and
    looks at the table at least every ``IDLE_POLL`` seconds (a wake-up lost with a Redis reconnect); an idle
    sender runs no SQL in between."""

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.box = box(settings)
        self.transport = transport

    async def run(self, broker: Broker) -> None:
        client = httpx.AsyncClient(
            transport=self.transport, timeout=self.settings.webhooks.timeout, follow_redirects=False
        )
        async with client, broker.subscribe([channels.webhooks()]) as wakeups:
            items = aiter(wakeups)
            while True:
                wait = IDLE_POLL
                try:
                    await self.send_due(client)
                    wait = await self._until_next_due()
                except Exception:
                    log.exception("sending webhooks failed", extra={"event": "webhook_sender_failed"})
                try:
                    async with asyncio.timeout(wait):
                        await anext(items)
                except (TimeoutError, FellBehind):  # FellBehind: many wake-ups at once, one pass sends all
                    pass
                except StopAsyncIteration:  # the broker closed: only the clock wakes us now
                    await asyncio.sleep(wait)

    @staticmethod
    async def _until_next_due() -> float:
        job = await models.WebhookJob.filter(done=False).order_by("next_attempt_at").first()
        if job is None:
            return IDLE_POLL
        return max(MIN_WAIT, min(IDLE_POLL, (job.next_attempt_at - _now()).total_seconds()))

    async def send_due(self, client: httpx.AsyncClient) -> int:
        """Claim and send the jobs due now; how many were attempted."""
        now = _now()
        due = models.WebhookJob.filter(done=False, next_attempt_at__lte=now).order_by("next_attempt_at")
        claimed = []
        for job_id in await due.limit(BATCH).values_list("id", flat=True):
            lease = now + timedelta(seconds=self.settings.webhooks.timeout + 30)
            if await models.WebhookJob.filter(id=job_id, done=False, next_attempt_at__lte=now).update(
                next_attempt_at=lease
            ):
                claimed.append(job_id)
        await asyncio.gather(*(self._attempt(client, job_id) for job_id in claimed))
        return len(claimed)

    async def _attempt(self, client: httpx.AsyncClient, job_id: int) -> None:
        job = await models.WebhookJob.get_or_none(id=job_id).prefetch_related("webhook")
        if job is None:  # its webhook was removed meanwhile
            return
        hook = job.webhook
        status: int | None = None
        error: str | None = None
        try:
            await check_url(self.settings, hook.url)
            secret = self.box.decrypt(hook.secret, associated_data=associated_data(hook.project_id))  # type: ignore[attr-defined]
            body = json.dumps(job.payload, separators=(",", ":"), default=str).encode()
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "X-AICM-Event": job.event,
                "X-AICM-Delivery": str(job.id),
                SIGNATURE_HEADER: sign(secret, body),
            }
            response = await client.post(hook.url, content=body, headers=headers)
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except BadUserInput as exc:
            error = exc.message
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
        except Exception as exc:  # a damaged secret, say: logged, given up
            log.exception("webhook attempt failed", extra={"event": "webhook_error", "webhook_id": hook.id})
            error = f"internal error: {type(exc).__name__}"
        attempt = job.attempts + 1
        await models.WebhookDelivery.create(
            webhook_id=hook.id, event=job.event, attempt=attempt, status=status, error=error
        )
        done = error is None or attempt >= self.settings.webhooks.max_attempts
        retry_at = _now() + timedelta(seconds=RETRY_BASE * 2 ** (attempt - 1))
        await models.WebhookJob.filter(id=job.id).update(
            attempts=attempt, done=done, next_attempt_at=retry_at
        )
        fields = {"event": "webhook_delivered" if error is None else "webhook_failed", "webhook_id": hook.id}
        fields |= {
            "webhook_event": job.event,
            "attempt": attempt,
            "status": status,
            "given_up": bool(done and error),
        }
        log.log(logging.INFO if error is None else logging.WARNING, "webhook attempt", extra=fields)
