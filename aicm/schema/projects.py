"""GraphQL types and root fields for projects and their members."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry

from aicm import models
from aicm.auth import authorization
from aicm.resolvers import projects as projects_resolvers
from aicm.resolvers import tasks as tasks_resolvers
from aicm.schema.context import Info
from aicm.schema.permissions import IsAuthenticated
from aicm.schema.relay import Connection, connection, decode_id, encode_id
from aicm.schema.roles import Role
from aicm.schema.tasks import Task, TaskStatus
from aicm.schema.users import User


@strawberry.enum
class ProjectStatus(Enum):
    ACTIVE = "ACTIVE"
    ARCHIVED = "ARCHIVED"


@strawberry.type
class ProjectMember:
    added_at: datetime
    user_pk: strawberry.Private[int]
    role_pk: strawberry.Private[int]

    @classmethod
    def from_model(cls, member: models.ProjectMember) -> ProjectMember:
        return cls(added_at=member.added_at, user_pk=member.user_id, role_pk=member.role_id)  # type: ignore[attr-defined]

    @strawberry.field
    async def user(self, info: Info) -> User:
        return User.from_model(await info.context.loaders.user_by_id.load(self.user_pk))

    @strawberry.field
    async def role(self, info: Info) -> Role:
        return Role.from_model((await info.context.viewer.roles())[self.role_pk])


@strawberry.type
class Project:
    id: strawberry.ID
    name: str
    slug: str
    description: str
    repository_url: str
    status: ProjectStatus
    created_at: datetime
    updated_at: datetime
    pk: strawberry.Private[int]
    owner_pk: strawberry.Private[int]

    @classmethod
    def from_model(cls, project: models.Project) -> Project:
        return cls(
            id=encode_id("Project", project.id),
            name=project.name,
            slug=project.slug,
            description=project.description,
            repository_url=project.repository_url,
            status=ProjectStatus(project.status),
            created_at=project.created_at,
            updated_at=project.updated_at,
            pk=project.id,
            owner_pk=project.owner_id,  # type: ignore[attr-defined]
        )

    @strawberry.field
    async def owner(self, info: Info) -> User:
        return User.from_model(await info.context.loaders.user_by_id.load(self.owner_pk))

    @strawberry.field
    async def members(self, info: Info) -> list[ProjectMember]:
        return [
            ProjectMember.from_model(m)
            for m in await info.context.loaders.members_by_project_id.load(self.pk)
        ]

    @strawberry.field(description="The project's tasks, newest first.")
    async def tasks(
        self, info: Info, status: TaskStatus | None = None, first: int | None = 20, after: str | None = None
    ) -> Connection[Task]:
        page = await tasks_resolvers.list_tasks(
            info.context.viewer,
            project_id=self.pk,
            status=models.TaskStatus(status.value) if status else None,
            first=first,
            after=after,
        )
        return connection(page, Task.from_model)

    @strawberry.field(description="The viewer's role in this project; null when not a member.")
    async def viewer_role(self, info: Info) -> Role | None:
        role = await authorization.project_role(info.context.viewer, self.pk)
        return Role.from_model(role) if role else None


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


def _project_id(value: strawberry.ID, field: str = "id") -> int:
    return decode_id(value, "Project", field=field)


def _membership_ids(project_id: strawberry.ID, user_id: strawberry.ID) -> tuple[int, int]:
    return _project_id(project_id, "projectId"), decode_id(user_id, "User", field="userId")


@strawberry.type
class ProjectQueries:
    @strawberry.field(permission_classes=[IsAuthenticated])
    async def project(self, info: Info, id: strawberry.ID) -> Project:
        return Project.from_model(await projects_resolvers.get_project(info.context.viewer, _project_id(id)))

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
        return connection(page, Project.from_model)


@strawberry.type
class ProjectMutations:
    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def create_project(self, info: Info, input: CreateProjectInput) -> Project:
        project = await projects_resolvers.create_project(
            info.context.viewer,
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
            _project_id(id),
            name=input.name,
            description=input.description,
            repository_url=input.repository_url,
        )
        return Project.from_model(project)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def archive_project(self, info: Info, id: strawberry.ID) -> Project:
        return Project.from_model(
            await projects_resolvers.archive_project(info.context.viewer, _project_id(id))
        )

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def delete_project(self, info: Info, id: strawberry.ID) -> bool:
        return await projects_resolvers.delete_project(info.context.viewer, _project_id(id))

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def add_project_member(
        self, info: Info, project_id: strawberry.ID, user_id: strawberry.ID, role_id: strawberry.ID
    ) -> ProjectMember:
        ids = _membership_ids(project_id, user_id)
        role = decode_id(role_id, "Role", field="roleId")
        member = await projects_resolvers.add_project_member(info.context.viewer, *ids, role)
        return ProjectMember.from_model(member)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def update_project_member(
        self, info: Info, project_id: strawberry.ID, user_id: strawberry.ID, role_id: strawberry.ID
    ) -> ProjectMember:
        ids = _membership_ids(project_id, user_id)
        role = decode_id(role_id, "Role", field="roleId")
        member = await projects_resolvers.update_project_member(info.context.viewer, *ids, role)
        return ProjectMember.from_model(member)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def remove_project_member(
        self, info: Info, project_id: strawberry.ID, user_id: strawberry.ID
    ) -> bool:
        return await projects_resolvers.remove_project_member(
            info.context.viewer, *_membership_ids(project_id, user_id)
        )
