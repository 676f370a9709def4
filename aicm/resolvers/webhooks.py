"""Project webhooks (CONTRACT §10): adding and removing them, reading them and their delivery log."""

from __future__ import annotations

from collections.abc import Sequence

from aicm import models
from aicm.auth import authorization
from aicm.auth.viewer import Viewer
from aicm.config import Settings
from aicm.errors import BadUserInput, NotFound
from aicm.resolvers import validation
from aicm.resolvers.loaders import Loaders
from aicm.resolvers.pagination import page_size
from aicm.resolvers.unit_of_work import unit_of_work
from aicm.runner import webhooks as sender

MIN_SECRET, MAX_SECRET = 8, 500
MAX_WEBHOOKS_PER_PROJECT = 20


async def add_project_webhook(
    viewer: Viewer,
    settings: Settings,
    project_id: int,
    *,
    url: str,
    events: Sequence[models.WebhookEvent],
    secret: str,
) -> models.Webhook:
    """A webhook of the project (maintainer+); its secret is stored encrypted and never read back."""
    project = await authorization.get_visible_project(viewer, project_id)
    await authorization.require_webhook_manage(viewer, project)
    url = await sender.check_url(settings, validation.text(url, "url", min_len=1, max_len=sender.MAX_URL))
    chosen = sorted({str(models.WebhookEvent(event)) for event in events})
    if not chosen:
        raise BadUserInput("'events' must name at least one event", field="events")
    secret = validation.text(secret, "secret", min_len=MIN_SECRET, max_len=MAX_SECRET, strip=False)
    if await models.Webhook.filter(project_id=project.id).count() >= MAX_WEBHOOKS_PER_PROJECT:
        raise BadUserInput(f"A project has at most {MAX_WEBHOOKS_PER_PROJECT} webhooks", field="projectId")
    sealed = sender.box(settings).encrypt(secret, associated_data=sender.associated_data(project.id))
    user = viewer.require_user()
    async with unit_of_work(viewer) as uow:
        hook = await models.Webhook.create(
            project=project, url=url, events=chosen, secret=sealed, created_by=user, using_db=uow.connection
        )
        await uow.audit("webhook.add", hook, project_id=project.id, url=url, events=chosen)
    return hook


async def remove_project_webhook(viewer: Viewer, webhook_id: int) -> bool:
    hook = await (await authorization.manageable_webhooks(viewer)).get_or_none(id=webhook_id)
    if hook is None:
        raise NotFound("Webhook not found")
    async with unit_of_work(viewer) as uow:
        await uow.audit("webhook.remove", hook, project_id=hook.project_id, url=hook.url)  # type: ignore[attr-defined]
        await hook.delete(using_db=uow.connection)
    return True


async def project_webhooks(loaders: Loaders, project_id: int) -> list[models.Webhook]:
    """The project's webhooks for those who may manage them; an empty list for everyone else."""
    return await loaders.webhooks_by_project.load(project_id)


async def webhook_deliveries(
    loaders: Loaders, webhook_id: int, first: int | None
) -> list[models.WebhookDelivery]:
    return await loaders.deliveries_by_webhook.load((webhook_id, page_size(first)))
