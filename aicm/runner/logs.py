"""Stores a task's log lines in batches; a task of its own publishes each stored batch on the log channel.

One writer per running task is the only source of its ``seq`` numbers, so they run 1, 2, 3... with no holes.
A batch is written when it reaches ``max_batch`` lines, ``max_bytes`` of text, or ``interval`` seconds after
its first line. Storing never waits for delivery: each committed batch is queued for the writer's publisher
task, which hands the batches to the broker in seq order at whatever pace the broker takes them. If more than
``max_unpublished`` bytes wait (a slow or unreachable broker), the oldest batches are dropped unpublished:
subscribers see the gap in ``seq`` and read those lines from storage.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import UTC, datetime
from typing import Any

from tortoise.transactions import in_transaction

from aicm import models
from aicm.subscriptions import channels
from aicm.subscriptions.events import line_payload
from aicm.subscriptions.publisher import publish

FLUSH_INTERVAL = 0.05
MAX_BATCH = 100
MAX_BATCH_BYTES = 256 * 1024
MAX_UNPUBLISHED = 16 * 1024 * 1024
CLOSE_WAIT = 10.0  # seconds close() waits for the last batches to be published

log = logging.getLogger("aicm.runner")


class LogWriter:
    def __init__(
        self,
        task_id: int,
        last_seq: int,
        *,
        interval: float = FLUSH_INTERVAL,
        max_batch: int = MAX_BATCH,
        max_bytes: int = MAX_BATCH_BYTES,
        max_unpublished: int = MAX_UNPUBLISHED,
    ):
        self.task_id = task_id
        self.seq = last_seq
        self.interval = interval
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.max_unpublished = max_unpublished
        self._pending: list[models.TaskLog] = []
        self._pending_bytes = 0
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._outbox: deque[tuple[dict[str, Any], int]] = deque()  # stored batches not published yet
        self._outbox_bytes = 0
        self._publisher: asyncio.Task[None] | None = None
        self.written = 0
        self.unpublished = 0  # lines stored but never published (dropped from a full outbox)

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
        self._pending_bytes += len(text or "") * (2 if data is not None else 1)
        if len(self._pending) >= self.max_batch or self._pending_bytes >= self.max_bytes:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.interval)
        self._timer = None
        await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            batch, self._pending, size = self._pending, [], self._pending_bytes
            self._pending_bytes = 0
            if not batch:
                return
            async with in_transaction() as connection:
                await models.TaskLog.bulk_create(batch, using_db=connection)
                await models.Task.filter(id=self.task_id).using_db(connection).update(last_seq=batch[-1].seq)
            self.written += len(batch)
            self._queue({"lines": [line_payload(row) for row in batch]}, size)

    def _queue(self, payload: dict[str, Any], size: int) -> None:
        self._outbox.append((payload, size))
        self._outbox_bytes += size
        while self._outbox_bytes > self.max_unpublished and len(self._outbox) > 1:
            dropped, dropped_size = self._outbox.popleft()
            self._outbox_bytes -= dropped_size
            self.unpublished += len(dropped["lines"])
            log.warning(
                "log lines stored but not published: the broker is too slow",
                extra={"event": "task_logs_unpublished", "task_id": self.task_id, "lines": self.unpublished},
            )
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.create_task(self._publish(), name=f"aicm-logs-{self.task_id}")

    async def _publish(self) -> None:
        """Hand the stored batches to the broker, oldest first, until none is left."""
        while self._outbox:
            payload, size = self._outbox.popleft()
            self._outbox_bytes -= size
            await publish(channels.task_logs(self.task_id), payload)  # logs failures, never raises

    async def close(self) -> None:
        """Write what is pending and publish what is stored (for at most ``CLOSE_WAIT`` seconds: subscribers
        read what was not published from storage); safe to call more than once."""
        if self._timer is not None:
            await self._timer  # at most one interval; cancelling it could interrupt a write
        await self.flush()
        task = self._publisher
        if task is None or task.done():
            return
        done, _ = await asyncio.wait({task}, timeout=CLOSE_WAIT)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.unpublished += sum(len(payload["lines"]) for payload, _ in self._outbox)
            self._outbox.clear()
            self._outbox_bytes = 0
            log.warning(
                "log lines stored but not published: the broker did not take them in time",
                extra={"event": "task_logs_unpublished", "task_id": self.task_id, "lines": self.unpublished},
            )
