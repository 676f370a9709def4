"""Roles: the built-in ones are immutable; admins create custom roles from the same permission strings."""

from __future__ import annotations

from aicm import models
from aicm.auth import authorization
from aicm.auth.permissions import ALL_PERMISSIONS, PROJECT_PERMISSIONS, Permission
from aicm.auth.viewer import Viewer
from aicm.errors import BadUserInput, Conflict, Forbidden, NotFound
from aicm.resolvers import validation
from aicm.resolvers.unit_of_work import UnitOfWork, unit_of_work
from aicm.subscriptions import channels


async def list_roles(viewer: Viewer, *, scope: models.RoleScope | None) -> list[models.Role]:
    viewer.require_user()
    queryset = models.Role.all() if scope is None else models.Role.filter(scope=scope)
    return await queryset.order_by("id")


def list_permissions(viewer: Viewer) -> list[str]:
    viewer.require_user()
    return list(ALL_PERMISSIONS)


def _permissions(values: list[str], scope: models.RoleScope) -> list[str]:
    allowed = PROJECT_PERMISSIONS if scope == models.RoleScope.PROJECT else ALL_PERMISSIONS
    for value in values:
        validation.no_nul(value, "permissions")
        if value not in allowed:
            raise BadUserInput(f"Unknown permission for a {scope.value} role: {value!r}", field="permissions")
    return sorted(set(values))


async def _ensure_name_free(name: str, except_id: int = 0) -> None:
    if await models.Role.filter(name=name).exclude(id=except_id).exists():
        raise Conflict("A role with this name already exists", field="name")


def _permissions_changed(uow: UnitOfWork, viewer: Viewer, role: models.Role) -> None:
    """Every live subscription whose access rests on this role checks it again (on every instance)."""
    uow.emit(channels.roles(), {"type": "ROLE_PERMISSIONS_CHANGED", "role_id": role.id})
    viewer.forget()  # the caller may hold the role too: this request's later reads must see the change


async def _mutable_role(viewer: Viewer, role_id: int) -> models.Role:
    authorization.require_system(viewer, Permission.ROLE_MANAGE)
    role = await models.Role.get_or_none(id=role_id)
    if role is None:
        raise NotFound("Role not found")
    if role.built_in:
        raise Forbidden("Built-in roles cannot be changed")
    return role


async def create_role(
    viewer: Viewer, *, name: str, description: str, scope: models.RoleScope, permissions: list[str]
) -> models.Role:
    authorization.require_system(viewer, Permission.ROLE_MANAGE)
    name = validation.role_name(name)
    description = validation.text(description, "description", max_len=500)
    perms = _permissions(permissions, scope)
    await _ensure_name_free(name)
    async with unit_of_work(viewer) as uow:
        role = await models.Role.create(
            name=name, description=description, scope=scope, permissions=perms, using_db=uow.connection
        )
        await uow.audit("role.create", role, name=name, scope=scope.value, permissions=perms)
    return role


async def update_role(
    viewer: Viewer, role_id: int, *, name: str | None, description: str | None, permissions: list[str] | None
) -> models.Role:
    role = await _mutable_role(viewer, role_id)
    changes: dict[str, object] = {}
    if name is not None:
        changes["name"] = validation.role_name(name)
        await _ensure_name_free(changes["name"], role.id)  # type: ignore[arg-type]
    if description is not None:
        changes["description"] = validation.text(description, "description", max_len=500)
    if permissions is not None:
        changes["permissions"] = _permissions(permissions, models.RoleScope(role.scope))
    if changes:
        async with unit_of_work(viewer) as uow:
            await role.update_from_dict(changes).save(using_db=uow.connection)
            await uow.audit("role.update", role, **{k: v for k, v in changes.items()})
            if "permissions" in changes:
                _permissions_changed(uow, viewer, role)
    return role


async def delete_role(viewer: Viewer, role_id: int) -> bool:
    role = await _mutable_role(viewer, role_id)
    if await models.ProjectMember.filter(role_id=role.id).exists():
        raise Conflict("The role is still held by project members", field="id")
    async with unit_of_work(viewer) as uow:
        await uow.audit("role.delete", role, name=role.name)
        _permissions_changed(uow, viewer, role)  # a system role's holders lose its permissions
        await role.delete(using_db=uow.connection)
    return True
