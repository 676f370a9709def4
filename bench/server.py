"""The benchmarked server: the real app from ``aicm.app.build_app``, plus bench-only routes, served the way
``aicli-api serve`` serves it (one uvicorn process, the same options).

    python -m bench.server --config PATH --port N

Bench routes (bench code; the product never has them). They sit in the same Starlette app, behind the same
middleware (request id, access log, metrics) as ``/graphql``, so the "bare" rows differ from the GraphQL rows
by the GraphQL layer alone:

- ``GET /bench/bare/me``: the ``me`` answer without GraphQL. Same authentication path as ``/graphql``
  (``viewer_from_authorization``: token, session check, user and system permissions), same JSON.
- ``GET /bench/bare/projects?first=N``: ``projects(first: N)`` with owner and members, through the same
  resolver (``resolvers.projects.list_projects``: visibility, COUNT, page) plus one query for the members and
  one for their users, same JSON.
- ``POST /bench/seed``: builds the data set with the models (one password hash for every user).
- ``POST /bench/sql/start``, ``POST /bench/sql/stop``: counts the SQL statements sent in between (Tortoise's
  ``tortoise.db_client`` logger at DEBUG, the way tests/schema/test_query_counts.py counts them).
- ``GET /bench/stats``: open broker subscriptions; ``GET /bench/task/{id}``: a task's ``last_seq`` and status.
- ``POST /bench/profile/start``, ``POST /bench/profile/stop?path=...``: pyinstrument, when installed.
- ``POST /bench/tracemalloc/start``, ``POST /bench/tracemalloc/stop?top=N``: what the memory grown in
  between was allocated by (bench/profile.py uses it for the memory per subscription).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from tortoise.transactions import in_transaction

from aicm import models
from aicm.app import build_app
from aicm.auth.passwords import hash_password
from aicm.auth.permissions import ADMIN, DEVELOPER, MEMBER, OWNER, VIEWER
from aicm.config import Settings, load_settings
from aicm.db import apply_migrations
from aicm.ids import encode_cursor
from aicm.logs.setup import configure_logging, log_config
from aicm.resolvers.projects import list_projects
from aicm.schema.context import viewer_from_authorization
from aicm.schema.relay import encode_id

SQL_VERBS = {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"}


def _user(user: models.User) -> dict[str, Any]:
    return {"id": encode_id("User", user.id), "email": user.email, "name": user.name}


async def bare_me(request: Request) -> JSONResponse:
    runtime = request.app.state.runtime
    viewer = await viewer_from_authorization(runtime, request.headers.get("authorization"), request)
    return JSONResponse({"data": {"me": _user(viewer.user) if viewer.user else None}})


async def bare_projects(request: Request) -> JSONResponse:
    runtime = request.app.state.runtime
    viewer = await viewer_from_authorization(runtime, request.headers.get("authorization"), request)
    first = int(request.query_params.get("first", "20"))
    page = await list_projects(viewer, first=first, after=None, search=None, include_archived=False)
    ids = [project.id for project in page.rows]
    members = await models.ProjectMember.filter(project_id__in=ids).order_by("added_at", "id")
    roles = await viewer.roles()
    user_ids = {p.owner_id for p in page.rows} | {m.user_id for m in members}  # type: ignore[attr-defined]
    users = {u.id: u for u in await models.User.filter(id__in=list(user_ids))}
    by_project: dict[int, list[models.ProjectMember]] = {pid: [] for pid in ids}
    for member in members:
        by_project[member.project_id].append(member)  # type: ignore[attr-defined]
    edges = []
    for project in page.rows:
        node = {
            "id": encode_id("Project", project.id),
            "name": project.name,
            "slug": project.slug,
            "owner": _user(users[project.owner_id]),  # type: ignore[attr-defined]
            "members": [
                {
                    "addedAt": m.added_at.isoformat(),
                    "user": _user(users[m.user_id]),  # type: ignore[attr-defined]
                    "role": {"id": encode_id("Role", m.role_id), "name": roles[m.role_id].name},  # type: ignore[attr-defined]
                }
                for m in by_project[project.id]
            ],
        }
        edges.append({"cursor": encode_cursor(project.id), "node": node})
    data = {
        "projects": {
            "totalCount": page.total,
            "pageInfo": {"hasNextPage": page.has_next, "endCursor": edges[-1]["cursor"] if edges else None},
            "edges": edges,
        }
    }
    return JSONResponse({"data": data})


async def seed(request: Request) -> JSONResponse:
    """Owner, viewer and admin users; ``projects`` projects owned by the owner, each with the viewer (viewer)
    and one more user (developer); ``tasks`` finished tasks in the first project; ``audit`` audit rows."""
    spec = await request.json()
    password_hash = hash_password(spec["password"])
    roles = {role.name: role for role in await models.Role.filter(built_in=True)}
    out: dict[str, Any] = {}
    async with in_transaction():

        async def user(email: str, name: str, *system: str) -> models.User:
            row = await models.User.create(email=email, name=name, password_hash=password_hash)
            for role_name in system:
                await models.UserRole.create(user=row, role=roles[role_name])
            return row

        owner = await user("owner@bench.example.com", "Bench Owner", MEMBER)
        viewer = await user("viewer@bench.example.com", "Bench Viewer", MEMBER)
        await user("admin@bench.example.com", "Bench Admin", MEMBER, ADMIN)
        projects = []
        for n in range(1, spec.get("projects", 60) + 1):
            project = await models.Project.create(
                name=f"Bench project {n}",
                slug=f"bench-project-{n}",
                description=f"Seeded project number {n} for the benchmarks",
                repository_url="",  # tasks work in a local repository made with one empty commit
                owner=owner,
            )
            other = await user(f"dev{n}@bench.example.com", f"Developer {n}", MEMBER)
            await models.ProjectMember.create(project=project, user=owner, role=roles[OWNER])
            await models.ProjectMember.create(project=project, user=viewer, role=roles[VIEWER])
            await models.ProjectMember.create(project=project, user=other, role=roles[DEVELOPER])
            projects.append(project)
        for n in range(spec.get("tasks", 60)):
            await models.Task.create(
                project=projects[0],
                created_by=owner,
                prompt=f"seeded task {n}",
                status=models.TaskStatus.SUCCEEDED,
                exit_code=0,
            )
        for project in projects[: spec.get("audit", 60)]:
            await models.AuditLog.create(
                actor=owner, action="project.create", target_type="Project", target_id=str(project.id)
            )
    out["projects"] = [encode_id("Project", p.id) for p in projects]
    return JSONResponse(out)


class _SqlCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.statements: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.lstrip().split(" ", 1)[0].upper() in SQL_VERBS:
            self.statements.append(message[:300])


_counter: _SqlCounter | None = None
_SQL_LOGGER = logging.getLogger("tortoise.db_client")


async def sql_start(request: Request) -> JSONResponse:
    global _counter
    if _counter is None:
        _counter = _SqlCounter()
        _SQL_LOGGER.addHandler(_counter)
        _SQL_LOGGER.setLevel(logging.DEBUG)
        _SQL_LOGGER.propagate = False  # counted, not printed
    _counter.statements.clear()
    return JSONResponse({"ok": True})


async def sql_stop(request: Request) -> JSONResponse:
    global _counter
    counter, _counter = _counter, None
    statements = counter.statements if counter else []
    if counter is not None:
        _SQL_LOGGER.removeHandler(counter)
        _SQL_LOGGER.setLevel(logging.NOTSET)
        _SQL_LOGGER.propagate = True
    return JSONResponse({"count": len(statements), "statements": statements})


class _GCClock:
    """Time spent in the cyclic garbage collector, per generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._started
            self.collections[generation] += 1


_gc_clock = _GCClock()


def _type_counts(top: int = 60) -> list[tuple[str, int]]:
    """The most numerous tracked object types (after a full collection): what a subscription is made of."""
    import collections

    gc.collect()
    counts = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
    return counts.most_common(top)


async def stats(request: Request) -> JSONResponse:
    broker = request.app.state.runtime.broker
    return JSONResponse(
        {
            "pid": os.getpid(),
            "gc_seconds": [round(s, 4) for s in _gc_clock.seconds],
            "gc_collections": _gc_clock.collections,
            "gc_objects": len(gc.get_objects()) if request.query_params.get("objects") else None,
            "gc_types": _type_counts() if request.query_params.get("types") else None,
            "subscribers": broker.stats.subscribers,
            "channels": broker.channel_count,
            "delivered": broker.stats.delivered,
            "direct": broker.stats.direct,
            "dropped": broker.stats.dropped,
            "tasks": len(asyncio.all_tasks()),
        }
    )


async def task_state(request: Request) -> JSONResponse:
    task = await models.Task.get_or_none(id=int(request.path_params["id"]))
    if task is None:
        return JSONResponse({"error": "no such task"}, status_code=404)
    return JSONResponse({"last_seq": task.last_seq, "status": str(task.status)})


_profiler: Any = None


async def profile_start(request: Request) -> JSONResponse:
    global _profiler
    from pyinstrument import Profiler

    _profiler = Profiler(interval=0.0005, async_mode="disabled")
    _profiler.start()
    return JSONResponse({"ok": True})


async def profile_stop(request: Request) -> JSONResponse:
    global _profiler
    profiler, _profiler = _profiler, None
    if profiler is None:
        return JSONResponse({"error": "not started"}, status_code=400)
    profiler.stop()
    path = request.query_params.get("path")
    text = profiler.output_text(unicode=True, color=False, show_all=False)
    if path:
        with open(path, "w", encoding="utf-8") as out:
            out.write(text)
        with open(path.rsplit(".", 1)[0] + ".html", "w", encoding="utf-8") as out:
            out.write(profiler.output_html())
    return JSONResponse({"ok": True, "chars": len(text)})


_snapshot: Any = None


async def tracemalloc_start(request: Request) -> JSONResponse:
    global _snapshot
    import tracemalloc

    tracemalloc.start(int(request.query_params.get("frames", "8")))
    gc.collect()
    _snapshot = tracemalloc.take_snapshot()
    return JSONResponse({"ok": True})


async def tracemalloc_stop(request: Request) -> JSONResponse:
    """The allocation sites that grew since start (still alive), by size; ``group=lineno|traceback``."""
    global _snapshot
    import tracemalloc

    gc.collect()
    after = tracemalloc.take_snapshot()
    before, _snapshot = _snapshot, None
    tracemalloc.stop()
    if before is None:
        return JSONResponse({"error": "not started"}, status_code=400)
    top = int(request.query_params.get("top", "40"))
    group = request.query_params.get("group", "lineno")
    stats = after.compare_to(before, group)
    rows = [
        {"size_diff": s.size_diff, "count_diff": s.count_diff, "where": [str(f) for f in s.traceback][-6:]}
        for s in stats[:top]
    ]
    total = sum(s.size_diff for s in stats)
    return JSONResponse({"total_size_diff": total, "top": rows})


def bench_app(settings: Settings) -> Starlette:
    app = build_app(settings)
    app.router.routes[:0] = [
        Route("/bench/bare/me", bare_me),
        Route("/bench/bare/projects", bare_projects),
        Route("/bench/seed", seed, methods=["POST"]),
        Route("/bench/sql/start", sql_start, methods=["POST"]),
        Route("/bench/sql/stop", sql_stop, methods=["POST"]),
        Route("/bench/stats", stats),
        Route("/bench/task/{id:int}", task_state),
        Route("/bench/profile/start", profile_start, methods=["POST"]),
        Route("/bench/profile/stop", profile_stop, methods=["POST"]),
        Route("/bench/tracemalloc/start", tracemalloc_start, methods=["POST"]),
        Route("/bench/tracemalloc/stop", tracemalloc_stop, methods=["POST"]),
    ]
    return app


def _gc_experiment(spec: str) -> None:
    """BENCH_GC (profiling only, never in a normal run): parts separated by ';': "freeze", "nofreeze",
    "threshold=A,B,C", "forget" (see bench/findings.md)."""
    for part in filter(None, spec.split(";")):
        if part == "freeze":
            gc.collect()
            gc.freeze()
        elif part.startswith("threshold="):
            gc.set_threshold(*(int(x) for x in part.split("=", 1)[1].split(",")))
        elif part == "nofreeze":  # the product as it was before _freeze_startup_objects (A/B runs)
            import aicm.app

            aicm.app._freeze_startup_objects = lambda: None  # type: ignore[attr-defined]
        elif part == "forget":  # subscriptions drop the viewer's cached role catalogue once authorized
            from aicm.auth import authorization
            from aicm.resolvers import subscriptions

            class _Forgetting:
                def __getattr__(self, name: str) -> Any:
                    return getattr(authorization, name)

                async def get_visible_project(self, viewer: Any, project_id: int) -> Any:
                    project = await authorization.get_visible_project(viewer, project_id)
                    viewer.forget()
                    return project

            subscriptions.authorization = _Forgetting()  # type: ignore[assignment]
        else:
            raise SystemExit(f"BENCH_GC: unknown part {part!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.server")
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-migrate", action="store_true")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.logging)
    if settings.auto_migrate and not args.no_migrate:
        asyncio.run(apply_migrations(settings))
    app = bench_app(settings)
    _gc_experiment(os.environ.get("BENCH_GC", ""))
    # The options of `aicli-api serve` (aicm/cli.py _serve), on loopback only.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        timeout_keep_alive=int(settings.server.idle_timeout),
        log_config=log_config(),
        access_log=False,
        ws_per_message_deflate=settings.server.ws_compression,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
