"""The only place live-event channel names are built.

Every name starts with ``aicm:``. Nobody else formats a channel string: resolvers, the unit of work and the
runner call these functions, so a publisher and its subscribers can never disagree on a name.

>>> project(7), task(3), task_logs(3), user(12), session("s-1f3a")
('aicm:project:7', 'aicm:task:3', 'aicm:task:3:logs', 'aicm:user:12', 'aicm:session:s-1f3a')
"""

from __future__ import annotations

import re

__all__ = ["PREFIX", "project", "roles", "session", "task", "task_control", "task_logs", "user", "webhooks"]

PREFIX = "aicm:"

_SESSION_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")


def project(project_id: int) -> str:
    """Project changes, membership changes and task lifecycle events of one project."""
    return f"{PREFIX}project:{_id(project_id)}"


def task(task_id: int) -> str:
    """Status changes of one task."""
    return f"{PREFIX}task:{_id(task_id)}"


def task_logs(task_id: int) -> str:
    """Log lines of one task, as they are stored."""
    return f"{PREFIX}task:{_id(task_id)}:logs"


def task_control() -> str:
    """Requests for whichever process runs a task (cancel), heard by every executor."""
    return f"{PREFIX}tasks:control"


def webhooks() -> str:
    """Webhook jobs were queued: every webhook sender wakes up."""
    return f"{PREFIX}webhooks"


def user(user_id: int) -> str:
    """Account changes of one user: deactivation, role changes."""
    return f"{PREFIX}user:{_id(user_id)}"


def roles() -> str:
    """Permission changes of any role (updated or deleted), heard by every live subscription."""
    return f"{PREFIX}roles"


def session(session_id: str) -> str:
    """Revocation of one login session."""
    if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
        raise ValueError(f"invalid session id for a channel name: {session_id!r}")
    return f"{PREFIX}session:{session_id}"


def _id(value: int) -> int:
    # bool is an int subclass; True would silently become channel 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"invalid id for a channel name: {value!r}")
    return value
