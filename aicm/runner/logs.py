"""Stores a task's log lines in batches; a task of its own publishes each stored batch on the log channel.

One writer per running task is the only source of its ``seq`` numbers, so they run 1, 2, 3... with no holes.
Lines wait in ``pending`` until a write takes them: at most ``interval`` seconds after the first of them, or
at once when ``max_batch`` lines or ``max_bytes`` of text are waiting. Writes run one at a time in the
writer's own task, each taking what waits (up to ``max_batch`` lines), so while one batch is being committed
the next one fills: a busy agent gets large batches (group commit), a quiet one a short wait. ``add`` waits
only when a full batch waits behind the one being written, which bounds memory and lets the pipe push back
on the agent.

A batch is stored with one multi-row ``executemany`` and the task's ``last_seq`` in the same transaction,
without a model instance per line. Storing never waits for delivery: each committed batch is queued for the
publisher task, which hands the batches to the broker in seq order at whatever pace the broker takes them,
each with its JSON made once here (``broker.Encoded``). If more than ``max_unpublished`` bytes wait (a slow or
unreachable broker), the oldest batches are dropped unpublished: subscribers see the gap in ``seq`` and read
those lines from storage.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from datetime import UTC, datetime
from typing import Any

import orjson
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from aicm.db import placeholders
from aicm.subscriptions import channels
from aicm.subscriptions.broker import Encoded
from aicm.subscriptions.publisher import publish

FLUSH_INTERVAL = 0.02
MAX_BATCH = 500  # lines per write and per published batch (CONTRACT §11: a batch holds up to 500 lines)
MAX_BATCH_BYTES = 256 * 1024
# lines per published message: a larger batch is published in slices, each small enough for one rendering to
# be shared by every taskLogBatches subscriber (aicm/schema/rendering.py keeps renderings up to 64 KiB)
PUBLISH_LINES = 100
MAX_UNPUBLISHED = 16 * 1024 * 1024
CLOSE_WAIT = 10.0  # seconds close() waits for the last batches to be published

log = logging.getLogger("aicm.runner")

_COLUMNS = ("task_id", "seq", "at", "stream", "kind", "text", "data")


def _statements(connection: BaseDBAsyncClient) -> tuple[str, str]:
    """The INSERT of one line and the ``last_seq`` UPDATE, in the connection's placeholder style."""
    columns = ", ".join(f'"{name}"' for name in _COLUMNS)
    marks = ", ".join(placeholders(connection, len(_COLUMNS)))
    seq, task = placeholders(connection, 2)
    return (
        f'INSERT INTO "task_logs" ({columns}) VALUES ({marks})',
        f'UPDATE "tasks" SET "last_seq" = {seq} WHERE "id" = {task}',
    )


def _data_json(data: dict[str, Any]) -> str:
    """``data`` as the JSON the column stores (orjson, as Tortoise's JSONField writes it)."""
    try:
        return orjson.dumps(data).decode()
    except TypeError:  # an integer beyond 64 bits: the standard library writes it exactly
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


class _Line:
    """One line waiting to be stored: its row and its JSON in the published batch."""

    __slots__ = ("head", "payload", "row", "size")

    def __init__(self, row: list[Any], payload: dict[str, Any], head: bytes, size: int) -> None:
        self.row, self.payload, self.size = row, payload, size
        self.head = head  # the payload's JSON without its data


def _encoded(lines: list[_Line]) -> tuple[Encoded, int]:
    """One published batch and its size: each line's JSON head with its data's JSON spliced in."""
    parts = [
        line.head[:-1] + b',"data":' + (line.row[6].encode() if line.row[6] is not None else b"null") + b"}"
        for line in lines
    ]
    encoded = Encoded({"lines": [line.payload for line in lines]})
    encoded.json = (b'{"lines":[' + b",".join(parts) + b"]}").decode()
    return encoded, sum(line.size for line in lines)


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
        self._pending: deque[_Line] = deque()
        self._pending_bytes = 0
        self._writer: asyncio.Task[None] | None = None  # the task writing batches while lines wait
        self._room: asyncio.Future[None] | None = None  # add() waits on it while a full batch waits
        self._timer: asyncio.TimerHandle | None = None
        self._error: Exception | None = None  # a failed write, raised by the next add() or close()
        self._outbox: deque[tuple[Encoded, int]] = deque()  # stored batches not published yet
        self._outbox_bytes = 0
        self._publisher: asyncio.Task[None] | None = None
        self.written = 0
        self.unpublished = 0  # lines stored but never published (dropped from a full outbox)

    async def add(
        self,
        stream: str,
        kind: str,
        text: str | None,
        data: dict[str, Any] | None,
        data_json: str | None = None,
    ) -> None:
        """Queue one line for storing. ``data_json``: ``data`` as JSON text when the caller has it already
        (the agent's own line, ``ParsedLine.json``), which must decode to ``data`` exactly."""
        if self._error is not None:
            raise self._error
        self.seq += 1
        at = datetime.now(UTC)
        if data is not None and data_json is None:
            data_json = _data_json(data)
        payload = {"seq": self.seq, "at": at.isoformat(), "stream": stream, "kind": kind, "text": text}
        head = orjson.dumps(payload)
        payload["data"] = data
        size = len(text or "") + (len(data_json) if data_json is not None else 0)
        self._pending.append(
            _Line([self.task_id, self.seq, at, stream, kind, text, data_json], payload, head, size)
        )
        self._pending_bytes += size
        full = self._full()
        if self._writer is not None:
            while full and self._writer is not None:  # bounded: each pass the writer takes a batch
                self._room = self._room or asyncio.get_running_loop().create_future()
                await asyncio.shield(self._room)
                full = self._full()
            if self._error is not None:
                raise self._error
            if self._writer is not None:
                return
        if full:
            self._start()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._start)

    def _full(self) -> bool:
        """Whether a whole batch waits (then add() waits for the writer to take it)."""
        return len(self._pending) >= self.max_batch or self._pending_bytes >= self.max_bytes

    def _make_room(self) -> None:
        """Wake the add() waiting for a batch to be taken."""
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)

    def _start(self) -> None:
        """Start the writing task unless it runs already (it takes every line that waits)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writer is None and self._pending and self._error is None:
            self._writer = asyncio.create_task(self._write(), name=f"aicm-log-writer-{self.task_id}")

    def _take(self) -> list[_Line]:
        batch: list[_Line] = []
        size = 0
        pending = self._pending
        while pending and len(batch) < self.max_batch and (not batch or size < self.max_bytes):
            line = pending.popleft()
            size += line.size
            batch.append(line)
        self._pending_bytes -= size
        self._make_room()
        return batch

    async def _write(self) -> None:
        """Write batches until no line waits; a failure is kept for add() and close() to raise."""
        try:
            while self._pending:
                await self._store(self._take())
        except Exception as exc:  # handed to the writer's caller (add, flush, close), never lost
            self._error = exc
        finally:
            self._writer = None
            self._make_room()

    async def _store(self, batch: list[_Line]) -> None:
        last = batch[-1].row[1]
        async with in_transaction() as connection:
            insert, update = _statements(connection)
            await connection.execute_many(insert, [line.row for line in batch])
            await connection.execute_query(update, [last, self.task_id])
        self.written += len(batch)
        for start in range(0, len(batch), PUBLISH_LINES):
            self._queue(_encoded(batch[start : start + PUBLISH_LINES]))

    async def flush(self) -> None:
        """Store every line added so far (raises what a write raised)."""
        self._start()
        writer = self._writer
        if writer is not None:
            await asyncio.shield(writer)
        if self._error is not None:
            raise self._error

    def _queue(self, batch: tuple[Encoded, int]) -> None:
        payload, size = batch
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
