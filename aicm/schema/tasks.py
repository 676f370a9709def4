"""GraphQL types and root fields for tasks and their log lines."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry
from strawberry.scalars import JSON

from aicm import models
from aicm.errors import NotFound
from aicm.resolvers import approvals as approvals_resolvers
from aicm.resolvers import tasks as tasks_resolvers
from aicm.schema.context import Info
from aicm.schema.mapping import from_row
from aicm.schema.permissions import IsAuthenticated
from aicm.schema.relay import Connection, connection, decode_id, encode_id
from aicm.schema.users import User, user_or_none
from aicm.workspaces.changes import Commit as CommitRow
from aicm.workspaces.changes import FileChange as FileChangeRow
from aicm.workspaces.changes import FileStatus
from aicm.workspaces.changes import TaskChanges as TaskChangesRow
from aicm.workspaces.merging import MergeStrategy as MergeStrategyEnum

if TYPE_CHECKING:
    from aicm.schema.projects import Project


TaskStatus = strawberry.enum(models.TaskStatus)
ApprovalStatus = strawberry.enum(models.ApprovalStatus)
FileChangeStatus = strawberry.enum(FileStatus, name="FileChangeStatus")
MergeStrategy = strawberry.enum(MergeStrategyEnum, name="MergeStrategy")


@strawberry.type
class Commit:
    sha: str
    message: str
    author_name: str
    author_email: str
    at: datetime

    @classmethod
    def from_row(cls, commit: CommitRow) -> Commit:
        return from_row(cls, commit)


@strawberry.type
class FileChange:
    path: str
    old_path: str | None = strawberry.field(description="The previous path of a renamed file.")
    status: FileChangeStatus
    additions: int
    deletions: int
    binary: bool
    patch: str | None = strawberry.field(
        description="The file's unified diff; cut (or null) once runner.max_patch_bytes is used up."
    )

    @classmethod
    def from_row(cls, change: FileChangeRow) -> FileChange:
        return from_row(cls, change, status=FileStatus(change.status))


@strawberry.type(description="What the task's branch changed since its merge base with baseRef.")
class TaskChanges:
    files_changed: int
    additions: int
    deletions: int
    truncated: bool = strawberry.field(
        description="True when some patches were cut at runner.max_patch_bytes."
    )
    files: list[FileChange]

    @classmethod
    def from_row(cls, changes: TaskChangesRow) -> TaskChanges:
        return from_row(cls, changes, files=[FileChange.from_row(f) for f in changes.files])


@strawberry.type
class TaskLogLine:
    seq: int
    at: datetime
    stream: str = strawberry.field(description="stdout, stderr, or system for lines the server adds")
    kind: str = strawberry.field(
        description="The JSON line's type (system, assistant, user, result), else text"
    )
    text: str | None
    data: JSON | None

    @classmethod
    def from_model(cls, line: models.TaskLog) -> TaskLogLine:
        return from_row(cls, line)


@strawberry.type(description="A tool call an agent asked to make, and its decision (CONTRACT §10).")
class ApprovalRequest:
    id: strawberry.ID
    tool_name: str
    input: JSON
    status: ApprovalStatus
    requested_at: datetime
    expires_at: datetime = strawberry.field(description="When it is EXPIRED (and denied) if undecided.")
    decided_at: datetime | None
    reason: str | None = strawberry.field(description="The decider's reason, or why it expired.")
    remember: bool = strawberry.field(
        description="Allowed for the rest of the task, for the same tool and input."
    )
    task_pk: strawberry.Private[int]
    decider_pk: strawberry.Private[int | None]

    @classmethod
    def from_model(cls, request: models.ApprovalRequest) -> ApprovalRequest:
        return from_row(
            cls,
            request,
            id=encode_id("ApprovalRequest", request.id),
            status=models.ApprovalStatus(request.status),
            task_pk=request.task_id,  # type: ignore[attr-defined]
            decider_pk=request.decided_by_id,  # type: ignore[attr-defined]
        )

    @strawberry.field
    async def task(self, info: Info) -> Task:
        task = await info.context.loaders.task_by_id.load(self.task_pk)
        if task is None:  # only reachable from a request the viewer may not read
            raise NotFound("Task not found")
        return Task.from_model(task)

    @strawberry.field(description="Null while undecided, when it expired, or when you may not see them.")
    async def decided_by(self, info: Info) -> User | None:
        return await user_or_none(info, self.decider_pk)


@strawberry.type
class Task:
    id: strawberry.ID
    prompt: str
    status: TaskStatus
    exit_code: int | None
    error: str | None
    cost_usd: float | None
    max_budget_usd: float | None = strawberry.field(
        description="The most the agent CLI may spend on this run (--max-budget-usd)."
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    branch: str | None = strawberry.field(description="The task's git branch, aicm/task-<number>.")
    base_ref: str | None = strawberry.field(description="The branch, tag or commit the branch was made from.")
    base_commit: str | None
    head_commit: str | None = strawberry.field(description="The branch's tip when the last run ended.")
    pushed_at: datetime | None
    merged_at: datetime | None
    pk: strawberry.Private[int]
    project_pk: strawberry.Private[int]
    creator_pk: strawberry.Private[int | None]
    parent_pk: strawberry.Private[int | None]
    record: strawberry.Private[models.Task]

    @classmethod
    def from_model(cls, task: models.Task) -> Task:
        return from_row(
            cls,
            task,
            id=encode_id("Task", task.id),
            status=models.TaskStatus(task.status),
            pk=task.id,
            project_pk=task.project_id,  # type: ignore[attr-defined]
            creator_pk=task.created_by_id,  # type: ignore[attr-defined]
            parent_pk=task.parent_id,
            record=task,
        )

    @strawberry.field(description="Null when you may read the task but not its project.")
    async def project(self, info: Info) -> Annotated[Project, strawberry.lazy("aicm.schema.projects")] | None:
        from aicm.schema.projects import Project  # imported late: Project.tasks refers back to Task

        project = await info.context.loaders.project_by_id.load(self.project_pk)
        return Project.from_model(project) if project else None

    @strawberry.field(description="Null once that user is deleted, or when you may not see them.")
    async def created_by(self, info: Info) -> User | None:
        return await user_or_none(info, self.creator_pk)

    @strawberry.field(description="The task this one follows up, when it is a follow-up.")
    def parent_id(self) -> strawberry.ID | None:
        return encode_id("Task", self.parent_pk) if self.parent_pk else None

    @strawberry.field(description="The branch's commits since baseCommit, oldest first.")
    def commits(self) -> list[Commit]:
        return [Commit.from_row(commit) for commit in tasks_resolvers.stored_commits(self.record)]

    @strawberry.field(description="Stored when a run ends; null before the first run ended.")
    def changes(self) -> TaskChanges | None:
        found = tasks_resolvers.stored_changes(self.record)
        return TaskChanges.from_row(found) if found else None

    @strawberry.field(description="The project's other unmerged tasks whose changes touch the same files.")
    async def overlaps_with(self, info: Info) -> list[Task]:
        tasks = await tasks_resolvers.overlapping_tasks(info.context.loaders, self.pk)
        return [Task.from_model(task) for task in tasks]

    @strawberry.field(description="The tool approvals its agent asked for, oldest first.")
    async def approvals(self, info: Info) -> list[ApprovalRequest]:
        rows = await approvals_resolvers.task_approvals(info.context.loaders, self.pk)
        return [ApprovalRequest.from_model(row) for row in rows]

    @strawberry.field(description="Stored log lines with seq > afterSeq, oldest first.")
    async def logs(self, info: Info, after_seq: int = 0, first: int = 100) -> list[TaskLogLine]:
        lines = await tasks_resolvers.task_logs(
            info.context.loaders, self.pk, after_seq=after_seq, first=first
        )
        return [TaskLogLine.from_model(line) for line in lines]


@strawberry.input
class CreateTaskInput:
    project_id: strawberry.ID
    prompt: str
    base_ref: str | None = strawberry.field(
        default=None, description="Branch, tag or commit to start from; default: the default branch."
    )
    max_budget_usd: float | None = strawberry.field(
        default=None, description="The most the agent CLI may spend (--max-budget-usd); positive."
    )


@strawberry.input
class DecideApprovalInput:
    allow: bool
    reason: str | None = None
    remember: bool = strawberry.field(
        default=False,
        description="With allow: allow the same tool with the same input for the rest of the task.",
    )


@strawberry.input
class MergeTaskInput:
    strategy: MergeStrategy = MergeStrategyEnum.MERGE


def _task_id(value: strawberry.ID) -> int:
    return decode_id(value, "Task")


@strawberry.type
class TaskQueries:
    @strawberry.field(permission_classes=[IsAuthenticated])
    async def task(self, info: Info, id: strawberry.ID) -> Task:
        return Task.from_model(await tasks_resolvers.get_task(info.context.viewer, _task_id(id)))

    @strawberry.field(permission_classes=[IsAuthenticated], description="Newest first.")
    async def tasks(
        self,
        info: Info,
        project_id: strawberry.ID | None = None,
        status: TaskStatus | None = None,
        first: int | None = 20,
        after: str | None = None,
    ) -> Connection[Task]:
        page = await tasks_resolvers.list_tasks(
            info.context.viewer,
            project_id=decode_id(project_id, "Project", field="projectId") if project_id else None,
            status=status,
            first=first,
            after=after,
        )
        return connection(page, Task.from_model)

    @strawberry.field(permission_classes=[IsAuthenticated], description="Newest first.")
    async def approval_requests(
        self,
        info: Info,
        project_id: strawberry.ID,
        status: ApprovalStatus | None = None,
        first: int | None = 20,
        after: str | None = None,
    ) -> Connection[ApprovalRequest]:
        page = await approvals_resolvers.list_approvals(
            info.context.viewer,
            project_id=decode_id(project_id, "Project", field="projectId"),
            status=status,
            first=first,
            after=after,
        )
        return connection(page, ApprovalRequest.from_model)


@strawberry.type
class TaskMutations:
    @strawberry.mutation(
        permission_classes=[IsAuthenticated],
        description="By a member at or above the project's approverRole; the first decision wins (CONFLICT).",
    )
    async def decide_approval(
        self, info: Info, id: strawberry.ID, input: DecideApprovalInput
    ) -> ApprovalRequest:
        request = await approvals_resolvers.decide_approval(
            info.context.viewer,
            decode_id(id, "ApprovalRequest"),
            allow=input.allow,
            reason=input.reason,
            remember=input.remember,
        )
        return ApprovalRequest.from_model(request)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def create_task(self, info: Info, input: CreateTaskInput) -> Task:
        task = await tasks_resolvers.create_task(
            info.context.viewer,
            info.context.runtime.dispatcher,
            info.context.runtime.workspaces,
            project_id=decode_id(input.project_id, "Project", field="projectId"),
            prompt=input.prompt,
            base_ref=input.base_ref,
            max_budget_usd=input.max_budget_usd,
        )
        return Task.from_model(task)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def cancel_task(self, info: Info, id: strawberry.ID) -> Task:
        task = await tasks_resolvers.cancel_task(
            info.context.viewer, info.context.runtime.dispatcher, _task_id(id)
        )
        return Task.from_model(task)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def follow_up_task(self, info: Info, id: strawberry.ID, prompt: str) -> Task:
        task = await tasks_resolvers.follow_up_task(
            info.context.viewer, info.context.runtime.dispatcher, _task_id(id), prompt=prompt
        )
        return Task.from_model(task)

    @strawberry.mutation(
        permission_classes=[IsAuthenticated], description="Push the task's branch to the project's remote."
    )
    async def push_task(self, info: Info, id: strawberry.ID) -> Task:
        task = await tasks_resolvers.push_task(
            info.context.viewer, info.context.runtime.workspaces, _task_id(id)
        )
        return Task.from_model(task)

    @strawberry.mutation(
        permission_classes=[IsAuthenticated],
        description="Merge the task's branch into its base branch; CONFLICT (nothing changed) on conflict.",
    )
    async def merge_task(self, info: Info, id: strawberry.ID, input: MergeTaskInput) -> Task:
        task = await tasks_resolvers.merge_task(
            info.context.viewer,
            info.context.runtime.workspaces,
            _task_id(id),
            strategy=MergeStrategyEnum(input.strategy),
        )
        return Task.from_model(task)
