"""Scenario 5: a task printing ``lines`` lines as fast as it can (the demo agent, AICM_DEMO_DELAY=0),
watched by ``subscribers`` subscriptions that were open before it started: ``batch_subscribers`` of them on
``taskLogBatches`` (several lines per message), the rest on ``taskLogs`` (one message per line).

To have the subscribers in place before the first line, the server runs one task at a time
(``runner.max_concurrent: 1``): a blocker task (``sleep:60``) holds the slot, the measured task is created
behind it, the subscribers subscribe, then the blocker is cancelled and the measured task starts.

- stored lines/s: the task's ``last_seq`` (committed with each batch), polled every 20 ms, from the first
  poll that saw a line to the poll that saw the last one;
- delivered lines/s per subscriber: lines received / (last receive time - first receive time), reported
  separately for each kind of subscription; "exactly once" = the seqs received are 1..lines stored;
- end-to-end latency: receive time - the line's ``at`` (stamped by the server when it read the line from the
  agent's stdout; the same clock as the client's).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

from bench.infra import HOST, Seeded, Server, client_cpu_seconds
from bench.net import WSConnection
from bench.stats import percentile

CREATE = "mutation($p: ID!, $prompt: String!) { createTask(input: {projectId: $p, prompt: $prompt}) { id } }"
CANCEL = "mutation($id: ID!) { cancelTask(id: $id) { id status } }"
LOGS = "subscription($t: ID!) { taskLogs(taskId: $t) { seq at kind text } }"
BATCHES = "subscription($t: ID!) { taskLogBatches(taskId: $t) { lastSeq lines { seq at kind text } } }"


def _task_pk(task_id: str) -> int:
    import base64

    raw = base64.urlsafe_b64decode(task_id + "=" * (-len(task_id) % 4)).decode()
    return int(raw.split(":", 1)[1])


async def _wait_status(server: Server, pk: int, statuses: set[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = await server.get(f"/bench/task/{pk}")
        if state["status"] in statuses or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.05)


async def log_streaming(
    server: Server,
    seeded: Seeded,
    *,
    lines: int,
    subscribers: int,
    batch_subscribers: int = 0,
    timeout: float = 180.0,
) -> dict[str, Any]:
    project = seeded.projects[2]
    blocker = (await server.graphql(CREATE, {"p": project, "prompt": "sleep:60"}, seeded.owner))[
        "createTask"
    ]["id"]
    blocker_pk = _task_pk(blocker)
    await _wait_status(server, blocker_pk, {"RUNNING"}, 30)
    task = (await server.graphql(CREATE, {"p": project, "prompt": f"lines:{lines}"}, seeded.owner))[
        "createTask"
    ]["id"]
    pk = _task_pk(task)
    base = (await server.get("/bench/stats"))["subscribers"]
    conns = []
    for n in range(subscribers):
        conn = await WSConnection.open(HOST, server.port, seeded.viewer)
        conn.subscribe("1", BATCHES if n < batch_subscribers else LOGS, {"t": task})
        conns.append(conn)
    await server.wait_subscribers(base + subscribers, 20)
    cpu0, client0 = server.cpu_seconds(), client_cpu_seconds()
    await server.graphql(CANCEL, {"id": blocker}, seeded.owner)

    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = await server.get(f"/bench/task/{pk}")
        samples.append((time.time(), state["last_seq"]))
        done = all(_completed(c) for c in conns)
        if state["status"] not in ("PENDING", "RUNNING") and done:
            break
        await asyncio.sleep(0.02)
    server_cpu, client_cpu = server.cpu_seconds() - cpu0, client_cpu_seconds() - client0
    for conn in conns:
        conn.close()

    total = samples[-1][1] if samples else 0
    first = next(((t, s) for t, s in samples if s > 0), None)
    last = next(((t, s) for t, s in samples if s >= total), None)
    stored_rate = None
    if first and last and last[0] > first[0]:
        stored_rate = (last[1] - first[1]) / (last[0] - first[0])

    latencies: list[float] = []
    per_subscriber = []
    for conn in conns:
        times, seqs = [], []
        for received_at, payload in conn.received:
            message = json.loads(payload)
            if message.get("type") != "next":
                continue
            data = message["payload"]["data"]
            got = data["taskLogBatches"]["lines"] if "taskLogBatches" in data else [data["taskLogs"]]
            for line in got:
                seqs.append(line["seq"])
                times.append(received_at)
                latencies.append(received_at - datetime.fromisoformat(line["at"]).timestamp())
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
        per_subscriber.append(
            {
                "kind": "taskLogBatches" if len(per_subscriber) < batch_subscribers else "taskLogs",
                "lines": len(seqs),
                "in_order_without_gaps": seqs == list(range(1, len(seqs) + 1)),
                "exactly_once": seqs == list(range(1, total + 1)),
                "lines_per_second": round(rate, 1) if rate else None,
                "completed": _completed(conn),
            }
        )

    def rates(kind: str | None = None) -> list[float]:
        return [
            s["lines_per_second"]
            for s in per_subscriber
            if s["lines_per_second"] and kind in (None, s["kind"])
        ]

    every = rates()
    return {
        "lines_requested": lines,
        "subscribers": subscribers,
        "batch_subscribers": batch_subscribers,
        "task_status": state.get("status"),
        "lines_stored": total,
        "stored_lines_per_second": round(stored_rate, 1) if stored_rate else None,
        "delivered_lines_per_second_min": round(min(every), 1) if every else None,
        "delivered_lines_per_second_median": round(sorted(every)[len(every) // 2], 1) if every else None,
        "batches_lines_per_second_min": round(min(rates("taskLogBatches")), 1)
        if rates("taskLogBatches")
        else None,
        "per_line_lines_per_second_min": round(min(rates("taskLogs")), 1) if rates("taskLogs") else None,
        "every_line_exactly_once": all(s["exactly_once"] for s in per_subscriber) if per_subscriber else None,
        "delivered_messages_per_second_total": round(sum(every), 1) if every else None,
        "end_to_end_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "end_to_end_p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "end_to_end_max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "server_cpu_seconds": round(server_cpu, 2),
        "client_cpu_seconds": round(client_cpu, 2),
        "server_cpu_us_per_line": round(server_cpu / total * 1e6, 1) if total else None,
        "per_subscriber": per_subscriber,
    }


def _completed(conn: WSConnection) -> bool:
    return (bool(conn.received) and b'"complete"' in conn.received[-1][1]) or conn.closed.done()
