"""Live streams behind the subscriptions: project events, task status changes and task log lines.

Each stream is authorized when it starts, through the same authorization service as queries, and checked
again whenever something that could take access away happens (a membership change, the project's deletion,
the user's deactivation, the session's end). Losing access ends the stream with FORBIDDEN.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aicm import models
from aicm.auth import authorization
from aicm.auth.permissions import Permission
from aicm.auth.viewer import Viewer, load_viewer
from aicm.errors import AppError, Forbidden, RateLimited
from aicm.resolvers.auth import AuthServices, session_check
from aicm.runner.logs import line_payload
from aicm.subscriptions import channels, events
from aicm.subscriptions.broker import Broker, Event, FellBehind, Missed, Subscription

REPLAY_PAGE = 1000


def _watch(viewer: Viewer, project_id: int, *extra: str) -> list[str]:
    """The channels a stream listens to: its own, plus those that may change the viewer's access."""
    assert viewer.user_id is not None and viewer.session_id is not None
    return [
        *extra,
        channels.project(project_id),
        channels.user(viewer.user_id),
        channels.session(viewer.session_id),
    ]


async def recheck(auth: AuthServices, viewer: Viewer, project_id: int, permission: str) -> Viewer:
    """A fresh viewer that still holds ``permission`` on the project, else FORBIDDEN."""
    assert viewer.user_id is not None and viewer.session_id is not None
    try:
        await session_check(auth, viewer.session_id, viewer.user_id)
        fresh = await load_viewer(viewer.user_id, viewer.session_id, viewer.ip, viewer.user_agent)
    except AppError as exc:
        raise Forbidden("Access was lost: the session or account has ended", reason="ACCESS_LOST") from exc
    project = await models.Project.get_or_none(id=project_id)
    if project is None or not await authorization.can(fresh, permission, project):
        raise Forbidden("Access to this project was lost", reason="ACCESS_LOST")
    fresh.forget()  # see _authorized
    return fresh


def _authorized(viewer: Viewer) -> None:
    """A stream lives as long as its connection: it keeps none of the viewer's per-request lookups once
    authorized (the role catalogue alone is ~10 KiB per subscription; make bench, docs/performance.md)."""
    viewer.forget()


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
    await authorization.get_visible_project(viewer, project_id)
    _authorized(viewer)
    async with broker.subscribe(_watch(viewer, project_id)) as subscription:
        async for item in _items(subscription):
            if isinstance(item, Event) and item.channel == channels.project(project_id):
                yield item.payload
                if item.payload.get("type") not in events.ACCESS_CHANGING:
                    continue
            viewer = await recheck(auth, viewer, project_id, Permission.PROJECT_READ)


async def task_updates(
    viewer: Viewer, broker: Broker, auth: AuthServices, task_id: int
) -> AsyncIterator[models.Task]:
    """The task now, then again at every status change; ends after it has finished."""
    task = await authorization.get_visible_task(viewer, task_id)
    _authorized(viewer)
    project_id = task.project_id  # type: ignore[attr-defined]
    async with broker.subscribe(_watch(viewer, project_id, channels.task(task_id))) as subscription:
        task = await models.Task.get(id=task_id)
        yield task
        if task.status in models.FINISHED:
            return
        async for item in _items(subscription):
            if isinstance(item, Event) and item.channel == channels.project(project_id):
                if item.payload.get("type") not in events.ACCESS_CHANGING:
                    continue
            elif isinstance(item, Missed) or item.channel == channels.task(task_id):
                current = await models.Task.get_or_none(id=task_id)
                if current is None:
                    raise Forbidden("The task was deleted", reason="ACCESS_LOST")
                if current.status != task.status:
                    task = current
                    yield task
                if task.status in models.FINISHED:
                    return
                if isinstance(item, Event):
                    continue
            viewer = await recheck(auth, viewer, project_id, Permission.TASK_READ)


async def _stored(task_id: int, after_seq: int) -> AsyncIterator[dict[str, Any]]:
    while True:
        rows = (
            await models.TaskLog.filter(task_id=task_id, seq__gt=after_seq).order_by("seq").limit(REPLAY_PAGE)
        )
        for row in rows:
            yield line_payload(row)
        if len(rows) < REPLAY_PAGE:
            return
        after_seq = rows[-1].seq


async def task_logs(
    viewer: Viewer, broker: Broker, auth: AuthServices, task_id: int, after_seq: int
) -> AsyncIterator[dict[str, Any]]:
    """Stored lines with ``seq > after_seq``, then live ones, with no gap and no duplicate at the seam.

    Subscribing comes first and reading storage second, so a line stored meanwhile is seen at least once;
    every line whose seq is not past the last one delivered is dropped. Ends after the task's last line.
    """
    task = await authorization.get_visible_task(viewer, task_id)
    _authorized(viewer)
    project_id = task.project_id  # type: ignore[attr-defined]
    last = after_seq

    async def catch_up() -> AsyncIterator[dict[str, Any]]:
        nonlocal last
        async for line in _stored(task_id, last):
            last = line["seq"]
            yield line

    async def finished() -> bool:
        current = await models.Task.get(id=task_id)
        return current.status in models.FINISHED and current.last_seq <= last

    async with broker.subscribe(_watch(viewer, project_id, channels.task_logs(task_id))) as subscription:
        async for line in catch_up():
            yield line
        if await finished():
            return
        async for item in _items(subscription):
            if isinstance(item, Event) and item.channel == channels.task_logs(task_id):
                for line in item.payload.get("lines", []):
                    if line["seq"] <= last:
                        continue  # already replayed
                    if line["seq"] > last + 1:  # a gap (events were missed): storage has every line
                        async for stored in catch_up():
                            yield stored
                        continue
                    last = line["seq"]
                    yield line
                if item.payload.get("end"):
                    async for line in catch_up():
                        yield line
                    return
                continue
            if isinstance(item, Missed):
                async for line in catch_up():
                    yield line
                if await finished():
                    return
                continue
            if (
                item.channel == channels.project(project_id)
                and item.payload.get("type") not in events.ACCESS_CHANGING
            ):
                continue
            viewer = await recheck(auth, viewer, project_id, Permission.TASK_READ)
