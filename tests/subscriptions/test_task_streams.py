"""taskLogs and taskUpdates: replay plus live with no gap and no duplicate, reconnects, and completion."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette

from aicm import models
from aicm.resolvers import subscriptions as subscriptions_resolvers
from aicm.schema.relay import encode_id
from tests.factories import make_user, token_for
from tests.schema.test_tasks import developer_world, finished, start
from tests.ws import GraphQLWS

LOGS = "subscription($id: ID!, $after: Int!) { taskLogs(taskId: $id, afterSeq: $after) { seq stream kind text } }"
UPDATES = "subscription($id: ID!) { taskUpdates(taskId: $id) { status exitCode } }"
# Prints 2,500 lines, pauses so that a subscriber can join in the middle, then prints 2,500 more.
TWO_PHASES = (
    "import sys, time\n"
    "for n in range(1, 2501): print(f'line {n}')\n"
    "sys.stdout.flush(); time.sleep(1.5)\n"
    "for n in range(2501, 5001): print(f'line {n}')\n"
)


async def collect(
    ws: GraphQLWS, op_id: str, *, limit: int | None = None, wait: float = 20.0
) -> tuple[list[dict], bool]:
    """Lines of one subscription until it completes (True) or ``limit`` lines arrived (False)."""
    lines: list[dict] = []
    while limit is None or len(lines) < limit:
        message = await ws.receive(wait)
        if message.get("id") != op_id:
            continue
        if message["type"] == "complete":
            return lines, True
        assert message["type"] == "next", message
        lines.append(message["payload"]["data"]["taskLogs"])
    return lines, False


async def two_phase_task(app: Starlette, client: httpx.AsyncClient) -> tuple[int, str]:
    _, _, project, token = await developer_world(app)
    runner = app.state.runtime.settings.runner
    command, runner.command = runner.command, [sys.executable, "-c", TWO_PHASES, "{prompt}"]
    try:
        task_id = await start(client, token, project, "stream")
        for _ in range(400):  # the first phase is stored (bounded: 20 s)
            if (await models.Task.get(id=task_id)).last_seq >= 2500:
                break
            await asyncio.sleep(0.05)
    finally:
        runner.command = command
    return task_id, token


async def test_five_thousand_lines_arrive_in_order_through_replay_and_live(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    # given a task that has stored half its output and is still running
    task_id, token = await two_phase_task(app, client)
    assert (await models.Task.get(id=task_id)).status == models.TaskStatus.RUNNING
    # when a client subscribes from the start
    ws = await (await GraphQLWS.open(server_url, token)).acked()
    await ws.subscribe("1", LOGS, {"id": encode_id("Task", task_id), "after": 0})
    lines, completed = await collect(ws, "1")
    # then it gets every line once, in order, and the stream completes after the last one
    assert completed
    assert [line["seq"] for line in lines] == list(range(1, 5001))
    assert [line["text"] for line in lines] == [f"line {n}" for n in range(1, 5001)]
    assert {line["stream"] for line in lines} == {"stdout"}
    assert (await finished(task_id)).status == models.TaskStatus.SUCCEEDED
    await ws.close()


async def test_a_reconnect_with_after_seq_has_no_gap_and_no_duplicate(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    task_id, token = await two_phase_task(app, client)
    variables = {"id": encode_id("Task", task_id), "after": 0}
    first = await (await GraphQLWS.open(server_url, token)).acked()
    await first.subscribe("1", LOGS, variables)
    head, completed = await collect(first, "1", limit=1200)
    assert not completed
    await first.close()  # the client drops mid-stream
    second = await (await GraphQLWS.open(server_url, token)).acked()
    await second.subscribe("1", LOGS, {**variables, "after": head[-1]["seq"]})
    tail, completed = await collect(second, "1")
    assert completed
    assert [line["seq"] for line in head + tail] == list(range(1, 5001))
    await second.close()


async def test_a_finished_tasks_log_replays_and_completes(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    _, _, project, token = await developer_world(app)
    task = await finished(await start(client, token, project, "please fail"))
    ws = await (await GraphQLWS.open(server_url, token)).acked()
    await ws.subscribe("1", LOGS, {"id": encode_id("Task", task.id), "after": 2})
    lines, completed = await collect(ws, "1")
    assert completed
    assert [line["seq"] for line in lines] == list(range(3, task.last_seq + 1))
    assert [line["kind"] for line in lines][-2:] == ["result", "text"]
    assert lines[-1]["stream"] == "system"  # the server's own line saying why it failed
    await ws.close()


async def test_task_updates_follow_the_status_until_the_end(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    _, _, project, token = await developer_world(app)
    task_id = await start(client, token, project, "sleep:0.5")
    ws = await (await GraphQLWS.open(server_url, token)).acked()
    await ws.subscribe("1", UPDATES, {"id": encode_id("Task", task_id)})
    statuses = []
    while True:
        message = await ws.receive(10)
        if message["type"] == "complete":
            break
        statuses.append(message["payload"]["data"]["taskUpdates"]["status"])
    assert statuses[-1] == "SUCCEEDED"
    assert statuses == sorted(set(statuses), key=["PENDING", "RUNNING", "SUCCEEDED"].index)
    await ws.close()


async def test_an_outsider_cannot_read_a_tasks_logs(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    _, _, project, token = await developer_world(app)
    task = await finished(await start(client, token, project, "quick"))
    outsider = await make_user()
    ws = await (await GraphQLWS.open(server_url, await token_for(app, outsider))).acked()
    await ws.subscribe("1", LOGS, {"id": encode_id("Task", task.id), "after": 0})
    message = await ws.receive(5)
    assert message["type"] == "error" and message["payload"][0]["extensions"]["code"] == "NOT_FOUND"
    await ws.close()


async def test_per_line_delivery_lets_the_writer_run_between_its_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a per-line stream over 1,000 lines that are all at hand (two batches: no wait of its own)
    async def batches(*_: object, **__: object) -> AsyncIterator[list[dict]]:
        for first in (1, 501):
            yield [{"seq": n} for n in range(first, first + 500)]

    monkeypatch.setattr(subscriptions_resolvers, "task_log_batches", batches)
    ticks = 0

    async def other_work() -> None:  # stands for the agent's reader and the log writer
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    # when a consumer that never waits itself (as a WebSocket send that does not block) takes every line
    try:
        stream = subscriptions_resolvers.task_logs(None, None, None, 1, 0)  # type: ignore[arg-type]
        got = [line["seq"] async for line in stream]
        during = ticks
    finally:
        ticker.cancel()
    # then it gets every line once, in order, and the other work ran every PER_LINE_TURN lines
    assert got == list(range(1, 1001))
    assert during >= 1000 // subscriptions_resolvers.PER_LINE_TURN
