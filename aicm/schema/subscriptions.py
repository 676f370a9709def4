"""The Subscription root: project events, task status changes and task log lines (CONTRACT §3)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime
from enum import Enum
from typing import Any

import strawberry

from aicm import models
from aicm.errors import BadUserInput
from aicm.metrics import GRAPHQL_SUBSCRIPTIONS
from aicm.resolvers import subscriptions as subscriptions_resolvers
from aicm.resolvers.loaders import Loaders
from aicm.schema.context import Info
from aicm.schema.permissions import IsAuthenticated
from aicm.schema.projects import Project, ProjectMember
from aicm.schema.relay import decode_id, encode_id
from aicm.schema.tasks import Task, TaskLogLine
from aicm.schema.users import User


@strawberry.enum
class ProjectEventType(Enum):
    PROJECT_UPDATED = "PROJECT_UPDATED"
    PROJECT_ARCHIVED = "PROJECT_ARCHIVED"
    PROJECT_DELETED = "PROJECT_DELETED"
    MEMBER_ADDED = "MEMBER_ADDED"
    MEMBER_UPDATED = "MEMBER_UPDATED"
    MEMBER_REMOVED = "MEMBER_REMOVED"
    TASK_CREATED = "TASK_CREATED"
    TASK_UPDATED = "TASK_UPDATED"


@strawberry.type
class ProjectEvent:
    type: ProjectEventType
    project_id: strawberry.ID
    at: datetime
    payload: strawberry.Private[dict[str, Any]]

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ProjectEvent:
        return cls(
            type=ProjectEventType(payload["type"]),
            project_id=encode_id("Project", payload["project_id"]),
            at=datetime.fromisoformat(payload["at"]),
            payload=payload,
        )

    @strawberry.field(description="Who caused it; null for changes the server made itself.")
    async def actor(self, info: Info) -> User | None:
        actor_id = self.payload.get("actor_id")
        user = await info.context.loaders.user_by_id.load(actor_id) if actor_id else None
        return User.from_model(user) if user else None

    @strawberry.field(description="The project as it is now; null once it is deleted.")
    async def project(self, info: Info) -> Project | None:
        project = await info.context.loaders.project_by_id.load(self.payload["project_id"])
        return Project.from_model(project) if project else None

    @strawberry.field(description="The task, for TASK_CREATED and TASK_UPDATED.")
    async def task(self, info: Info) -> Task | None:
        task_id = self.payload.get("task_id")
        task = await models.Task.get_or_none(id=task_id) if task_id else None
        return Task.from_model(task) if task else None

    @strawberry.field(description="The membership, for MEMBER_* events (as it was, for a removal).")
    def member(self) -> ProjectMember | None:
        member = self.payload.get("member")
        if not member:
            return None
        return ProjectMember(
            added_at=datetime.fromisoformat(member["added_at"]),
            user_pk=member["user_id"],
            role_pk=member["role_id"],
        )


def _line(payload: dict[str, Any]) -> TaskLogLine:
    return TaskLogLine(
        seq=payload["seq"],
        at=datetime.fromisoformat(payload["at"]),
        stream=payload["stream"],
        kind=payload["kind"],
        text=payload["text"],
        data=payload["data"],
    )


@strawberry.type
class Subscription:
    @strawberry.subscription(permission_classes=[IsAuthenticated])
    async def project_events(
        self, info: Info, project_id: strawberry.ID
    ) -> AsyncGenerator[ProjectEvent, None]:
        context = info.context
        stream = subscriptions_resolvers.project_events(
            context.viewer,
            context.runtime.broker,
            context.runtime.auth,
            decode_id(project_id, "Project", field="projectId"),
        )
        async for payload in _counted(stream):
            context.loaders = Loaders()  # each event is resolved against fresh data
            yield ProjectEvent.from_payload(payload)

    @strawberry.subscription(permission_classes=[IsAuthenticated])
    async def task_updates(self, info: Info, task_id: strawberry.ID) -> AsyncGenerator[Task, None]:
        context = info.context
        stream = subscriptions_resolvers.task_updates(
            context.viewer,
            context.runtime.broker,
            context.runtime.auth,
            decode_id(task_id, "Task", field="taskId"),
        )
        async for task in _counted(stream):
            context.loaders = Loaders()
            yield Task.from_model(task)

    @strawberry.subscription(
        permission_classes=[IsAuthenticated],
        description="Stored lines with seq > afterSeq, then live ones; completes after the task's last line.",
    )
    async def task_logs(
        self, info: Info, task_id: strawberry.ID, after_seq: int = 0
    ) -> AsyncGenerator[TaskLogLine, None]:
        context = info.context
        if after_seq < 0:
            raise BadUserInput("'afterSeq' must be 0 or more", field="afterSeq")
        stream = subscriptions_resolvers.task_logs(
            context.viewer,
            context.runtime.broker,
            context.runtime.auth,
            decode_id(task_id, "Task", field="taskId"),
            after_seq,
        )
        async for payload in _counted(stream):
            yield _line(payload)


async def _counted(stream: AsyncGenerator[Any, None]) -> AsyncGenerator[Any, None]:
    """``graphql_subscriptions_active`` while the stream is open; the stream is closed on every exit."""
    GRAPHQL_SUBSCRIPTIONS.inc()
    try:
        async for item in stream:
            yield item
    finally:
        GRAPHQL_SUBSCRIPTIONS.dec()
        await stream.aclose()
