"""Setting and clearing agent credentials (CONTRACT §9): one's own, and a project's (maintainer+).

Write-only: a key is checked, encrypted (``aicm.runner.agent_credentials.seal``) and stored; no answer,
error, log line or audit row holds it. An ``apiKey`` that is null or absent removes the credential. Both
changes are audited with the provider only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aicm import models
from aicm.auth import authorization
from aicm.auth.viewer import Viewer
from aicm.resolvers.unit_of_work import unit_of_work
from aicm.runner.agent_credentials import check_provider, seal

if TYPE_CHECKING:
    from aicm.runner.workspace import Workspaces


async def set_agent_credential(
    viewer: Viewer, workspaces: Workspaces, *, provider: str, api_key: str | None
) -> models.User:
    """Store (or, without a key, remove) the viewer's own agent credential."""
    user = viewer.require_user()
    provider = check_provider(provider)
    sealed = None
    if api_key is not None:
        sealed = seal(workspaces.box, "user", user.id, provider=provider, api_key=api_key)
    async with unit_of_work(viewer) as uow:
        await models.User.filter(id=user.id).using_db(uow.connection).update(agent_credential_secret=sealed)
        action = "user.set_agent_credential" if sealed else "user.clear_agent_credential"
        await uow.audit(action, user, provider=provider)
    user.agent_credential_secret = sealed
    return user


async def set_project_agent_credential(
    viewer: Viewer, workspaces: Workspaces, project_id: int, *, provider: str, api_key: str | None
) -> models.Project:
    """Store (or, without a key, remove) the project's agent credential: maintainer+."""
    project = await authorization.get_visible_project(viewer, project_id)
    await authorization.require_credential_manage(viewer, project)
    provider = check_provider(provider)
    sealed = None
    if api_key is not None:
        sealed = seal(workspaces.box, "project", project.id, provider=provider, api_key=api_key)
    async with unit_of_work(viewer) as uow:
        project.agent_credential_secret = sealed
        await project.save(using_db=uow.connection, update_fields=["agent_credential_secret", "updated_at"])
        action = "project.set_agent_credential" if sealed else "project.clear_agent_credential"
        await uow.audit(action, project, provider=provider)
    return project
