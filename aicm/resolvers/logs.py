"""The one query for a task's stored log lines, shared by ``Task.logs`` and the ``taskLogs`` replay."""

from __future__ import annotations

from aicm import models


async def lines_after(task_id: int, after_seq: int, limit: int) -> list[models.TaskLog]:
    """At most ``limit`` stored lines of the task with ``seq > after_seq``, oldest first (the caller has
    checked the task is visible)."""
    return await models.TaskLog.filter(task_id=task_id, seq__gt=after_seq).order_by("seq").limit(limit)
