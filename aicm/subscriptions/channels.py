"""The only place channel names are built."""

from __future__ import annotations

PREFIX = "aicm:"


def project(project_id: int) -> str:
    return f"{PREFIX}project:{project_id}"


def task(task_id: int) -> str:
    return f"{PREFIX}task:{task_id}"


def task_logs(task_id: int) -> str:
    return f"{PREFIX}task_logs:{task_id}"


def user(user_id: int) -> str:
    return f"{PREFIX}user:{user_id}"


def session(session_id: str) -> str:
    return f"{PREFIX}session:{session_id}"
