"""Profile one workload on a bench server: where the CPU goes (py-spy), where the memory of a subscription
goes (tracemalloc), how much the cyclic GC costs. The findings in bench/findings.md come from this.

    python bench/profile.py cpu me|projects|bare-me|bare-projects|subscribe|fanout|logs|logs-batched [--backend services]
    python bench/profile.py memory            # tracemalloc diff over 1,000 idle subscriptions
    python bench/profile.py gc                # GC time per workload (gc.callbacks in the server)

CPU profiles are written to $TMPDIR/aicm-profiles/<workload>-<backend>.txt (collapsed stacks, for
flamegraph tools) and summarised on stdout: the functions with the most samples, inclusive and self.
py-spy (``pip install py-spy``) samples the server from outside, so the server runs at full speed.
Set BENCH_GC=freeze (or "threshold=A,B,C") to try the collector's settings in the server without changing
the product (bench/server.py ``_gc_experiment``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import infra, logstream, queries, subscriptions  # noqa: E402
from bench.net import build_request, graphql_request  # noqa: E402

OUT = Path(tempfile.gettempdir()) / "aicm-profiles"
LAUNCHER = (
    *("run (uvicorn", "main (bench", "Runner.run", "<module>", "_run_module", "asyncio_run", "_run_code"),
    *("Server.run", "Server.serve", "Server._serve", "Thread.", "_bootstrap"),
)


def summarise(path: Path, top: int = 35) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples", "-- inclusive"]
    lines += [
        f"{v / total:6.1%}  {k}" for k, v in inclusive.most_common(top * 2) if not k.startswith(LAUNCHER)
    ][:top]
    lines += ["-- self"] + [f"{v / total:6.1%}  {k}" for k, v in own.most_common(top)]
    return "\n".join(lines)


class Spy:
    def __init__(self, pid: int, out: Path) -> None:
        if not shutil.which("py-spy"):
            raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
        self.out = out
        self.proc = subprocess.Popen(
            [
                *("py-spy", "record", "--pid", str(pid), "-o", str(out)),
                *("-f", "raw", "-r", "200", "-d", "600", "--nonblocking"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)
        return summarise(self.out)


async def workload(name: str, server: infra.Server, seeded: infra.Seeded) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {seeded.viewer}"}
    http = {
        "me": graphql_request(infra.HOST, queries.ME, token=seeded.viewer),
        "projects": graphql_request(infra.HOST, queries.PROJECTS, {"first": 20}, token=seeded.viewer),
        "bare-me": build_request("GET", "/bench/bare/me", infra.HOST, headers=auth),
        "bare-projects": build_request("GET", "/bench/bare/projects?first=20", infra.HOST, headers=auth),
    }
    if name in http:
        return await queries._run_load(
            server, http[name], concurrency=16, duration=5, warmup=0, max_requests=1_000_000
        )
    if name == "subscribe":
        fleet = subscriptions.Fleet([server], seeded.viewer, seeded.projects[1])
        started = time.monotonic()
        await fleet.grow(1000, deadline=started + 120)
        await server.wait_subscribers(1001, 60)
        fleet.close()
        return {"opened": 1000, "seconds": round(time.monotonic() - started, 2)}
    if name in ("logs", "logs-batched"):  # 10 subscribers, 5 of them batched; or 5, all batched
        subscribers = 10 if name == "logs" else 5
        result = await logstream.log_streaming(
            server,
            seeded,
            lines=5000 if name == "logs" else 20000,
            subscribers=subscribers,
            batch_subscribers=5,
        )
        result.pop("per_subscriber")
        return result
    raise SystemExit(f"unknown workload {name}")


async def cpu(args: argparse.Namespace, server: infra.Server, seeded: infra.Seeded) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"{args.workload}-{args.backend}.txt"
    if args.workload == "fanout":
        fleet = subscriptions.Fleet([server], seeded.viewer, seeded.projects[1])
        await fleet.grow(args.subscribers, deadline=time.monotonic() + 120)
        await server.wait_subscribers(args.subscribers + 1, 60)
        spy = Spy(server.pid, out)
        await asyncio.sleep(0.5)
        result = await subscriptions.fan_out(fleet, server, seeded.owner, 5)
        summary = spy.stop()
        fleet.close()
    else:
        spy = Spy(server.pid, out)
        await asyncio.sleep(0.5)
        result = await workload(args.workload, server, seeded)
        summary = spy.stop()
    print(json.dumps(result))
    print(summary)
    print(f"collapsed stacks: {out}")


async def memory(args: argparse.Namespace, server: infra.Server, seeded: infra.Seeded) -> None:
    warm = subscriptions.Fleet([server], seeded.viewer, seeded.projects[1])
    await warm.grow(100, deadline=time.monotonic() + 60)
    await server.wait_subscribers(101, 30)
    warm.close()
    await asyncio.sleep(1)
    before = dict((await server.get("/bench/stats?types=1"))["gc_types"])
    rss0 = server.rss_bytes()
    await server.post("/bench/tracemalloc/start?frames=12")
    fleet = subscriptions.Fleet([server], seeded.viewer, seeded.projects[1])
    await fleet.grow(args.subscribers, deadline=time.monotonic() + 300)
    await server.wait_subscribers(args.subscribers + 1, 60)
    await asyncio.sleep(1)
    grown = await server.post(f"/bench/tracemalloc/stop?top=30&group={args.group}")
    rss = server.rss_bytes() - rss0  # tracemalloc's own bookkeeping included: look at the Python total
    after = dict((await server.get("/bench/stats?types=1"))["gc_types"])
    fleet.close()
    n = args.subscribers
    print(f"RSS growth {rss / n / 1024:.1f} KiB per subscription (tracemalloc on: inflated)")
    print(f"Python allocations still alive: {grown['total_size_diff'] / n / 1024:.1f} KiB per subscription")
    for row in grown["top"]:
        where = " <- ".join(reversed(row["where"]))
        print(f"{row['size_diff'] / n:8.0f} B {row['count_diff'] / n:6.1f} blocks  {where}")
    diff = sorted(((after.get(k, 0) - before.get(k, 0)) / n, k) for k in set(after) | set(before))
    print(f"GC-tracked objects per subscription: {sum(d for d, _ in diff):.0f}")
    for d, k in reversed(diff[-25:]):
        print(f"{d:7.2f}  {k}")


async def gc_cost(args: argparse.Namespace, server: infra.Server, seeded: infra.Seeded) -> None:
    for name in ("me", "projects", "bare-me", "bare-projects", "subscribe"):
        before = await server.get("/bench/stats")
        cpu0 = server.cpu_seconds()
        result = await workload(name, server, seeded)
        after = await server.get("/bench/stats")
        cpu = server.cpu_seconds() - cpu0
        spent = [round(b - a, 3) for a, b in zip(before["gc_seconds"], after["gc_seconds"], strict=True)]
        share = sum(spent) / cpu
        print(f"{name:14} server CPU {cpu:6.2f}s  GC {sum(spent):5.2f}s ({share:4.0%}) by generation {spent}")
        print(f"{'':14} {result}")


async def main() -> None:
    p = argparse.ArgumentParser(prog="bench/profile.py")
    p.add_argument("mode", choices=("cpu", "memory", "gc"))
    p.add_argument("workload", nargs="?", default="me")
    p.add_argument("--backend", choices=("embedded", "services"), default="embedded")
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--group", default="lineno", choices=("lineno", "traceback", "filename"))
    p.add_argument("--redis-db", type=int, default=12)
    args = p.parse_args()
    infra.raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="aicm-profile-"))
    redis_url = f"redis://{infra.HOST}:6379/{args.redis_db}"
    try:
        if args.backend == "embedded":
            db = None
            backend = infra.Backend("embedded", f"sqlite://{work / 'aicm.db'}")
        else:
            db = infra.fresh_database()
            backend = infra.Backend("services", db.__enter__(), redis_url)
            infra.clear_redis(redis_url)
        server = infra.Server(work, infra.write_config(work, backend), args.backend)
        async with infra.running([server]):
            seeded = await infra.seed(server)
            await {"cpu": cpu, "memory": memory, "gc": gc_cost}[args.mode](args, server, seeded)
    finally:
        if args.backend == "services":
            db.__exit__(None, None, None)
            infra.clear_redis(redis_url)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
