"""The Subscription root: project events, task status changes and task log lines (CONTRACT §3)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import datetime
from typing import Any

import strawberry

from aicm.metrics import GRAPHQL_SUBSCRIPTIONS
from aicm.resolvers import subscriptions as subscriptions_resolvers
from aicm.schema import rendering
from aicm.schema.context import Info
from aicm.schema.permissions import IsAuthenticated
from aicm.schema.projects import Project, ProjectMember
from aicm.schema.relay import decode_id, encode_id
from aicm.schema.rendering import Rendering
from aicm.schema.tasks import ApprovalRequest, Task, TaskLogLine
from aicm.schema.users import User, user_or_none
from aicm.subscriptions import events

ProjectEventType = strawberry.enum(events.ProjectEventType)


@strawberry.type
class ProjectEvent:
    type: ProjectEventType
    project_id: strawberry.ID
    at: datetime
    payload: strawberry.Private[dict[str, Any]]
    # actor, project and task are resolved as the viewer sees them: shared only among one user's subscriptions
    rendering: strawberry.Private[Rendering]

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ProjectEvent:
        return cls(
            type=ProjectEventType(payload["type"]),
            project_id=encode_id("Project", payload["project_id"]),
            at=datetime.fromisoformat(payload["at"]),
            payload=payload,
            rendering=Rendering((payload,), per_viewer=True, weight=1024),
        )

    @strawberry.field(
        description="Who caused it; null for changes the server made itself and for users you may not see."
    )
    async def actor(self, info: Info) -> User | None:
        return await user_or_none(info, self.payload.get("actor_id"))

    @strawberry.field(description="The project as it is now; null once it is deleted or you may not read it.")
    async def project(self, info: Info) -> Project | None:
        project = await info.context.loaders.project_by_id.load(self.payload["project_id"])
        return Project.from_model(project) if project else None

    @strawberry.field(description="The task, for TASK_* events; null when you may not read its tasks.")
    async def task(self, info: Info) -> Task | None:
        task_id = self.payload.get("task_id")
        task = await info.context.loaders.task_by_id.load(task_id) if task_id else None
        return Task.from_model(task) if task else None

    @strawberry.field(description="The request, for APPROVAL_* events; null when you may not read it.")
    async def approval(self, info: Info) -> ApprovalRequest | None:
        approval_id = self.payload.get("approval_id")
        request = await info.context.loaders.approval_by_id.load(approval_id) if approval_id else None
        return ApprovalRequest.from_model(request) if request else None

    @strawberry.field(description="The membership, for MEMBER_* events (as it was, for a removal).")
    def member(self) -> ProjectMember | None:
        member = self.payload.get("member")
        if not member:
            return None
        return ProjectMember(
            added_at=datetime.fromisoformat(member["added_at"]),
            project_pk=self.payload["project_id"],
            user_pk=member["user_id"],
            role_pk=member["role_id"],
        )


def _weight(line: dict[str, Any]) -> int:
    """About the bytes a line's dict holds (its text, and as much again for a JSON line's data)."""
    return 2 * len(line["text"] or "") + 200


def _line(payload: dict[str, Any]) -> TaskLogLine:
    line = TaskLogLine(
        seq=payload["seq"],
        at=datetime.fromisoformat(payload["at"]),
        stream=payload["stream"],
        kind=payload["kind"],
        text=payload["text"],
        data=payload["data"],
    )
    # a line reads the same to anyone who may read it
    line.rendering = Rendering((payload,), weight=_weight(payload))  # type: ignore[attr-defined]
    return line


@strawberry.type(description="Log lines of one task, several per message (CONTRACT §11).")
class TaskLogBatch:
    last_seq: int = strawberry.field(description="The batch's last seq: resume with afterSeq = lastSeq.")
    payloads: strawberry.Private[list[dict[str, Any]]]
    rendering: strawberry.Private[Rendering | None] = None

    @strawberry.field
    def lines(self) -> list[TaskLogLine]:
        """Built only when executed: a batch whose rendering is shared never builds its lines again."""
        return [_line(payload) for payload in self.payloads]


@strawberry.type
class Subscription:
    @strawberry.subscription(permission_classes=[IsAuthenticated])
    async def project_events(
        self, info: Info, project_id: strawberry.ID
    ) -> AsyncGenerator[ProjectEvent, None]:
        context, project_pk = info.context, decode_id(project_id, "Project", field="projectId")
        rendering.offer_direct(ProjectEvent.from_payload)
        async for payload in _open(info, subscriptions_resolvers.project_events, project_pk):
            context.renew_loaders()  # each event is resolved against fresh data, as the viewer sees it now
            yield ProjectEvent.from_payload(payload)

    @strawberry.subscription(permission_classes=[IsAuthenticated])
    async def task_updates(self, info: Info, task_id: strawberry.ID) -> AsyncGenerator[Task, None]:
        context, task_pk = info.context, decode_id(task_id, "Task", field="taskId")
        async for pk in _open(info, subscriptions_resolvers.task_updates, task_pk):
            context.renew_loaders()
            yield Task.from_model(await subscriptions_resolvers.task_now(context.loaders, pk))

    @strawberry.subscription(
        permission_classes=[IsAuthenticated],
        description="The project's approval requests as they are asked for and decided.",
    )
    async def approval_requests(
        self, info: Info, project_id: strawberry.ID
    ) -> AsyncGenerator[ApprovalRequest, None]:
        context, project_pk = info.context, decode_id(project_id, "Project", field="projectId")
        async for pk in _open(info, subscriptions_resolvers.approval_requests, project_pk):
            context.renew_loaders()
            request = await subscriptions_resolvers.approval_now(context.loaders, pk)
            if request is not None:
                yield ApprovalRequest.from_model(request)

    @strawberry.subscription(
        permission_classes=[IsAuthenticated],
        description="Stored lines with seq > afterSeq, then live ones; completes after the task's last line.",
    )
    async def task_logs(
        self, info: Info, task_id: strawberry.ID, after_seq: int = 0
    ) -> AsyncGenerator[TaskLogLine, None]:
        task_pk = decode_id(task_id, "Task", field="taskId")
        rendering.offer_direct(_line)
        async for payload in _open(info, subscriptions_resolvers.task_logs, task_pk, after_seq):
            yield _line(payload)

    @strawberry.subscription(
        permission_classes=[IsAuthenticated],
        description=(
            "The lines of taskLogs, in order and several per message: the lines stored together, or up to "
            "500 replayed ones; completes after the task's last line."
        ),
    )
    async def task_log_batches(
        self, info: Info, task_id: strawberry.ID, after_seq: int = 0
    ) -> AsyncGenerator[TaskLogBatch, None]:
        task_pk = decode_id(task_id, "Task", field="taskId")
        async for batch in _open(info, subscriptions_resolvers.task_log_batches, task_pk, after_seq):
            yield TaskLogBatch(
                last_seq=batch[-1]["seq"],
                payloads=batch,
                # a contiguous run of lines: its ends and its length tell it
                rendering=Rendering((batch[0], batch[-1]), shape=len(batch), weight=sum(map(_weight, batch))),
            )


async def _open(
    info: Info, streams: Callable[..., AsyncIterator[Any]], *args: Any
) -> AsyncGenerator[Any, None]:
    """The resolver's stream for this viewer, counted in ``graphql_subscriptions_active`` while it is open and
    closed on every exit."""
    runtime = info.context.runtime
    stream = streams(info.context.viewer, runtime.broker, runtime.auth, *args)
    GRAPHQL_SUBSCRIPTIONS.inc()
    try:
        async for item in stream:
            yield item
    finally:
        GRAPHQL_SUBSCRIPTIONS.dec()
        await stream.aclose()
