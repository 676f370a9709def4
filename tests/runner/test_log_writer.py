"""LogWriter: storing never waits for delivery; batches reach the broker in order, bounded when it is slow."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pytest
from tortoise.exceptions import IntegrityError

from aicm import models
from aicm.runner.logs import LogWriter
from aicm.subscriptions import channels
from aicm.subscriptions.broker import Encoded, encode
from aicm.subscriptions.in_process import InProcessBroker
from aicm.subscriptions.publisher import Publisher, installed
from tests.factories import make_project, make_user


class GatedBroker(InProcessBroker):
    """The in-process broker, except that each publish waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.published: list[dict[str, Any]] = []

    async def publish(self, channel: str, payload: Mapping[str, Any]) -> None:
        await self.gate.wait()
        self.published.append(dict(payload))
        await super().publish(channel, payload)


async def new_task() -> models.Task:
    owner = await make_user()
    project = await make_project(owner, "Logs")
    return await models.Task.create(project=project, created_by=owner, prompt="x")


async def test_storing_goes_on_while_the_broker_takes_nothing(db: None) -> None:
    # given a broker that does not take any event yet
    task = await new_task()
    async with GatedBroker() as broker, broker.subscribe([channels.task_logs(task.id)]) as sub:
        with installed(Publisher(broker)):
            writer = LogWriter(task.id, 0, max_batch=10)
            # when 100 lines are written
            async with asyncio.timeout(10):
                for n in range(1, 101):
                    await writer.add("stdout", "text", f"line {n}", None)
                await writer.flush()  # stores what is pending; publishing is not waited for
            # then all of them are stored although nothing was published
            assert (await models.Task.get(id=task.id)).last_seq == 100
            assert await models.TaskLog.filter(task_id=task.id).count() == 100
            assert broker.published == []
            # and once the broker takes events, the batches arrive in order
            broker.gate.set()
            await writer.close()
        seqs = [line["seq"] for payload in broker.published for line in payload["lines"]]
        assert seqs == list(range(1, 101))
        assert sub.pending == 10


async def test_a_stuck_broker_holds_a_bounded_outbox(db: None) -> None:
    task = await new_task()
    async with GatedBroker() as broker:
        with installed(Publisher(broker)):
            writer = LogWriter(task.id, 0, max_batch=1, max_unpublished=2000)
            for n in range(1, 51):
                await writer.add("stdout", "text", f"{n:04d}" + "x" * 96, None)  # 100 bytes a line
            await writer.flush()  # writes run in the writer's own task: wait until every line is stored
            # the oldest batches were dropped (storage has them), the newest wait
            assert writer.unpublished >= 29
            assert sum(size for _, size in writer._outbox) <= 2000
            assert await models.TaskLog.filter(task_id=task.id).count() == 50
            broker.gate.set()
            await writer.close()
        seqs = [line["seq"] for payload in broker.published for line in payload["lines"]]
        assert seqs == sorted(seqs) and seqs[-1] == 50


async def test_stored_rows_and_published_json_say_the_same(db: None) -> None:
    # given lines with data from the agent's own JSON text, data encoded by the writer, and plain text
    task = await new_task()
    raw = '{"type": "assistant", "n": 1,  "s": "é \\u00e9 \\"q\\""}'
    async with InProcessBroker() as broker, broker.subscribe([channels.task_logs(task.id)]) as sub:
        with installed(Publisher(broker)):
            writer = LogWriter(task.id, 0)
            await writer.add("stdout", "assistant", "hello", json.loads(raw), raw)
            await writer.add("stdout", "result", 'a "quoted"\nline', {"type": "result", "big": 2**70})
            await writer.add("stderr", "text", "plain ✓", None)
            await writer.close()
        item = await anext(sub)
    # then storage holds each line as it was given
    rows = await models.TaskLog.filter(task_id=task.id).order_by("seq")
    assert [(r.seq, r.stream, r.kind, r.text, r.data) for r in rows] == [
        (1, "stdout", "assistant", "hello", json.loads(raw)),
        (2, "stdout", "result", 'a "quoted"\nline', {"type": "result", "big": float(2**70)}),
        (3, "stderr", "text", "plain ✓", None),
    ]
    assert (await models.Task.get(id=task.id)).last_seq == 3
    # and the published batch's JSON (what Redis carries) decodes to the dict in-process subscribers get
    assert isinstance(item.payload, Encoded)
    assert json.loads(encode(item.payload)) == item.payload
    assert [line["seq"] for line in item.payload["lines"]] == [1, 2, 3]
    assert item.payload["lines"][1]["data"] == {"type": "result", "big": 2**70}
    assert item.payload["lines"][0]["at"] == rows[0].at.isoformat()


async def test_a_failed_write_is_raised_to_the_writer(db: None) -> None:
    # given a writer for a task that does not exist (the foreign key refuses its lines)
    writer = LogWriter(10**9, 0, max_batch=2)
    with installed(None):
        await writer.add("stdout", "text", "one", None)
        await writer.add("stdout", "text", "two", None)
        # then the write's failure reaches the caller, and later calls too
        with pytest.raises(IntegrityError):
            await writer.flush()
        with pytest.raises(IntegrityError):
            await writer.add("stdout", "text", "three", None)
        with pytest.raises(IntegrityError):
            await writer.close()


async def test_lines_added_while_a_batch_is_written_go_into_the_next_one(db: None) -> None:
    # given a writer whose batches take at most 50 lines
    task = await new_task()
    async with InProcessBroker() as broker, broker.subscribe([channels.task_logs(task.id)]) as sub:
        with installed(Publisher(broker)):
            writer = LogWriter(task.id, 0, max_batch=50, interval=60)
            # when 120 lines come faster than the batches are written
            for n in range(1, 121):
                await writer.add("stdout", "text", f"line {n}", None)
            await writer.close()
        seen: list[int] = []
        while sub.pending:
            seen += [line["seq"] for line in (await anext(sub)).payload["lines"]]
    # then every line is stored and published once, in order, in full batches and the rest (no 60 s wait)
    assert seen == list(range(1, 121))
    assert await models.TaskLog.filter(task_id=task.id).count() == 120
