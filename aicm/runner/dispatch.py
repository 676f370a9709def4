"""How a created task reaches whoever runs it, and how a cancel reaches the process running it.

Two implementations: the in-process executor (``runner.embedded: true``, the default) and the Redis job queue
for separate ``aicli-api worker`` processes. Resolvers only see this interface.
"""

from __future__ import annotations

from typing import Protocol

from aicm.runner.executor import TaskExecutor, cancel_pending
from aicm.subscriptions import channels
from aicm.subscriptions.broker import Broker


class TaskDispatcher(Protocol):
    async def submit(self, task_id: int) -> None:
        """Queue a committed PENDING task for execution."""

    async def cancel(self, task_id: int) -> None:
        """Ask whichever process runs the task to stop it (the task row is already marked)."""


class LocalDispatcher:
    """``runner.embedded: true``: this process's executor runs the tasks it creates."""

    def __init__(self, executor: TaskExecutor) -> None:
        self.executor = executor

    async def submit(self, task_id: int) -> None:
        await self.executor.submit(task_id)

    async def cancel(self, task_id: int) -> None:
        await request_cancel(self.executor.broker, task_id, local=self.executor)


async def request_cancel(broker: Broker, task_id: int, *, local: TaskExecutor | None = None) -> None:
    """Stop a task wherever it is: not started yet, running here, or running in another process."""
    if local is not None and local.cancel_local(task_id):
        return
    if await cancel_pending(task_id):
        return
    await broker.publish(channels.task_control(), {"cancel": task_id})
