"""Live streams behind the subscriptions: project events, task status changes and task log lines.

Each stream is authorized when it starts, through the same authorization service as queries, and checked
again whenever something that could take access away happens (a membership change, the project's deletion,
a change to a role the viewer holds, the user's deactivation or role changes, the session's end). Losing
access ends the stream with FORBIDDEN. What a stream yields is resolved by the schema through ``Loaders`` of
the stream's (re-checked) viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from aicm import models
from aicm.auth import authorization
from aicm.auth.permissions import Permission
from aicm.auth.viewer import Viewer, load_viewer
from aicm.db import placeholders
from aicm.errors import AppError, BadUserInput, Forbidden, RateLimited
from aicm.resolvers.auth import AuthServices, session_check
from aicm.resolvers.loaders import Loaders
from aicm.subscriptions import channels, direct, events
from aicm.subscriptions.broker import Broker
from aicm.subscriptions.subscription import Event, FellBehind, Missed, Subscription

REPLAY_PAGE = 500  # lines per replayed batch, at most (CONTRACT §11)
REPLAY_BYTES = 256 * 1024  # about this much per replayed batch (one message), unless one line is larger
REPLAY_FIRST = 20  # lines of the first read, before their size is known
REPLAY_READ_BYTES = 1024 * 1024  # about this much per later read
# taskLogs sends this many lines, then lets the event loop run: the agent's reader and the log writer get
# their turn between every few messages of each per-line subscriber, so storing keeps its pace while a
# per-line subscriber falls behind (and later catches up from storage), instead of every subscriber sending
# a whole batch line by line before the writer runs again
PER_LINE_TURN = 20


class Access:
    """A stream's right to go on: a viewer holding ``permission`` on one project, re-checked on demand."""

    def __init__(self, auth: AuthServices, viewer: Viewer, project_id: int, permission: str) -> None:
        assert viewer.user_id is not None and viewer.session_id is not None
        self.auth, self.viewer, self.project_id, self.permission = auth, viewer, project_id, permission
        self.roles: frozenset[int] = frozenset()  # the roles deciding that access; see ``settle``
        self.project_channel = channels.project(project_id)  # asked of every event: made once

    def channels(self, *extra: str) -> list[str]:
        """The channels a stream listens to: its own, plus those that may change the viewer's access."""
        assert self.viewer.user_id is not None and self.viewer.session_id is not None
        return [
            *extra,
            channels.project(self.project_id),
            channels.user(self.viewer.user_id),
            channels.session(self.viewer.session_id),
            channels.roles(),
        ]

    async def settle(self) -> None:
        """Remember which roles decide the access, then drop the viewer's per-request lookups: a stream lives
        as long as its connection (the role catalogue alone is ~10 KiB per subscription; docs/performance.md).
        """
        self.roles = await authorization.access_roles(self.viewer, self.project_id)
        self.viewer.forget()

    def may_change(self, item: Event | Missed) -> bool:
        """Whether ``item`` may have taken the access away (missed events may have)."""
        if isinstance(item, Missed):
            return True
        if item.channel == self.project_channel:
            return item.payload.get("type") in events.ACCESS_CHANGING
        if item.channel == channels.roles():
            return item.payload.get("role_id") in self.roles
        assert self.viewer.user_id is not None and self.viewer.session_id is not None
        return item.channel in (channels.user(self.viewer.user_id), channels.session(self.viewer.session_id))

    async def start(self, kind: str, check: Callable[[], Awaitable[object]]) -> None:
        """Authorize a stream whose subscription to ``channels()`` is registered already: from then on
        whatever may take the access away reaches the stream, so an answer kept by ``OpenChecks`` (dropped at
        the first event on those channels) serves as well as a fresh one. ``check`` raises the stream's
        refusal (NOT_FOUND, FORBIDDEN); ``kind`` names it, since answers of different checks differ."""
        await self._fresh_viewer()
        await self._decide(kind, check)

    async def recheck(self) -> None:
        """Reload the viewer (in place, so the loaders resolving events see it) and check again, else
        FORBIDDEN. After one event many streams re-check alike: the first answer serves the others."""
        await self._fresh_viewer()

        async def check() -> None:
            project = await models.Project.get_or_none(id=self.project_id)
            if project is None or not await authorization.can(self.viewer, self.permission, project):
                raise Forbidden("Access to this project was lost", reason="ACCESS_LOST")

        await self._decide("recheck", check)

    async def _fresh_viewer(self) -> None:
        viewer = self.viewer
        assert viewer.user_id is not None and viewer.session_id is not None
        opens = self.auth.opens
        try:
            if opens is not None:
                fresh = await opens.viewer(self.auth, viewer.user_id, viewer.session_id)
            else:
                await session_check(self.auth, viewer.session_id, viewer.user_id)
                fresh = await load_viewer(viewer.user_id, viewer.session_id, viewer.ip, viewer.user_agent)
        except AppError as exc:
            lost = "Access was lost: the session or account has ended"
            raise Forbidden(lost, reason="ACCESS_LOST") from exc
        viewer.refresh(fresh)

    async def _decide(self, kind: str, check: Callable[[], Awaitable[object]]) -> None:
        """Run ``check`` (or take its kept answer) and remember the roles deciding the access."""

        async def load() -> frozenset[int]:
            await check()
            return await authorization.access_roles(self.viewer, self.project_id)

        opens = self.auth.opens
        if opens is None:
            self.roles = await load()
        else:
            viewer = self.viewer
            key = ("access", kind, viewer.user_id, viewer.session_id, self.project_id, self.permission)
            self.roles = await opens.remember(key, self.channels(), load)
        self.viewer.forget()  # a stream lives as long as its connection: it keeps no per-request lookups

    async def after(self, item: Event | Missed) -> None:
        if self.may_change(item):
            await self.recheck()


async def _items(subscription: Subscription) -> AsyncIterator[Event | Missed]:
    try:
        async for item in subscription:
            yield item
    except FellBehind as exc:
        raise RateLimited(
            "The subscription fell behind and was ended; subscribe again", reason="FELL_BEHIND"
        ) from exc


async def project_events(
    viewer: Viewer, broker: Broker, auth: AuthServices, project_id: int
) -> AsyncIterator[dict[str, Any]]:
    viewer.require_user()
    access = Access(auth, viewer, project_id, Permission.PROJECT_READ)
    own = access.project_channel
    async with broker.subscribe(access.channels()) as subscription:  # first: see Access.start
        await access.start("project", lambda: authorization.get_visible_project(viewer, project_id))
        direct.arm(subscription, functools.partial(_project_route, access, own))
        async for item in _items(subscription):
            if isinstance(item, Event) and item.channel == own:
                yield item.payload  # first: a MEMBER_REMOVED event reaches the member it removes
            await access.after(item)


def _project_route(access: Access, own: str, event: Event) -> Any:
    """What ``project_events`` does with ``event`` when it cannot change the access: yields its payload (its
    own channel) or nothing; None (deliver it the usual way) when it may change the access."""
    if access.may_change(event):
        return None
    return event.payload if event.channel == own else direct.SKIP


async def task_updates(
    viewer: Viewer, broker: Broker, auth: AuthServices, task_id: int
) -> AsyncIterator[int]:
    """The task's id now, then again at every status change; ends after it has finished."""
    task = await authorization.get_visible_task(viewer, task_id)
    access = Access(auth, viewer, task.project_id, Permission.TASK_READ)  # type: ignore[attr-defined]
    await access.settle()
    async with broker.subscribe(access.channels(channels.task(task_id))) as subscription:
        task = await models.Task.get(id=task_id)
        yield task_id
        if task.status in models.FINISHED:
            return
        async for item in _items(subscription):
            if isinstance(item, Missed) or item.channel == channels.task(task_id):
                current = await models.Task.get_or_none(id=task_id)
                if current is None:
                    raise Forbidden("The task was deleted", reason="ACCESS_LOST")
                if current.status != task.status:
                    task = current
                    yield task_id
                if task.status in models.FINISHED:
                    return
            await access.after(item)


async def approval_requests(
    viewer: Viewer, broker: Broker, auth: AuthServices, project_id: int
) -> AsyncIterator[int]:
    """The id of each approval request of the project when it is asked for and when it is decided."""
    viewer.require_user()

    async def check() -> None:
        project = await authorization.get_visible_project(viewer, project_id)
        await authorization.require(viewer, Permission.TASK_READ, project)

    access = Access(auth, viewer, project_id, Permission.TASK_READ)
    async with broker.subscribe(access.channels()) as subscription:  # first: see Access.start
        await access.start("approvals", check)
        async for item in _items(subscription):
            if (
                isinstance(item, Event)
                and item.channel == channels.project(project_id)
                and item.payload.get("type") in events.APPROVAL_EVENTS
            ):
                yield item.payload["approval_id"]
            await access.after(item)


async def approval_now(loaders: Loaders, approval_id: int) -> models.ApprovalRequest | None:
    """A request a stream reports, as the stream's viewer may see it now (None: no longer visible)."""
    return await loaders.approval_by_id.load(approval_id)


async def task_now(loaders: Loaders, task_id: int) -> models.Task:
    """A task a stream reports, as the stream's viewer may see it now."""
    task = await loaders.task_by_id.load(task_id)
    if task is None:
        raise Forbidden("Access to this task was lost", reason="ACCESS_LOST")
    return task


def _weight(line: dict[str, Any]) -> int:
    """About what a stored line costs in memory and on the wire."""
    text = len(line["text"] or "")
    return 2 * text + 100 if line["data"] is not None else text + 100


_READ = (
    'SELECT "seq", "at", "stream", "kind", "text", "data" FROM "task_logs" '
    'WHERE "task_id" = {0} AND "seq" > {1} ORDER BY "seq" LIMIT {2}'
)


def _isoformat(at: datetime | str) -> str:
    """A stored ``at`` as ``line_payload`` writes it: SQLite gives the text it keeps, PostgreSQL a datetime.
    (Tortoise's ``DatetimeField.to_python_value`` takes ~30 us for a string, more than the rest of a row.)"""
    value = at if isinstance(at, datetime) else datetime.fromisoformat(at)
    return (value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)).isoformat()


async def _read(task_id: int, after_seq: int, limit: int) -> list[dict[str, Any]]:
    """Stored lines as ``line_payload`` makes them, read without a model instance per row (a reader catching
    up reads thousands of lines a second; Tortoise's instances cost more than the rest of the read)."""
    meta = models.TaskLog._meta
    statement = _READ.format(*placeholders(meta.db, 3))
    rows = await meta.db.execute_query_dict(statement, [task_id, after_seq, limit])
    data = meta.fields_map["data"].to_python_value
    return [
        {
            "seq": row["seq"],
            "at": _isoformat(row["at"]),
            "stream": row["stream"],
            "kind": row["kind"],
            "text": row["text"],
            "data": data(row["data"]),
        }
        for row in rows
    ]


async def _stored(task_id: int, after_seq: int) -> AsyncIterator[list[dict[str, Any]]]:
    """Stored lines with ``seq > after_seq``, in batches of at most ``REPLAY_PAGE`` lines and, past their
    first line, about ``REPLAY_BYTES`` (``Task.logs`` reads through ``Loaders.logs_by_task`` instead).

    The first read is small; later ones are sized from the lines read so far (at most ``REPLAY_READ_BYTES``),
    so a log of huge lines never holds hundreds of them in memory at once.
    """
    size = REPLAY_FIRST
    while True:
        rows = await _read(task_id, after_seq, size)
        batch: list[dict[str, Any]] = []
        budget = REPLAY_BYTES
        for row in rows:
            budget -= _weight(row)
            if batch and (budget < 0 or len(batch) == REPLAY_PAGE):
                yield batch
                batch, budget = [], REPLAY_BYTES - _weight(row)
            batch.append(row)
        if batch:
            yield batch
        if len(rows) < size:
            return
        after_seq = rows[-1]["seq"]
        average = sum(_weight(row) for row in rows) // len(rows)
        size = max(1, min(REPLAY_PAGE, REPLAY_READ_BYTES // average))


async def task_log_batches(
    viewer: Viewer,
    broker: Broker,
    auth: AuthServices,
    task_id: int,
    after_seq: int,
    *,
    per_line: bool = False,
) -> AsyncGenerator[list[dict[str, Any]], None]:
    """Stored lines with ``seq > after_seq``, then live ones, in batches (replay pages, or the lines stored
    together), with no gap and no duplicate at the seams; ends after the task's last line.

    Subscribing comes first and reading storage second, so a line stored meanwhile is seen at least once;
    every line whose seq is not past the last one delivered is dropped. A gap in the live lines (events
    missed after a broker reconnect, or dropped because this subscriber fell behind) is filled from storage.
    """
    if after_seq < 0:
        raise BadUserInput("'afterSeq' must be 0 or more", field="afterSeq")
    task = await authorization.get_visible_task(viewer, task_id)
    access = Access(auth, viewer, task.project_id, Permission.TASK_READ)  # type: ignore[attr-defined]
    await access.settle()
    last = after_seq
    logs = channels.task_logs(task_id)

    async def catch_up() -> AsyncIterator[list[dict[str, Any]]]:
        nonlocal last
        async for page in _stored(task_id, last):
            last = page[-1]["seq"]
            yield page

    async def finished() -> bool:
        current = await models.Task.get(id=task_id)
        return current.status in models.FINISHED and current.last_seq <= last

    def unseen(lines: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The lines past the last one delivered."""
        return [line for line in lines if line["seq"] > last]

    async def live(lines: list[dict[str, Any]]) -> AsyncIterator[list[dict[str, Any]]]:
        """The contiguous run of new lines in one published batch; storage first when some are missing."""
        nonlocal last
        fresh = unseen(lines)
        if fresh and fresh[0]["seq"] > last + 1:  # a gap (events were missed): storage has every line
            async for page in catch_up():
                yield page
            fresh = unseen(fresh)
        if fresh:
            last = fresh[-1]["seq"]
            yield fresh

    def sent(line: dict[str, Any]) -> None:
        nonlocal last
        last = line["seq"]

    def route(event: Event) -> Any:
        """Direct delivery (``per_line``: ``taskLogs``, one message per line) of a published batch that goes
        on where the stream stands; anything else (a gap, the end, an access change) the usual way."""
        if event.channel != logs:
            return None if access.may_change(event) else direct.SKIP
        if event.payload.get("end"):
            return None
        fresh = unseen(event.payload.get("lines", ()))
        if not fresh:
            return direct.SKIP
        return direct.Each(fresh, sent) if fresh[0]["seq"] == last + 1 else None

    async with broker.subscribe(access.channels(logs), catch_up=True) as subscription:
        async for page in catch_up():
            yield page
        if await finished():
            return
        if per_line:  # only while this generator waits for the next item: ``last`` is then where it stands
            direct.arm(subscription, route)
        async for item in _items(subscription):
            if isinstance(item, Event) and item.channel == logs:
                async for batch in live(item.payload.get("lines", [])):
                    yield batch
                if item.payload.get("end"):
                    async for page in catch_up():
                        yield page
                    return
                continue
            if isinstance(item, Missed):
                await access.recheck()
                async for page in catch_up():
                    yield page
                if await finished():
                    return
                continue
            await access.after(item)


async def task_logs(
    viewer: Viewer, broker: Broker, auth: AuthServices, task_id: int, after_seq: int
) -> AsyncIterator[dict[str, Any]]:
    """``task_log_batches``, one line at a time, yielding the event loop every ``PER_LINE_TURN`` lines."""
    sent = 0
    lines = task_log_batches(viewer, broker, auth, task_id, after_seq, per_line=True)
    async with contextlib.aclosing(lines) as batches:
        async for batch in batches:
            for line in batch:
                yield line
                sent += 1
                if sent % PER_LINE_TURN == 0:
                    await asyncio.sleep(0)
