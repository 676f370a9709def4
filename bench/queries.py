"""Scenarios 1 and 2: query throughput beside the bare-Starlette ceiling; SQL statements per list query."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from bench.infra import HOST, Seeded, Server
from bench.net import HTTPConnection, build_request, graphql_request
from bench.stats import percentile

ME = "{ me { id email name } }"
PROJECTS = """query Projects($first: Int!) {
  projects(first: $first) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges { cursor node { id name slug owner { id email name }
      members { addedAt user { id email name } role { id name } } } }
  }
}"""

# The list queries whose SQL is counted at two page sizes (each with the nested fields clients ask for).
LIST_QUERIES: dict[str, tuple[str, str]] = {
    "projects as a member (owner, viewerRole, members.user, members.role)": (
        "viewer",
        """query($first: Int!) { projects(first: $first) { totalCount edges { node { id owner { email }
           viewerRole { name } members { user { email } role { name permissions } } } } } }""",
    ),
    "projects as an admin (the same fields)": (
        "admin",
        """query($first: Int!) { projects(first: $first) { totalCount edges { node { id owner { email }
           viewerRole { name } members { user { email } role { name permissions } } } } } }""",
    ),
    "users as an admin (roles)": (
        "admin",
        """query($first: Int!) { users(first: $first) { totalCount edges { node { id email
           roles { name } } } } }""",
    ),
    "tasks of a project as a member (project, createdBy)": (
        "viewer",
        """query($first: Int!, $p: ID!) { tasks(projectId: $p, first: $first) { totalCount edges { node { id
           status project { name } createdBy { email } } } } }""",
    ),
    "auditLog as an admin (actor)": (
        "admin",
        """query($first: Int!) { auditLog(first: $first) { totalCount edges { node { id action
           actor { email } } } } }""",
    ),
    "me (for reference)": ("viewer", "{ me { id email name } }"),
}


async def _run_load(
    server: Server, raw: bytes, *, concurrency: int, duration: float, warmup: float, max_requests: int
) -> dict[str, Any]:
    """``concurrency`` keep-alive connections sending ``raw`` back to back for ``duration`` seconds."""
    conns = [await HTTPConnection.open(HOST, server.port) for _ in range(concurrency)]
    latencies: list[float] = []
    errors = 0
    sent = 0

    async def worker(conn: HTTPConnection, until: float, record: bool) -> None:
        nonlocal errors, sent
        while sent < max_requests:
            started = time.perf_counter()
            if started >= until:
                return
            sent += 1
            status, body = await conn.request(raw)
            if record:
                latencies.append(time.perf_counter() - started)
            if status != 200 or b'"errors"' in body:
                errors += 1

    try:
        if warmup > 0:
            until = time.perf_counter() + warmup
            await asyncio.gather(*(worker(c, until, False) for c in conns))
        sent, errors = 0, 0
        cpu0, t0 = server.cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(worker(c, t0 + duration, True) for c in conns))
        elapsed, cpu = time.perf_counter() - t0, server.cpu_seconds() - cpu0
    finally:
        for conn in conns:
            conn.close()
    done = len(latencies)
    return {
        "requests": done,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rps": round(done / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "server_cpu_us_per_request": round(cpu / done * 1e6, 1) if done else None,
    }


async def throughput(
    server: Server,
    seeded: Seeded,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    rounds: int,
    max_requests: int = 1_000_000,
) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {seeded.viewer}"}
    operations = {
        "me": (
            graphql_request(HOST, ME, token=seeded.viewer),
            build_request("GET", "/bench/bare/me", HOST, headers=auth),
        ),
        "projects(first: 20) with owner and members": (
            graphql_request(HOST, PROJECTS, {"first": 20}, token=seeded.viewer),
            build_request("GET", "/bench/bare/projects?first=20", HOST, headers=auth),
        ),
    }
    results: dict[str, Any] = {}
    for name, (graphql_raw, bare_raw) in operations.items():
        await _same_answer(server, graphql_raw, bare_raw)
        runs: dict[str, list[dict[str, Any]]] = {"graphql": [], "bare": []}
        for n in range(rounds):
            order = ("graphql", "bare") if n % 2 == 0 else ("bare", "graphql")  # ABBA against drift
            for kind in order:
                raw = graphql_raw if kind == "graphql" else bare_raw
                runs[kind].append(
                    await _run_load(
                        server,
                        raw,
                        concurrency=concurrency,
                        duration=duration,
                        warmup=warmup,
                        max_requests=max_requests,
                    )
                )
        ratios = [g["rps"] / b["rps"] for g, b in zip(runs["graphql"], runs["bare"], strict=True)]
        cpu_ratios = [
            b["server_cpu_us_per_request"] / g["server_cpu_us_per_request"]
            for g, b in zip(runs["graphql"], runs["bare"], strict=True)
        ]
        results[name] = {
            "graphql": _summary(runs["graphql"]),
            "bare": _summary(runs["bare"]),
            "ratio_rps": round(statistics.median(ratios), 3),
            "ratio_rps_per_round": [round(r, 3) for r in ratios],
            "ratio_cpu": round(statistics.median(cpu_ratios), 3),
            "runs": runs,
        }
    return results


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        key: round(statistics.median(r[key] for r in runs), 2)
        for key in ("rps", "p50_ms", "p99_ms", "server_cpu_us_per_request")
    } | {"errors": sum(r["errors"] for r in runs), "requests": sum(r["requests"] for r in runs)}


async def _same_answer(server: Server, graphql_raw: bytes, bare_raw: bytes) -> None:
    """The bare endpoint must answer exactly what GraphQL answers, or the comparison means nothing."""
    conn = await HTTPConnection.open(HOST, server.port)
    try:
        _, graphql_body = await conn.request(graphql_raw)
        _, bare_body = await conn.request(bare_raw)
    finally:
        conn.close()
    graphql_json, bare_json = json.loads(graphql_body), json.loads(bare_body)
    if graphql_json != bare_json or "errors" in graphql_json:
        raise AssertionError(f"bare and GraphQL answers differ:\n{graphql_body[:300]!r}\n{bare_body[:300]!r}")


async def sql_counts(server: Server, seeded: Seeded, sizes: tuple[int, ...] = (5, 50)) -> dict[str, Any]:
    tokens = {"viewer": seeded.viewer, "admin": seeded.admin}
    results: dict[str, Any] = {}
    for name, (who, query) in LIST_QUERIES.items():
        per_size: dict[str, Any] = {}
        for size in sizes:
            variables = {
                key: value
                for key, value in {"first": size, "p": seeded.projects[0]}.items()
                if f"${key}" in query
            }
            await server.graphql(query, variables, tokens[who])  # warm caches (parser, roles...)
            counts, statements = [], []
            for _ in range(2):  # the smaller of two: a background statement may slip into one window
                await server.post("/bench/sql/start")
                data = await server.graphql(query, variables, tokens[who])
                answer = await server.post("/bench/sql/stop")
                counts.append(answer["count"])
                statements = answer["statements"] if answer["count"] == min(counts) else statements
            edges = _edges(data)
            per_size[str(size)] = {"statements": min(counts), "rows": edges, "sql": statements}
        values = [per_size[str(s)]["statements"] for s in sizes]
        results[name] = {"by_page_size": per_size, "constant": len(set(values)) == 1}
    return results


def _edges(data: dict[str, Any]) -> int | None:
    for value in data.values():
        if isinstance(value, dict) and "edges" in value:
            return len(value["edges"])
    return None
