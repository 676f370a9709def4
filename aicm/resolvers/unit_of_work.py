"""One transaction per mutation: the change, its audit row, and events published only after the commit.

Tortoise offers no on-commit hook, so events queued with ``emit`` are published here, once the transaction
has committed; a rolled-back change publishes nothing. Events go to the context's current publisher
(``subscriptions/publisher.py``), which the app installs per request.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from aicm import models
from aicm.auth.viewer import Viewer
from aicm.subscriptions.publisher import publish


@dataclass
class UnitOfWork:
    viewer: Viewer
    connection: BaseDBAsyncClient
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def audit(self, action: str, target: Any, **details: Any) -> None:
        await models.AuditLog.create(
            actor_id=self.viewer.user_id,
            action=action,
            target_type=type(target).__name__,
            target_id=str(target.pk),
            details=details,
            ip=self.viewer.ip,
            using_db=self.connection,
        )

    def emit(self, channel: str, payload: dict[str, Any]) -> None:
        self.events.append((channel, payload))


@contextlib.asynccontextmanager
async def unit_of_work(viewer: Viewer) -> AsyncIterator[UnitOfWork]:
    async with in_transaction() as connection:
        uow = UnitOfWork(viewer, connection)
        yield uow
    for channel, payload in uow.events:
        await publish(channel, payload)
