"""Stores a task's log lines in batches, then publishes each batch to the task's log channel.

One writer per running task is the only source of its ``seq`` numbers, so they run 1, 2, 3... with no holes.
A batch is written when it reaches ``max_batch`` lines or ``interval`` seconds after its first line; the
published message carries the stored lines with their seq, after the commit.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from tortoise.transactions import in_transaction

from aicm import models
from aicm.subscriptions import channels
from aicm.subscriptions.events import line_payload
from aicm.subscriptions.publisher import publish

FLUSH_INTERVAL = 0.05
MAX_BATCH = 100


class LogWriter:
    def __init__(
        self, task_id: int, last_seq: int, *, interval: float = FLUSH_INTERVAL, max_batch: int = MAX_BATCH
    ):
        self.task_id = task_id
        self.seq = last_seq
        self.interval = interval
        self.max_batch = max_batch
        self._pending: list[models.TaskLog] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self.written = 0

    async def add(self, stream: str, kind: str, text: str | None, data: dict[str, Any] | None) -> None:
        self.seq += 1
        self._pending.append(
            models.TaskLog(
                task_id=self.task_id,
                seq=self.seq,
                at=datetime.now(UTC),
                stream=stream,
                kind=kind,
                text=text,
                data=data,
            )
        )
        if len(self._pending) >= self.max_batch:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.interval)
        self._timer = None
        await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            async with in_transaction() as connection:
                await models.TaskLog.bulk_create(batch, using_db=connection)
                await models.Task.filter(id=self.task_id).using_db(connection).update(last_seq=batch[-1].seq)
            self.written += len(batch)
            # Published under the lock too, so batches reach subscribers in seq order.
            await publish(channels.task_logs(self.task_id), {"lines": [line_payload(row) for row in batch]})

    async def close(self) -> None:
        """Write what is pending; safe to call more than once."""
        if self._timer is not None:
            await self._timer  # at most one interval; cancelling it could interrupt a write
        await self.flush()
