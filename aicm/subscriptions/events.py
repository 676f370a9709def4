"""Event payloads published on project, task and task-log channels (``ProjectEvent`` in CONTRACT §3).

Payloads carry ids, not objects: a subscriber resolves them under its own viewer, so nothing it may not see
leaks through an event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from aicm import models
from aicm.auth.viewer import Viewer


class ProjectEventType(StrEnum):
    """``ProjectEvent.type`` (CONTRACT §3); the schema exposes this enum as it is."""

    PROJECT_UPDATED = "PROJECT_UPDATED"
    PROJECT_ARCHIVED = "PROJECT_ARCHIVED"
    PROJECT_DELETED = "PROJECT_DELETED"
    MEMBER_ADDED = "MEMBER_ADDED"
    MEMBER_UPDATED = "MEMBER_UPDATED"
    MEMBER_REMOVED = "MEMBER_REMOVED"
    TASK_CREATED = "TASK_CREATED"
    TASK_UPDATED = "TASK_UPDATED"
    APPROVAL_REQUESTED = "APPROVAL_REQUESTED"
    APPROVAL_DECIDED = "APPROVAL_DECIDED"


# Events after which a subscriber's access to the project must be checked again.
ACCESS_CHANGING = frozenset(
    {ProjectEventType.PROJECT_DELETED, ProjectEventType.MEMBER_UPDATED, ProjectEventType.MEMBER_REMOVED}
)


APPROVAL_EVENTS = frozenset({ProjectEventType.APPROVAL_REQUESTED, ProjectEventType.APPROVAL_DECIDED})


def _now() -> str:
    return datetime.now(UTC).isoformat()


def project_event(
    kind: ProjectEventType, project: models.Project, viewer: Viewer, **extra: Any
) -> dict[str, Any]:
    return {"type": kind, "project_id": project.id, "actor_id": viewer.user_id, "at": _now(), **extra}


def member_event(
    kind: ProjectEventType, project: models.Project, member: models.ProjectMember, viewer: Viewer
) -> dict[str, Any]:
    """Carries the membership itself, so that a removal can still say who left and with which role."""
    details = {
        "user_id": member.user_id,  # type: ignore[attr-defined]
        "role_id": member.role_id,  # type: ignore[attr-defined]
        "added_at": member.added_at.isoformat(),
    }
    return project_event(kind, project, viewer, member=details)


def task_event(kind: ProjectEventType, task: models.Task, actor_id: int | None) -> dict[str, Any]:
    """On the project channel (TASK_CREATED / TASK_UPDATED) and the task channel (every status change)."""
    return {
        "type": kind,
        "project_id": task.project_id,  # type: ignore[attr-defined]
        "task_id": task.id,
        "status": str(task.status),
        "actor_id": actor_id,
        "at": _now(),
    }


def approval_event(
    kind: ProjectEventType, request: models.ApprovalRequest, project_id: int, actor_id: int | None
) -> dict[str, Any]:
    """APPROVAL_REQUESTED / APPROVAL_DECIDED, on the project channel and the task channel."""
    return {
        "type": kind,
        "project_id": project_id,
        "task_id": request.task_id,  # type: ignore[attr-defined]
        "approval_id": request.id,
        "status": str(request.status),
        "actor_id": actor_id,
        "at": _now(),
    }


def line_payload(row: models.TaskLog) -> dict[str, Any]:
    """One stored log line as the task-log channel and the ``taskLogs`` replay carry it."""
    return {
        "seq": row.seq,
        "at": row.at.isoformat(),
        "stream": row.stream,
        "kind": row.kind,
        "text": row.text,
        "data": row.data,
    }
