"""Telling subscribers that a task's status changed."""

from __future__ import annotations

from aicm import models
from aicm.subscriptions import channels, events
from aicm.subscriptions.publisher import publish


async def announce(task: models.Task, actor_id: int | None = None) -> None:
    """A status change, on the task's channel and its project's."""
    payload = events.task_event(events.ProjectEventType.TASK_UPDATED, task, actor_id)
    await publish(channels.task(task.id), payload)
    await publish(channels.project(task.project_id), payload)  # type: ignore[attr-defined]
