"""LogWriter: storing never waits for delivery; batches reach the broker in order, bounded when it is slow."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aicm import models
from aicm.runner.logs import LogWriter
from aicm.subscriptions import channels
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
            # the oldest batches were dropped (storage has them), the newest wait
            assert writer.unpublished >= 29
            assert sum(size for _, size in writer._outbox) <= 2000
            assert await models.TaskLog.filter(task_id=task.id).count() == 50
            broker.gate.set()
            await writer.close()
        seqs = [line["seq"] for payload in broker.published for line in payload["lines"]]
        assert seqs == sorted(seqs) and seqs[-1] == 50
