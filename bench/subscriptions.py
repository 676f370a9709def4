"""Scenarios 3 and 4: N idle graphql-transport-ws subscriptions on one worker (memory, idle CPU), and the
fan-out latency of one mutation to all N, on one instance and across two instances sharing Redis.

Every subscription has its own WebSocket connection (what N separate clients cost), all held by one client
process (bench/net.py's protocol, a few KB per socket), on the same 2 cores as the server.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from bench.infra import HOST, Seeded, Server, client_cpu_seconds
from bench.net import HTTPConnection, WSConnection, graphql_request
from bench.stats import percentile

EVENTS = "subscription($p: ID!) { projectEvents(projectId: $p) { type projectId at } }"
UPDATE = "mutation($id: ID!, $d: String!) { updateProject(id: $id, input: {description: $d}) { id } }"
OPEN_CONCURRENCY = 200


class Fleet:
    """Subscriber connections spread over one or more servers; counts ``next`` messages as they arrive."""

    def __init__(self, servers: list[Server], token: str, project_id: str) -> None:
        self.servers, self.token, self.project_id = servers, token, project_id
        self.conns: list[WSConnection] = []
        self.server_of: dict[int, int] = {}  # id(conn) -> server index
        self.arrived = 0
        self.target = 0
        self.all_arrived = asyncio.Event()
        self.failures: list[str] = []

    def _on_message(self, conn: WSConnection, now: float, payload: bytes) -> None:
        self.arrived += 1
        if self.arrived >= self.target:
            self.all_arrived.set()

    async def grow(self, size: int, *, deadline: float) -> None:
        """Open connections (each with one subscription) until there are ``size``, or the deadline passes."""
        semaphore = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def one(index: int) -> None:
            server = self.servers[index % len(self.servers)]
            async with semaphore:
                if time.monotonic() > deadline:
                    return
                try:
                    conn = await WSConnection.open(HOST, server.port, self.token)
                except Exception as exc:  # recorded; the size reached is reported
                    self.failures.append(f"{type(exc).__name__}: {exc}"[:200])
                    return
                conn.on_message = self._on_message
                conn.subscribe("1", EVENTS, {"p": self.project_id})
                self.conns.append(conn)
                self.server_of[id(conn)] = index % len(self.servers)

        await asyncio.gather(*(one(n) for n in range(len(self.conns), size)))

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.conns.clear()


def publisher_and_fleet_cpu(fleet: Fleet) -> float:
    """CPU seconds of every server the fleet is spread over."""
    return sum(s.cpu_seconds() for s in fleet.servers)


async def _wait_registered(servers: list[Server], fleet: Fleet, baselines: list[int], timeout: float) -> int:
    """Until every server's broker holds its share of the subscriptions; returns how many are registered."""
    deadline = time.monotonic() + timeout
    while True:
        registered = 0
        for index, server in enumerate(servers):
            mine = sum(1 for c in fleet.conns if fleet.server_of[id(c)] == index)
            count = await server.wait_subscribers(
                baselines[index] + mine, max(0.1, deadline - time.monotonic())
            )
            registered += min(mine, count - baselines[index])
        if registered >= len(fleet.conns) or time.monotonic() > deadline:
            return registered
        await asyncio.sleep(0.1)


async def fan_out(
    fleet: Fleet, publisher: Server, owner_token: str, reps: int, timeout: float = 20.0
) -> dict[str, Any]:
    """``reps`` times: send one mutation, wait until every subscriber got its event; latency = receive time
    minus the mutation's send time (one clock: the client's)."""
    conn = await HTTPConnection.open(HOST, publisher.port)
    latencies: list[float] = []
    per_server: dict[int, list[float]] = {}
    lasts: list[float] = []
    missing = 0
    errors = 0
    mutation_ms: list[float] = []
    server_cpu = client_cpu = 0.0  # over each mutation's delivery window (till the last arrival)
    try:
        for rep in range(reps):
            counts = [len(c.received) for c in fleet.conns]
            fleet.arrived, fleet.target = 0, len(fleet.conns)
            fleet.all_arrived.clear()
            raw = graphql_request(
                HOST, UPDATE, {"id": fleet.project_id, "d": f"fan-out {rep} {time.time()}"}, owner_token
            )
            cpu0, client0 = publisher_and_fleet_cpu(fleet), client_cpu_seconds()
            sent = time.time()
            status, body = await conn.request(raw)
            mutation_ms.append((time.time() - sent) * 1000)
            if status != 200 or b'"errors"' in body:
                raise RuntimeError(f"mutation failed: {status} {body[:300]!r}")
            try:
                async with asyncio.timeout(timeout):
                    await fleet.all_arrived.wait()
            except TimeoutError:
                pass
            server_cpu += publisher_and_fleet_cpu(fleet) - cpu0
            client_cpu += client_cpu_seconds() - client0
            rep_latencies = []
            for c, before in zip(fleet.conns, counts, strict=True):
                if len(c.received) <= before:
                    missing += 1
                    continue
                at, payload = c.received[before]
                if b'"next"' not in payload:
                    errors += 1
                lat = at - sent
                rep_latencies.append(lat)
                per_server.setdefault(fleet.server_of[id(c)], []).append(lat)
            latencies += rep_latencies
            lasts.append(max(rep_latencies) if rep_latencies else float("nan"))
            for c in fleet.conns:  # the events are counted; keep memory flat
                c.received.clear()
            await asyncio.sleep(0.3)
    finally:
        conn.close()
    return {
        "subscribers": len(fleet.conns),
        "events": reps,
        "deliveries": len(latencies),
        "missing": missing,
        "errors": errors,
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "last_delivery_p50_ms": round(percentile(lasts, 50) * 1000, 1),
        "mutation_response_p50_ms": round(percentile(mutation_ms, 50), 1),
        "server_cpu_us_per_delivery": round(server_cpu / len(latencies) * 1e6, 1) if latencies else None,
        "client_cpu_us_per_delivery": round(client_cpu / len(latencies) * 1e6, 1) if latencies else None,
        "p99_ms_by_instance": {
            str(index): round(percentile(values, 99) * 1000, 1)
            for index, values in sorted(per_server.items())
        },
    }


async def capacity(
    servers: list[Server],
    seeded: Seeded,
    *,
    sizes: list[int],
    fanout_sizes: list[int],
    reps: int,
    idle_seconds: float,
    open_timeout: float,
    measure_memory: bool = True,
) -> dict[str, Any]:
    """Grow to each size in turn: memory and idle CPU per server (``measure_memory``), then fan-out."""
    project = seeded.projects[1]
    baselines = [(await s.get("/bench/stats"))["subscribers"] for s in servers]
    # Warm up every code path a subscription takes, then let it go, before the baseline reading.
    warm = Fleet(servers, seeded.viewer, project)
    await warm.grow(100 * len(servers), deadline=time.monotonic() + 30)
    await _wait_registered(servers, warm, baselines, 30)
    warm.close()
    for index, server in enumerate(servers):
        deadline = time.monotonic() + 15
        while (await server.get("/bench/stats"))["subscribers"] > baselines[
            index
        ] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    rss0 = [s.rss_bytes() for s in servers]
    idle0 = await _idle_cpu(servers, idle_seconds)
    fleet = Fleet(servers, seeded.viewer, project)
    levels = []
    try:
        for size in sizes:
            started, had = time.monotonic(), len(fleet.conns)
            cpu0, client0 = publisher_and_fleet_cpu(fleet), client_cpu_seconds()
            await fleet.grow(size, deadline=started + open_timeout)
            registered = await _wait_registered(servers, fleet, baselines, 30)
            opened_in = time.monotonic() - started
            opened = max(1, len(fleet.conns) - had)
            level: dict[str, Any] = {
                "target": size,
                "reached": registered,
                "open_failures": len(fleet.failures),
                "open_failure_sample": fleet.failures[:3],
                "open_seconds": round(opened_in, 1),
                "server_cpu_us_per_open": round((publisher_and_fleet_cpu(fleet) - cpu0) / opened * 1e6, 1),
                "client_cpu_us_per_open": round((client_cpu_seconds() - client0) / opened * 1e6, 1),
            }
            if measure_memory:
                await asyncio.sleep(1.0)
                rss = [s.rss_bytes() for s in servers]
                level["rss_mib"] = [round(r / 2**20, 1) for r in rss]
                level["rss_baseline_mib"] = [round(r / 2**20, 1) for r in rss0]
                level["kib_per_subscription"] = round((sum(rss) - sum(rss0)) / 1024 / max(1, registered), 1)
                level["server_fds"] = [s.open_fds() for s in servers]
                idle = await _idle_cpu(servers, idle_seconds)
                level["idle_cpu_percent"] = idle
                level["idle_cpu_percent_baseline"] = idle0
            if size in fanout_sizes and registered:
                level["fanout"] = await fan_out(fleet, servers[0], seeded.owner, reps)
            levels.append(level)
            if registered < size:
                level["stopped"] = f"reached {registered} of {size} within {open_timeout:.0f} s" + (
                    f"; first failure: {fleet.failures[0]}" if fleet.failures else ""
                )
                break
    finally:
        fleet.close()
    return {"instances": len(servers), "levels": levels}


async def _idle_cpu(servers: list[Server], seconds: float) -> list[float]:
    """Each server's CPU use over ``seconds`` of nothing to do, in % of one core."""
    before = [s.cpu_seconds() for s in servers]
    started = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    return [round((s.cpu_seconds() - b) / elapsed * 100, 2) for s, b in zip(servers, before, strict=True)]


def decode(payload: bytes) -> dict[str, Any]:
    return json.loads(payload)
