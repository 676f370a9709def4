"""Follow a task: its log lines exactly once each and in order, across dropped connections, and its status.

The server replays stored lines with ``seq > afterSeq`` and then sends live ones, so after any drop (the
access token expired and the server closed the socket, a restart, a network blip) the follower subscribes
again with ``afterSeq`` = the last seq it printed. Lines at or below that seq are duplicates and skipped; a
seq beyond the next one would be a gap, filled from ``Task.logs`` over HTTP before going on. It uses
``taskLogBatches`` (several lines per message) when the server has it, else ``taskLogs``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

from aicm.aicli.api import Api
from aicm.aicli.errors import ApiError, CliError, Dropped, Unreachable
from aicm.aicli.socket import REFUSED, Socket

LINE = "seq at stream kind text data"
BATCHES = f"""subscription($t: ID!, $a: Int!) {{
  taskLogBatches(taskId: $t, afterSeq: $a) {{ lastSeq lines {{ {LINE} }} }} }}"""
LINES = f"subscription($t: ID!, $a: Int!) {{ taskLogs(taskId: $t, afterSeq: $a) {{ {LINE} }} }}"
TASK_FIELDS = "id status createdAt startedAt finishedAt exitCode error costUsd"
UPDATES = f"subscription($t: ID!) {{ taskUpdates(taskId: $t) {{ {TASK_FIELDS} }} }}"
PAGE = f"query($t: ID!, $a: Int!) {{ task(id: $t) {{ logs(afterSeq: $a, first: 100) {{ {LINE} }} }} }}"
PAGE_SIZE = 100
# Reconnect attempts in a row without a new line before giving up (a restart takes a few seconds).
MAX_RECONNECTS = 8
MAX_BACKOFF = 8.0
MIN_CONNECTED = 1.0  # seconds a socket must have lived for its close to count as a token expiry
EXPIRED_REASON = "Access token expired"  # the server's close reason when the socket's token expires

Line = dict[str, Any]


class LogFollower:
    def __init__(
        self,
        api: Api,
        task_id: str,
        *,
        after_seq: int = 0,
        on_line: Callable[[Line], None],
        on_task: Callable[[dict[str, Any]], None] | None = None,
        on_reconnect: Callable[[str], None] | None = None,
    ) -> None:
        self.api = api
        self.task_id = task_id
        self.last = after_seq
        self.on_line = on_line
        self.on_task = on_task
        self.on_reconnect = on_reconnect
        self.batches = True  # until the server says it has no taskLogBatches
        self._ids = itertools.count(1)

    async def run(self) -> None:
        """Until the task has ended and its last line was handed over."""
        failures = 0
        while True:
            seen, began = self.last, time.monotonic()
            try:
                await self._follow()
                return
            except (Dropped, Unreachable) as exc:
                if token_expired(exc, time.monotonic() - began):
                    continue  # routine: reconnect at once with a fresh token, quietly
                failures = 0 if self.last > seen else failures + 1
                if failures > MAX_RECONNECTS:
                    raise CliError(
                        f"lost the connection to the server and could not get it back: {exc}"
                    ) from exc
                if self.on_reconnect is not None:
                    self.on_reconnect(f"{exc}; reconnecting (after seq {self.last})")
                await asyncio.sleep(min(0.25 * 2**failures, MAX_BACKOFF))

    async def _follow(self) -> None:
        async with await Socket.open(self.api) as socket:
            logs = await self._subscribe_logs(socket)
            if self.on_task is not None:
                await socket.subscribe("task", UPDATES, {"t": self.task_id})
            async for message in socket.messages():
                if message.id == "task":
                    if message.type == "next" and self.on_task is not None:
                        data = (message.payload or {}).get("data") or {}
                        if data.get("taskUpdates"):
                            self.on_task(data["taskUpdates"])
                    continue
                if message.id != logs:
                    continue
                if message.type == "complete":
                    return
                if message.type == "error":
                    error = message.error()
                    if self.batches and error.unknown_field("taskLogBatches"):
                        self.batches = False  # an older server: one line per message
                    elif not (error.code == "RATE_LIMITED" and error.reason == "FELL_BEHIND"):
                        raise error
                    logs = await self._subscribe_logs(socket)  # resume from the last line handed over
                    continue
                await self._take(_lines(message.payload, batched=self.batches))

    async def _subscribe_logs(self, socket: Socket) -> str:
        op_id = f"logs-{next(self._ids)}"
        query = BATCHES if self.batches else LINES
        await socket.subscribe(op_id, query, {"t": self.task_id, "a": self.last})
        return op_id

    async def _take(self, lines: list[Line]) -> None:
        for line in lines:
            seq = line["seq"]
            if seq <= self.last:
                continue  # sent again after a reconnect
            if seq > self.last + 1:
                await self.fill(until=seq - 1)
            self.on_line(line)
            self.last = seq

    async def fill(self, *, until: int | None = None) -> None:
        """Hand over the stored lines after the last one (up to ``until``), read over HTTP."""
        while until is None or self.last < until:
            data = await self.api.execute(PAGE, {"t": self.task_id, "a": self.last})
            page = data["task"]["logs"]
            for line in page:
                if until is not None and line["seq"] > until:
                    return
                self.on_line(line)
                self.last = line["seq"]
            if len(page) < PAGE_SIZE:
                return


def _lines(payload: Any, *, batched: bool) -> list[Line]:
    if not isinstance(payload, dict):
        return []
    data = payload.get("data")
    if not data:
        errors = payload.get("errors")
        if errors:
            raise ApiError.from_error(errors[0])
        return []
    if batched:
        return list(data["taskLogBatches"]["lines"])
    return [data["taskLogs"]]


def token_expired(exc: Exception, connected_for: float) -> bool:
    """The server closed a socket that had worked for a while because its access token expired (not a
    refusal: :meth:`Socket.open` already retried that once with a refreshed token). The server says so in
    the close reason; a socket that lived a while counts too (a server that gives no reason)."""
    if not isinstance(exc, Dropped) or exc.code != REFUSED:
        return False
    return exc.reason == EXPIRED_REASON or connected_for > MIN_CONNECTED
