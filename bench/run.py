"""``make bench``: start servers on loopback, seed, run bounded loads, write bench/results/*.json and
docs/performance.md.

    python bench/run.py                      # everything, both backends (about 8 minutes on 2 cores)
    python bench/run.py --only throughput,sql --backends embedded
    python bench/run.py --quick              # small sizes: a smoke run of every scenario (about 2 minutes)
    python bench/run.py --report-only        # rewrite docs/performance.md from bench/results/*.json

Scenarios: throughput (1), sql (2), subscriptions (3 and 4, one instance), fanout2 (4, two instances with
Redis), logs (5). Backends: embedded (SQLite + in-process broker) and services (PostgreSQL + Redis; skipped
with the reason recorded when either is unreachable). PostgreSQL databases are created fresh and dropped;
Redis uses its own database number (``--redis-db``, default 12) and only the app's ``aicm:*`` keys are deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import infra, logstream, queries, report, subscriptions  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SCENARIOS = ("throughput", "sql", "subscriptions", "fanout2", "logs")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)}")
    p.add_argument("--backends", default="embedded,services", help="embedded,services")
    p.add_argument("--quick", action="store_true", help="small sizes everywhere (a smoke run)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per throughput run")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up before each run")
    p.add_argument("--rounds", type=int, default=2, help="GraphQL/bare pairs per operation (ABBA order)")
    p.add_argument("--concurrency", type=int, default=16, help="keep-alive connections of the HTTP load")
    p.add_argument("--sub-sizes", default="1000,5000,10000", help="subscription counts (embedded)")
    p.add_argument("--sub-sizes-services", default="1000,5000,10000", help="subscription counts (services)")
    p.add_argument("--fanout-sizes", default="1000,5000,10000", help="levels at which fan-out is measured")
    p.add_argument("--fanout2-sizes", default="1000,5000", help="subscribers over two instances")
    p.add_argument("--fanout-reps", type=int, default=5, help="mutations per fan-out measurement")
    p.add_argument("--idle-seconds", type=float, default=5.0, help="idle CPU window")
    p.add_argument("--open-timeout", type=float, default=100.0, help="max seconds to open one level")
    p.add_argument("--log-lines", type=int, default=20000)
    p.add_argument("--log-subscribers", type=int, default=10)
    p.add_argument("--redis-db", type=int, default=12)
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the load generator to the last core (and the servers to the others)",
    )
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the work directory (server logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 1.5, 0.3, 1
        args.sub_sizes = args.sub_sizes_services = args.fanout_sizes = args.fanout2_sizes = "200,500"
        args.fanout_reps, args.idle_seconds = 3, 2.0
        args.log_lines = 2000
    return args


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.only = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = self.only - set(SCENARIOS)
        if unknown:
            raise SystemExit(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}")
        self.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        self.redis_url = f"redis://{infra.HOST}:6379/{args.redis_db}"
        self.work = Path(tempfile.mkdtemp(prefix="aicm-bench-"))
        self.results: dict[str, dict[str, Any]] = {s: {} for s in self.only}
        self.services_problem: str | None = None
        self.started = time.monotonic()

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)

    @contextlib.contextmanager
    def backend(self, name: str) -> Iterator[infra.Backend | None]:
        """A fresh database for ``name`` (None when the services are unavailable)."""
        if name == "embedded":
            path = self.work / f"{name}-{time.monotonic_ns()}" / "aicm.db"
            path.parent.mkdir(parents=True)
            yield infra.Backend(name, f"sqlite://{path}")
            return
        if self.services_problem:
            yield None
            return
        infra.clear_redis(self.redis_url)
        try:
            with infra.fresh_database() as url:
                yield infra.Backend(name, url, self.redis_url)
        finally:
            infra.clear_redis(self.redis_url)

    def servers(self, backend: infra.Backend, count: int = 1) -> list[infra.Server]:
        workdir = self.work / f"{backend.name}-{time.monotonic_ns()}"
        workdir.mkdir(parents=True)
        config = infra.write_config(workdir, backend)
        return [infra.Server(workdir, config, f"{backend.name}{n}") for n in range(count)]

    def record(self, scenario: str, backend: str, value: Any) -> None:
        if isinstance(value, dict):
            value = {"measured_at": report.now(), "args": vars(self.args), "cores": self.pinning} | value
        self.results[scenario][backend] = value
        self.save(scenario)

    def save(self, scenario: str) -> None:
        """bench/results/<scenario>.json; backends not run this time keep their earlier figures."""
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{scenario}.json"
        backends: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            backends = json.loads(path.read_text()).get("backends", {})
        backends |= self.results[scenario]
        payload = {"scenario": scenario, "meta": report.machine(), "backends": backends}
        path.write_text(json.dumps(report.clean(payload), indent=2, default=str) + "\n")

    async def guarded(self, scenario: str, backend: str, coro: Any) -> None:
        self.log(f"{scenario} / {backend} ...")
        started = time.monotonic()
        try:
            value = await coro
        except Exception as exc:
            traceback.print_exc()
            value = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        if isinstance(value, dict):
            value["elapsed_seconds"] = round(time.monotonic() - started, 1)
        self.record(scenario, backend, value)
        self.log(f"{scenario} / {backend} done in {time.monotonic() - started:.0f}s")

    # --- scenarios -----------------------------------------------------------------------------------

    async def queries_on(self, backend: infra.Backend) -> None:
        """Throughput and SQL counts share one server (seeded once)."""
        a = self.args
        async with infra.running(self.servers(backend)) as (server,):
            seeded = await infra.seed(server)
            if "sql" in self.only:
                await self.guarded("sql", backend.name, queries.sql_counts(server, seeded))
            if "throughput" in self.only:
                await self.guarded(
                    "throughput",
                    backend.name,
                    queries.throughput(
                        server,
                        seeded,
                        concurrency=a.concurrency,
                        duration=a.duration,
                        warmup=a.warmup,
                        rounds=a.rounds,
                    ),
                )

    async def subscriptions_on(self, backend: infra.Backend) -> None:
        a = self.args
        sizes = _ints(a.sub_sizes if backend.name == "embedded" else a.sub_sizes_services)
        async with infra.running(self.servers(backend)) as servers:
            seeded = await infra.seed(servers[0])
            await self.guarded(
                "subscriptions",
                backend.name,
                subscriptions.capacity(
                    servers,
                    seeded,
                    sizes=sizes,
                    fanout_sizes=_ints(a.fanout_sizes),
                    reps=a.fanout_reps,
                    idle_seconds=a.idle_seconds,
                    open_timeout=a.open_timeout,
                ),
            )

    async def fanout2_on(self, backend: infra.Backend) -> None:
        a = self.args
        servers = self.servers(backend, 2)
        async with infra.running(servers):
            seeded = await infra.seed(servers[0])
            sizes = _ints(a.fanout2_sizes)
            await self.guarded(
                "fanout2",
                backend.name,
                subscriptions.capacity(
                    servers,
                    seeded,
                    sizes=sizes,
                    fanout_sizes=sizes,
                    reps=a.fanout_reps,
                    idle_seconds=a.idle_seconds,
                    open_timeout=a.open_timeout,
                    measure_memory=False,
                ),
            )

    async def logs_on(self, backend: infra.Backend) -> None:
        a = self.args
        async with infra.running(self.servers(backend)) as (server,):
            seeded = await infra.seed(server)

            async def both() -> dict[str, Any]:
                stored_only = await logstream.log_streaming(server, seeded, lines=a.log_lines, subscribers=0)
                watched = await logstream.log_streaming(
                    server,
                    seeded,
                    lines=a.log_lines,
                    subscribers=a.log_subscribers,
                    batch_subscribers=a.log_subscribers // 2,
                )
                batched = await logstream.log_streaming(
                    server,
                    seeded,
                    lines=a.log_lines,
                    subscribers=a.log_subscribers // 2,
                    batch_subscribers=a.log_subscribers // 2,
                )
                return {
                    "without_subscribers": stored_only,
                    "with_subscribers": watched,
                    "batched_only": batched,
                }

            await self.guarded("logs", backend.name, both())

    async def main(self) -> int:
        limit = infra.raise_fd_limit()
        self.pinning = {"pinned": False} if self.args.no_pin else {"pinned": True, **infra.pin_client()}
        self.log(f"work directory {self.work}; open-file limit {limit}; cores {self.pinning}")
        if "services" in self.backends:
            self.services_problem = infra.services_problem(self.redis_url)
            if self.services_problem:
                self.log(f"services backend skipped: {self.services_problem}")
                for scenario in self.only:
                    self.record(scenario, "services", {"skipped": self.services_problem})
        try:
            for name in self.backends:
                if self.only & {"throughput", "sql"}:
                    with self.backend(name) as backend:
                        if backend:
                            await self.queries_on(backend)
                if "subscriptions" in self.only:
                    with self.backend(name) as backend:
                        if backend:
                            await self.subscriptions_on(backend)
                if "logs" in self.only:
                    with self.backend(name) as backend:
                        if backend:
                            await self.logs_on(backend)
            if "fanout2" in self.only:
                if "services" not in self.backends:
                    self.record("fanout2", "services", {"skipped": "the services backend was not selected"})
                else:
                    with self.backend("services") as backend:
                        if backend:
                            await self.fanout2_on(backend)
        finally:
            if not self.args.keep:
                shutil.rmtree(self.work, ignore_errors=True)
        path = report.write(RESULTS, ROOT / "docs" / "performance.md")
        self.log(f"wrote {path} and {RESULTS}/*.json in {time.monotonic() - self.started:.0f}s")
        return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        print(report.write(RESULTS, ROOT / "docs" / "performance.md"))
        return 0
    try:
        import uvloop

        return uvloop.run(Run(args).main())
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(Run(args).main())


if __name__ == "__main__":
    sys.exit(main())
