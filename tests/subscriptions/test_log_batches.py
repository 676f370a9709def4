"""taskLogBatches (CONTRACT §11) and slow log readers: every line once, in order, across replay, live, a
reconnect with afterSeq, a lost broker connection and a Redis restart; a reader that never reads neither slows storage nor grows memory."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from socket import SO_RCVBUF, SOL_SOCKET

import httpx
import pytest
import yaml
from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from starlette.applications import Starlette

from aicm import models
from aicm.ids import decode_id
from aicm.schema.relay import encode_id
from aicm.subscriptions.redis_broker import RedisBroker
from aicm.subscriptions.subscription import Missed
from tests.conftest import DEMO_AGENT, Backend
from tests.factories import PASSWORD, make_project, make_user, token_for
from tests.schema.test_tasks import developer_world, finished, start
from tests.servers import serve
from tests.subscriptions.test_multi_instance import PersistentRedis, server_env
from tests.subscriptions.test_task_streams import two_phase_task
from tests.ws import GraphQLWS

BATCHES = (
    "subscription($id: ID!, $after: Int!) "
    "{ taskLogBatches(taskId: $id, afterSeq: $after) { lastSeq lines { seq stream text } } }"
)
LOGS = "subscription($id: ID!, $after: Int!) { taskLogs(taskId: $id, afterSeq: $after) { seq } }"
# 1,000 lines of 64 KiB each (64 MiB of output), as fast as the agent can print them.
BIG_LINES = (  # random text: WebSocket compression would shrink repeated characters to nothing
    "import base64, os\nfor n in range(1, 1001): print(f'{n:05d}' + base64.b64encode(os.urandom(49152)).decode())\n"
)


async def collect_batches(
    ws: GraphQLWS, op_id: str, *, limit: int | None = None, wait: float = 20.0
) -> tuple[list[dict], bool]:
    """Batches of one subscription until it completes (True) or ``limit`` lines arrived (False)."""
    batches: list[dict] = []
    while limit is None or sum(len(batch["lines"]) for batch in batches) < limit:
        message = await ws.receive(wait)
        if message.get("id") != op_id:
            continue
        if message["type"] == "complete":
            return batches, True
        assert message["type"] == "next", message
        batches.append(message["payload"]["data"]["taskLogBatches"])
    return batches, False


def seqs(batches: list[dict]) -> list[int]:
    return [line["seq"] for batch in batches for line in batch["lines"]]


def assert_well_formed(batches: list[dict]) -> None:
    for batch in batches:
        assert 1 <= len(batch["lines"]) <= 500
        assert batch["lastSeq"] == batch["lines"][-1]["seq"]


async def test_replay_then_live_in_batches_with_no_gap_or_duplicate(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    # given a task that has stored half its output and is still running
    task_id, token = await two_phase_task(app, client)
    ws = await (await GraphQLWS.open(server_url, token)).acked()
    # when a client subscribes to the batches from the start
    await ws.subscribe("1", BATCHES, {"id": encode_id("Task", task_id), "after": 0})
    batches, completed = await collect_batches(ws, "1")
    # then every line arrives once, in order, several per message, and the stream completes
    assert completed
    assert seqs(batches) == list(range(1, 5001))
    assert [line["text"] for batch in batches for line in batch["lines"]] == [
        f"line {n}" for n in range(1, 5001)
    ]
    assert_well_formed(batches)
    assert len(batches) <= 5000 // 20
    await ws.close()


async def test_a_reconnect_with_after_seq_resumes_at_the_last_batch(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    task_id, token = await two_phase_task(app, client)
    variables = {"id": encode_id("Task", task_id), "after": 0}
    first = await (await GraphQLWS.open(server_url, token)).acked()
    await first.subscribe("1", BATCHES, variables)
    head, completed = await collect_batches(first, "1", limit=1200)
    assert not completed
    await first.close()  # the client drops mid-stream
    second = await (await GraphQLWS.open(server_url, token)).acked()
    await second.subscribe("1", BATCHES, {**variables, "after": head[-1]["lastSeq"]})
    tail, completed = await collect_batches(second, "1")
    assert completed
    assert seqs(head + tail) == list(range(1, 5001))
    assert_well_formed(head + tail)
    await second.close()


async def lose_the_broker(app: Starlette, backend: Backend) -> None:
    """Redis: kill this process's listener connection (events published until it is back are lost); in
    process, where nothing can be lost, tell every subscriber Missed as a reconnect would."""
    broker = app.state.runtime.broker
    if not isinstance(broker, RedisBroker):
        for sub in tuple(broker._open_subs):
            sub._push(Missed("test: the broker reconnected"))
        return
    assert backend.settings.redis.dsn is not None
    before = broker.stats.reconnects
    redis = Redis.from_url(backend.settings.redis.dsn, decode_responses=True)
    try:
        db = str(parse_url(backend.settings.redis.dsn).get("db", 0))  # other runs use other dbs
        listeners = [
            c
            for c in await redis.client_list(_type="pubsub")
            if c["name"] == broker.client_name and c["db"] == db
        ]
        assert listeners, "the broker's listener connection was not found"
        for listener in listeners:
            await redis.client_kill_filter(_id=listener["id"])
    finally:
        await redis.aclose()
    for _ in range(200):  # the listener is back within ~1 s (bounded: 10 s)
        if broker.stats.reconnects > before and broker.connected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the broker did not reconnect")


async def test_a_lost_broker_connection_leaves_no_gap_or_duplicate(
    app: Starlette, client: httpx.AsyncClient, server_url: str, backend: Backend
) -> None:
    # given subscribers to both log streams of a task in the middle of its output
    task_id, token = await two_phase_task(app, client)
    ws = await (await GraphQLWS.open(server_url, token)).acked()
    await ws.subscribe("1", BATCHES, {"id": encode_id("Task", task_id), "after": 0})
    head, _ = await collect_batches(ws, "1", limit=2500)
    # when the broker loses its connection while the rest of the output is published
    await lose_the_broker(app, backend)
    tail, completed = await collect_batches(ws, "1")
    # then the stream still has every line once, in order
    assert completed
    assert seqs(head + tail) == list(range(1, 5001))
    assert_well_formed(head + tail)
    await ws.close()


async def test_an_outsider_cannot_read_the_batches(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    _, _, project, token = await developer_world(app)
    task = await finished(await start(client, token, project, "quick"))
    outsider = await make_user()
    ws = await (await GraphQLWS.open(server_url, await token_for(app, outsider))).acked()
    await ws.subscribe("1", BATCHES, {"id": encode_id("Task", task.id), "after": 0})
    message = await ws.receive(5)
    assert message["type"] == "error" and message["payload"][0]["extensions"]["code"] == "NOT_FOUND"
    await ws.subscribe("2", BATCHES, {"id": encode_id("Task", task.id), "after": -1})
    message = await ws.receive(5)
    assert message["type"] == "error" and message["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    await ws.close()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


async def test_a_reader_that_never_reads_neither_slows_storage_nor_grows_memory(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    # given a small backlog bound and readers of both log streams that never read
    broker = app.state.runtime.broker
    bound, broker.max_bytes = broker.max_bytes, 512 * 1024
    _, _, project, token = await developer_world(app)
    runner = app.state.runtime.settings.runner
    command, runner.command = runner.command, [sys.executable, "-c", BIG_LINES, "{prompt}"]
    readers = []
    try:
        task_id = await start(client, token, project, "big lines")
        for op, query in (("1", BATCHES), ("2", LOGS)):
            ws = await (await GraphQLWS.open(server_url, token)).acked()
            # a small, fixed receive buffer: the kernel would otherwise take tens of MiB off the server
            ws.connection.transport.get_extra_info("socket").setsockopt(SOL_SOCKET, SO_RCVBUF, 65536)
            await ws.subscribe(op, query, {"id": encode_id("Task", task_id), "after": 0})
            readers.append(ws)
        # when the task prints 64 MiB while nobody reads
        baseline, peak, backlog = rss_bytes(), 0, 0
        deadline = time.monotonic() + 60
        while (await models.Task.get(id=task_id)).status not in models.FINISHED:
            assert time.monotonic() < deadline, "storage stalled"
            peak = max(peak, rss_bytes())
            backlog = max([backlog, *(sub.pending_bytes for sub in broker._open_subs)])
            await asyncio.sleep(0.02)
    finally:
        runner.command = command
        broker.max_bytes = bound
    # then every line was stored, no backlog passed its bound (plus one batch), memory stayed flat
    task = await finished(task_id)
    assert task.status == models.TaskStatus.SUCCEEDED
    assert task.last_seq == 1000
    assert backlog <= 512 * 1024 + 512 * 1024  # the bound, plus the one batch an empty queue always takes
    assert peak - baseline < 40 * 1024 * 1024  # a queue of 1,000 events held all 64 MiB
    # and a reader that finally reads gets every line once, in order, from storage
    batches, completed = await collect_batches(readers[0], "1", wait=30)
    assert completed and seqs(batches) == list(range(1, 1001))
    # and so does the per-line reader, whose lines went directly while its socket took them (then queued,
    # then from storage: aicm.subscriptions.direct)
    lines = []
    while (message := await readers[1].receive(30))["type"] == "next":
        lines.append(message["payload"]["data"]["taskLogs"]["seq"])
    assert message["type"] == "complete", message
    assert lines == list(range(1, 1001))
    for ws in readers:
        await ws.close()


async def test_a_redis_restart_mid_output_leaves_no_gap_or_duplicate(
    app: Starlette, backend: Backend, tmp_path: Path
) -> None:
    """A real restart of the Redis server an instance uses (not only a lost connection), while its task
    prints: the batches still hold every line once, in order."""
    if not backend.uses_services:
        pytest.skip("needs PostgreSQL and a redis-server")
    redis_server = PersistentRedis(tmp_path)
    await redis_server.start()
    owner = await make_user("restart-logs@example.com")
    project = await make_project(owner, "Restart Logs")
    config = tmp_path / "server.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "runner": {
                    "command": DEMO_AGENT,
                    "agent_cli": "generic",
                    "env": {"AICM_DEMO_DELAY": "0.01", "CLAUDE_CONFIG_DIR": str(tmp_path / "claude")},
                    "workspace_root": str(tmp_path / "workspaces"),
                }
            }
        )
    )
    try:
        with serve(tmp_path, server_env(redis_server.url), "--config", str(config)) as base:
            async with httpx.AsyncClient(base_url=base) as http:
                token = await _login(http, "restart-logs@example.com")
                created = await http.post(
                    "/graphql",
                    json={
                        "query": "mutation($p: ID!) { createTask(input: {projectId: $p, prompt: "
                        '"Count lines:600"}) { id } }',
                        "variables": {"p": encode_id("Project", project.id)},
                    },
                    headers={"Authorization": f"Bearer {token}"},
                )
                task_id = created.json()["data"]["createTask"]["id"]
                ws = await (await GraphQLWS.open(base.removeprefix("http://"), token)).acked()
                await ws.subscribe("1", BATCHES, {"id": task_id, "after": 0})
                head, _ = await collect_batches(ws, "1", limit=50)
                # when Redis restarts while the agent is still printing
                await redis_server.restart()
                tail, completed = await collect_batches(ws, "1", wait=30)
                await ws.close()
        # then
        assert completed
        got = seqs(head + tail)
        task = await models.Task.get(id=decode_id(task_id, "Task"))
        assert task.status == models.TaskStatus.SUCCEEDED
        assert got == list(range(1, task.last_seq + 1)) and task.last_seq > 600
        assert_well_formed(head + tail)
    finally:
        await redis_server.stop()


async def _login(http: httpx.AsyncClient, email: str) -> str:
    query = f'mutation {{ login(input: {{email: "{email}", password: "{PASSWORD}"}}) {{ accessToken }} }}'
    return (await http.post("/graphql", json={"query": query})).json()["data"]["login"]["accessToken"]
