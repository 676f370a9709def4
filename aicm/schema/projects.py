"""GraphQL types and root fields for projects and their members."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

import strawberry

from aicm import models
from aicm.errors import NotFound
from aicm.resolvers import agent_credentials as agent_credentials_resolvers
from aicm.resolvers import projects as projects_resolvers
from aicm.resolvers import tasks as tasks_resolvers
from aicm.resolvers import webhooks as webhooks_resolvers
from aicm.schema.context import Info
from aicm.schema.loading import from_loader, once, selected
from aicm.schema.mapping import from_row
from aicm.schema.permissions import IsAuthenticated
from aicm.schema.relay import Connection, connection, decode_id, encode_id
from aicm.schema.roles import Role
from aicm.schema.tasks import Task, TaskStatus
from aicm.schema.users import User
from aicm.schema.viewer import AgentCredentialInput

if TYPE_CHECKING:
    from aicm.auth.viewer import Viewer

ProjectStatus = strawberry.enum(models.ProjectStatus)
AgentPermissionMode = strawberry.enum(
    models.AgentPermissionMode, description="Passed to the agent CLI as --permission-mode (CONTRACT §10)."
)


WebhookEvent = strawberry.enum(models.WebhookEvent)


@strawberry.type(description="One attempt to deliver one event.")
class WebhookDelivery:
    at: datetime
    event: WebhookEvent
    status: int | None = strawberry.field(description="The HTTP status; null when no answer came.")
    error: str | None = strawberry.field(description="Why the attempt failed; null when it succeeded.")
    attempt: int = strawberry.field(description="1 for the first attempt at this event, then 2, 3...")

    @classmethod
    def from_model(cls, row: models.WebhookDelivery) -> WebhookDelivery:
        return from_row(cls, row, event=models.WebhookEvent(row.event))


@strawberry.type(description="POSTs signed JSON (X-AICM-Signature: sha256=...) on the events it names.")
class Webhook:
    id: strawberry.ID
    url: str
    events: list[WebhookEvent]
    created_at: datetime
    pk: strawberry.Private[int]

    @classmethod
    def from_model(cls, hook: models.Webhook) -> Webhook:
        events = [models.WebhookEvent(event) for event in hook.events or []]
        return from_row(cls, hook, id=encode_id("Webhook", hook.id), events=events, pk=hook.id)

    @strawberry.field(description="Delivery attempts, newest first.")
    async def deliveries(self, info: Info, first: int | None = 20) -> list[WebhookDelivery]:
        rows = await webhooks_resolvers.webhook_deliveries(info.context.loaders, self.pk, first)
        return [WebhookDelivery.from_model(row) for row in rows]


def _member_user(info: Info, project_id: int, user_id: int) -> User | Awaitable[User]:
    """A member's user: shown wherever the project's members are readable (see ``Loaders.member_user``)."""
    return from_loader(
        info.context.loaders.member_user, (project_id, user_id), lambda user: _found_member_user(info, user)
    )


def _found_member_user(info: Info, user: models.User | None) -> User:
    if user is None:  # only reachable from a membership the viewer may not read
        raise NotFound("User not found")
    return once(info, user, User.from_model)


def _found_role(info: Info, role: models.Role | None) -> Role:
    if role is None:  # a member's role cannot be deleted (CONFLICT), so only a race gets here
        raise NotFound("Role not found")
    return once(info, role, Role.from_model)


def _members(rows: list[models.ProjectMember]) -> list[ProjectMember]:
    return [ProjectMember.from_model(row) for row in rows]


def _viewer_role(role: models.Role | None) -> Role | None:
    return Role.from_model(role) if role else None


@strawberry.type
class ProjectMember:
    added_at: datetime
    project_pk: strawberry.Private[int]
    user_pk: strawberry.Private[int]
    role_pk: strawberry.Private[int]

    @classmethod
    def from_model(cls, member: models.ProjectMember) -> ProjectMember:
        return cls(
            added_at=member.added_at,
            project_pk=member.project_id,  # type: ignore[attr-defined]
            user_pk=member.user_id,  # type: ignore[attr-defined]
            role_pk=member.role_id,  # type: ignore[attr-defined]
        )

    # Synchronous when the root field prefetched them (aicm.schema.loading), else awaiting their loaders.
    @strawberry.field(graphql_type=User)
    def user(self, info: Info) -> User | Awaitable[User]:
        return _member_user(info, self.project_pk, self.user_pk)

    @strawberry.field(graphql_type=Role)
    def role(self, info: Info) -> Role | Awaitable[Role]:
        roles = info.context.loaders.role_by_id
        return from_loader(roles, self.role_pk, lambda role: _found_role(info, role))


@strawberry.type
class Project:
    id: strawberry.ID
    name: str
    slug: str
    description: str
    repository_url: str
    default_branch: str | None = strawberry.field(description="From the remote's HEAD; settable.")
    status: ProjectStatus
    created_at: datetime
    updated_at: datetime
    has_credential: bool = strawberry.field(
        description="Whether a repository credential is set (write-only)."
    )
    agent_permission_mode: AgentPermissionMode = strawberry.field(
        description="Maintainer+ sets it; BYPASS (no approvals asked) only an admin."
    )
    has_agent_credential: bool = strawberry.field(
        description="Whether the project's agent API key is set (write-only); used by tasks whose creator "
        "has none of their own."
    )
    monthly_budget_usd: float | None = strawberry.field(
        description="New tasks are refused (FORBIDDEN, reason BUDGET_EXCEEDED) once monthCostUsd reaches it; "
        "null = no budget."
    )
    pk: strawberry.Private[int]
    owner_pk: strawberry.Private[int]
    approver_role_pk: strawberry.Private[int | None]

    @classmethod
    def from_model(cls, project: models.Project) -> Project:
        return from_row(
            cls,
            project,
            id=encode_id("Project", project.id),
            status=models.ProjectStatus(project.status),
            pk=project.id,
            owner_pk=project.owner_id,  # type: ignore[attr-defined]
            has_credential=bool(project.credential_secret),
            agent_permission_mode=models.AgentPermissionMode(project.agent_permission_mode),
            approver_role_pk=project.approver_role_id,
            has_agent_credential=bool(project.agent_credential_secret),
        )

    # Synchronous below when a root field prefetched their batches (``_prefetch``, aicm.schema.loading).
    @strawberry.field(
        description="The summed costUsd of the tasks created this calendar month (UTC).", graphql_type=float
    )
    def month_cost_usd(self, info: Info) -> float | Awaitable[float]:
        return from_loader(info.context.loaders.month_cost_by_project_id, self.pk, float)

    @strawberry.field(description="One of the members holding an owner role.", graphql_type=User)
    def owner(self, info: Info) -> User | Awaitable[User]:
        return _member_user(info, self.pk, self.owner_pk)

    @strawberry.field(graphql_type=list[ProjectMember])
    def members(self, info: Info) -> list[ProjectMember] | Awaitable[list[ProjectMember]]:
        return from_loader(info.context.loaders.members_by_project_id, self.pk, _members)

    @strawberry.field(description="The project's tasks, newest first.")
    async def tasks(
        self, info: Info, status: TaskStatus | None = None, first: int | None = 20, after: str | None = None
    ) -> Connection[Task]:
        page = await tasks_resolvers.list_tasks(
            info.context.viewer,
            project_id=self.pk,
            status=status,
            first=first,
            after=after,
        )
        return connection(page, Task.from_model)

    @strawberry.field(
        description="Members whose role is at least this one decide tool approvals (default: maintainer)."
    )
    async def approver_role(self, info: Info) -> Role:
        return Role.from_model(
            await projects_resolvers.approver_role(info.context.loaders, self.approver_role_pk)
        )

    @strawberry.field(description="Its webhooks, for maintainer+ (an empty list for other viewers).")
    async def webhooks(self, info: Info) -> list[Webhook]:
        rows = await webhooks_resolvers.project_webhooks(info.context.loaders, self.pk)
        return [Webhook.from_model(row) for row in rows]

    @strawberry.field(
        description="The viewer's role in this project; null when not a member.", graphql_type=Role | None
    )
    def viewer_role(self, info: Info) -> Role | Awaitable[Role | None] | None:
        return from_loader(info.context.loaders.viewer_role_by_project_id, self.pk, _viewer_role)


@strawberry.input
class CreateProjectInput:
    name: str
    description: str = ""
    repository_url: str = ""
    slug: str | None = strawberry.field(default=None, description="Derived from the name when omitted.")


@strawberry.input
class UpdateProjectInput:
    name: str | None = None
    description: str | None = None
    repository_url: str | None = None
    default_branch: str | None = None
    monthly_budget_usd: float | None = strawberry.field(
        default=strawberry.UNSET, description="Maintainer+; null removes the budget, absent keeps it."
    )
    agent_permission_mode: AgentPermissionMode | None = None
    approver_role_id: strawberry.ID | None = strawberry.field(
        default=None, description="A project-scope role; members at or above it decide tool approvals."
    )


@strawberry.input
class AddProjectWebhookInput:
    url: str = strawberry.field(description="http or https; no private addresses in production by default.")
    events: list[WebhookEvent]
    secret: str = strawberry.field(description="Signs each body (HMAC-SHA256); write-only.")


@strawberry.input(description="An HTTPS token or an SSH private key; neither clears the credential.")
class ProjectCredentialInput:
    token: str | None = None
    ssh_private_key: str | None = None


async def _prefetch(info: Info, projects: list[models.Project], *path: str) -> None:
    """Load what the selection at ``path`` asks of these projects, in the batches their fields would use, so
    that those fields resolve without awaiting (aicm.schema.loading): one query per relation, as before, and
    every row through the viewer's ``Loaders``, so exactly what the fields would show."""
    loaders = info.context.loaders
    loaders.prime_projects(projects)  # just read under the viewer's visibility
    selection = info.selected_fields
    fields = selected(selection, *path)
    ids = [project.id for project in projects]
    users = [(p.id, p.owner_id) for p in projects] if "owner" in fields else []  # type: ignore[attr-defined]
    if "members" in fields:
        wanted = selected(selection, *path, "members")
        members = [m for group in await loaders.members_by_project_id.load_many(ids) for m in group]
        if "user" in wanted:
            users += [(m.project_id, m.user_id) for m in members]  # type: ignore[attr-defined]
        if "role" in wanted:
            await loaders.role_by_id.load_many([m.role_id for m in members])  # type: ignore[attr-defined]
    if users:
        await loaders.member_user.load_many(users)  # the owners' and the members' users in one batch
    if "viewerRole" in fields:
        await loaders.viewer_role_by_project_id.load_many(ids)
    if "monthCostUsd" in fields:
        await loaders.month_cost_by_project_id.load_many(ids)


def _project_id(value: strawberry.ID, field: str = "id") -> int:
    return decode_id(value, "Project", field=field)


def _membership_ids(project_id: strawberry.ID, user_id: strawberry.ID) -> tuple[int, int]:
    return _project_id(project_id, "projectId"), decode_id(user_id, "User", field="userId")


MemberChange = Callable[["Viewer", int, int, int], Awaitable[models.ProjectMember]]


async def _change_member(
    info: Info,
    change: MemberChange,
    project_id: strawberry.ID,
    user_id: strawberry.ID,
    role_id: strawberry.ID,
) -> ProjectMember:
    role = decode_id(role_id, "Role", field="roleId")
    member = await change(info.context.viewer, *_membership_ids(project_id, user_id), role)
    return ProjectMember.from_model(member)


@strawberry.type
class ProjectQueries:
    @strawberry.field(permission_classes=[IsAuthenticated])
    async def project(self, info: Info, id: strawberry.ID) -> Project:
        project = await projects_resolvers.get_project(info.context.viewer, _project_id(id))
        await _prefetch(info, [project])
        return Project.from_model(project)

    @strawberry.field(permission_classes=[IsAuthenticated])
    async def projects(
        self,
        info: Info,
        first: int | None = 20,
        after: str | None = None,
        search: str | None = None,
        include_archived: bool = False,
    ) -> Connection[Project]:
        page = await projects_resolvers.list_projects(
            info.context.viewer, first=first, after=after, search=search, include_archived=include_archived
        )
        await _prefetch(info, page.rows, "edges", "node")
        return connection(page, Project.from_model)


@strawberry.type
class ProjectMutations:
    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def create_project(self, info: Info, input: CreateProjectInput) -> Project:
        project = await projects_resolvers.create_project(
            info.context.viewer,
            info.context.runtime.workspaces,
            name=input.name,
            description=input.description,
            repository_url=input.repository_url,
            slug=input.slug,
        )
        return Project.from_model(project)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def update_project(self, info: Info, id: strawberry.ID, input: UpdateProjectInput) -> Project:
        project = await projects_resolvers.update_project(
            info.context.viewer,
            info.context.runtime.workspaces,
            _project_id(id),
            name=input.name,
            description=input.description,
            repository_url=input.repository_url,
            default_branch=input.default_branch,
            agent_permission_mode=input.agent_permission_mode,
            approver_role_id=decode_id(input.approver_role_id, "Role", field="approverRoleId")
            if input.approver_role_id
            else None,
            monthly_budget_usd=(
                projects_resolvers.UNCHANGED
                if input.monthly_budget_usd is strawberry.UNSET
                else input.monthly_budget_usd
            ),
        )
        return Project.from_model(project)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def archive_project(self, info: Info, id: strawberry.ID) -> Project:
        return Project.from_model(
            await projects_resolvers.archive_project(info.context.viewer, _project_id(id))
        )

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def delete_project(self, info: Info, id: strawberry.ID) -> bool:
        return await projects_resolvers.delete_project(
            info.context.viewer, info.context.runtime.workspaces, _project_id(id)
        )

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def set_project_credential(
        self, info: Info, project_id: strawberry.ID, input: ProjectCredentialInput
    ) -> Project:
        project = await projects_resolvers.set_project_credential(
            info.context.viewer,
            info.context.runtime.workspaces,
            _project_id(project_id, "projectId"),
            token=input.token,
            ssh_private_key=input.ssh_private_key,
        )
        return Project.from_model(project)

    @strawberry.mutation(permission_classes=[IsAuthenticated], description="Maintainer+.")
    async def add_project_webhook(
        self, info: Info, project_id: strawberry.ID, input: AddProjectWebhookInput
    ) -> Webhook:
        hook = await webhooks_resolvers.add_project_webhook(
            info.context.viewer,
            info.context.runtime.settings,
            _project_id(project_id, "projectId"),
            url=input.url,
            events=[models.WebhookEvent(event) for event in input.events],
            secret=input.secret,
        )
        return Webhook.from_model(hook)

    @strawberry.mutation(permission_classes=[IsAuthenticated], description="Maintainer+.")
    async def remove_project_webhook(self, info: Info, id: strawberry.ID) -> bool:
        return await webhooks_resolvers.remove_project_webhook(info.context.viewer, decode_id(id, "Webhook"))

    @strawberry.mutation(
        permission_classes=[IsAuthenticated],
        description="Maintainer+: set (or, without apiKey, remove) the project's agent credential.",
    )
    async def set_project_agent_credential(
        self, info: Info, project_id: strawberry.ID, input: AgentCredentialInput
    ) -> Project:
        project = await agent_credentials_resolvers.set_project_agent_credential(
            info.context.viewer,
            info.context.runtime.workspaces,
            _project_id(project_id, "projectId"),
            provider=input.provider,
            api_key=input.api_key,
        )
        return Project.from_model(project)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def add_project_member(
        self, info: Info, project_id: strawberry.ID, user_id: strawberry.ID, role_id: strawberry.ID
    ) -> ProjectMember:
        change = projects_resolvers.add_project_member
        return await _change_member(info, change, project_id, user_id, role_id)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def update_project_member(
        self, info: Info, project_id: strawberry.ID, user_id: strawberry.ID, role_id: strawberry.ID
    ) -> ProjectMember:
        change = projects_resolvers.update_project_member
        return await _change_member(info, change, project_id, user_id, role_id)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def remove_project_member(
        self, info: Info, project_id: strawberry.ID, user_id: strawberry.ID
    ) -> bool:
        return await projects_resolvers.remove_project_member(
            info.context.viewer, *_membership_ids(project_id, user_id)
        )
