"""Users: sign-up, administration, and the invariants that keep projects owned and the system administered."""

from __future__ import annotations

from tortoise.expressions import Q, Subquery
from tortoise.functions import Count

from aicm import models
from aicm.auth import authorization
from aicm.auth.passwords import check_policy, hash_password
from aicm.auth.permissions import MEMBER, Permission
from aicm.auth.viewer import Viewer
from aicm.errors import BadUserInput, Conflict, Forbidden, NotFound
from aicm.resolvers import validation
from aicm.resolvers.pagination import Page, paginate
from aicm.resolvers.unit_of_work import UnitOfWork, unit_of_work
from aicm.subscriptions import channels


async def get_user(viewer: Viewer, user_id: int) -> models.User:
    return await authorization.get_visible_user(viewer, user_id)


async def list_users(viewer: Viewer, *, first: int | None, after: str | None, search: str | None) -> Page:
    authorization.require_system(viewer, Permission.USER_READ)
    queryset = models.User.all()
    if term := validation.search(search):
        queryset = queryset.filter(Q(name__icontains=term) | Q(email__icontains=term))
    return await paginate(queryset, first, after)


async def _system_roles(role_ids: list[int], field: str) -> list[models.Role]:
    roles = await models.Role.filter(id__in=role_ids, scope=models.RoleScope.SYSTEM)
    if len(roles) != len(set(role_ids)):
        raise BadUserInput("Unknown or non-system role", field=field)
    return roles


async def _ensure_email_free(email: str, *, except_user_id: int | None = None) -> None:
    if await models.User.filter(email=email).exclude(id=except_user_id or 0).exists():
        raise Conflict("A user with this email already exists", field="email")


async def _new_user(
    uow: UnitOfWork, *, email: str, name: str, password: str, roles: list[models.Role]
) -> models.User:
    email = validation.normalize_email(email)
    name = validation.text(name, "name", max_len=200) or email.split("@")[0]
    check_policy(password, email=email)
    await _ensure_email_free(email)
    user = await models.User.create(email=email, name=name, password_hash=hash_password(password))
    for role in roles:
        await models.UserRole.create(user=user, role=role)
    await uow.audit("user.create", user, email=email, roles=[r.name for r in roles])
    return user


async def register(viewer: Viewer, *, email: str, password: str, name: str, allowed: bool) -> models.User:
    """Open sign-up; new users get the built-in ``member`` role."""
    if not allowed:
        raise Forbidden("Registration is closed")
    member = await models.Role.get(name=MEMBER, built_in=True)
    async with unit_of_work(viewer) as uow:
        user = await _new_user(uow, email=email, name=name, password=password, roles=[member])
    return user


async def create_user(
    viewer: Viewer, *, email: str, name: str, password: str, role_ids: list[int]
) -> models.User:
    authorization.require_system(viewer, Permission.USER_MANAGE)
    roles = await _system_roles(role_ids, "roleIds") if role_ids else [await models.Role.get(name=MEMBER)]
    async with unit_of_work(viewer) as uow:
        return await _new_user(uow, email=email, name=name, password=password, roles=roles)


async def _update(viewer: Viewer, user: models.User, *, name: str | None, email: str | None) -> models.User:
    changes: dict[str, str] = {}
    if name is not None:
        changes["name"] = validation.text(name, "name", min_len=1, max_len=200)
    if email is not None:
        changes["email"] = validation.normalize_email(email)
        await _ensure_email_free(changes["email"], except_user_id=user.id)
    if not changes:
        return user
    async with unit_of_work(viewer) as uow:
        await user.update_from_dict(changes).save(using_db=uow.connection)
        await uow.audit("user.update", user, fields=sorted(changes))
    return user


async def update_me(viewer: Viewer, *, name: str | None) -> models.User:
    user = viewer.require_user()
    return await _update(viewer, user, name=name, email=None)


async def update_user(viewer: Viewer, user_id: int, *, name: str | None, email: str | None) -> models.User:
    authorization.require_system(viewer, Permission.USER_MANAGE)
    return await _update(viewer, await get_user(viewer, user_id), name=name, email=email)


async def sole_owned_projects(user_id: int) -> list[models.Project]:
    """Projects in which this user is the only member holding an owner-level role."""
    owner_roles = await authorization.owner_role_ids()
    owned = models.ProjectMember.filter(user_id=user_id, role_id__in=owner_roles).values("project_id")
    counts = (
        await models.ProjectMember.filter(project_id__in=Subquery(owned), role_id__in=owner_roles)
        .annotate(owners=Count("id"))
        .group_by("project_id")
        .values("project_id", "owners")
    )
    return await models.Project.filter(id__in=[row["project_id"] for row in counts if row["owners"] == 1])


async def _is_last_admin(user: models.User) -> bool:
    admins = authorization.active_admins()
    return await admins.filter(user_id=user.id).exists() and await admins.count() == 1


async def deactivate_user(viewer: Viewer, user_id: int) -> models.User:
    authorization.require_system(viewer, Permission.USER_MANAGE)
    user = await get_user(viewer, user_id)
    if not user.is_active:
        return user
    if projects := await sole_owned_projects(user.id):
        names = ", ".join(p.slug for p in projects[:5])
        raise Conflict(f"The user is the only owner of: {names}; transfer ownership first", field="id")
    if await _is_last_admin(user):
        raise Conflict("The last active administrator cannot be deactivated", field="id")
    async with unit_of_work(viewer) as uow:
        user.is_active = False
        await user.save(using_db=uow.connection, update_fields=["is_active"])
        await uow.audit("user.deactivate", user)
        uow.emit(channels.user(user.id), {"type": "USER_DEACTIVATED", "user_id": user.id})
    return user


async def assign_role(viewer: Viewer, user_id: int, role_id: int) -> models.User:
    authorization.require_system(viewer, Permission.USER_MANAGE)
    user = await get_user(viewer, user_id)
    (role,) = await _system_roles([role_id], "roleId")
    async with unit_of_work(viewer) as uow:
        _, created = await models.UserRole.get_or_create(user=user, role=role, using_db=uow.connection)
        if created:
            await uow.audit("user.assign_role", user, role=role.name)
            uow.emit(channels.user(user.id), {"type": "USER_ROLES_CHANGED", "user_id": user.id})
    return user


async def revoke_role(viewer: Viewer, user_id: int, role_id: int) -> bool:
    authorization.require_system(viewer, Permission.USER_MANAGE)
    user = await get_user(viewer, user_id)
    role = await models.Role.get_or_none(id=role_id)
    if role is None:
        raise NotFound("Role not found")
    if authorization.is_admin_role(role) and await _is_last_admin(user):
        raise Conflict("The last active administrator keeps the admin role", field="roleId")
    async with unit_of_work(viewer) as uow:
        deleted = await models.UserRole.filter(user=user, role=role).using_db(uow.connection).delete()
        if deleted:
            await uow.audit("user.revoke_role", user, role=role.name)
            uow.emit(channels.user(user.id), {"type": "USER_ROLES_CHANGED", "user_id": user.id})
    return bool(deleted)
