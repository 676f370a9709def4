"""What operators see of the runner: which ``aicli-api worker`` processes are alive, and how many tasks wait.

Each worker writes a heartbeat every ``BEAT_EVERY`` seconds into one Redis sorted set (member: the worker id,
score: the time of its latest beat); a worker counts as live while its latest beat is less than
``LIVE_WINDOW`` seconds old. A worker that stops cleanly removes itself; one that dies ages out. Redis is
where workers already meet (the job queue), so no table of their own is needed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from aicm import models

log = logging.getLogger("aicm.worker")

WORKERS_KEY = "aicm:workers"
LIVE_WINDOW = 60.0  # seconds
BEAT_EVERY = 10.0


@dataclass(frozen=True, slots=True)
class SeenWorker:
    id: str
    last_seen: float  # Unix time of its latest heartbeat


async def beat(redis: Redis, worker_id: str, *, now: float | None = None) -> None:
    """Record that ``worker_id`` is alive now, and forget workers silent for long."""
    now = time.time() if now is None else now
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zadd(WORKERS_KEY, {worker_id: now})
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - 10 * LIVE_WINDOW)
        await pipe.execute()


async def forget(redis: Redis, worker_id: str) -> None:
    """A worker that stops says so, so that it stops counting at once."""
    await redis.zrem(WORKERS_KEY, worker_id)


async def live_workers(redis: Redis, *, within: float = LIVE_WINDOW) -> list[SeenWorker]:
    """Workers whose latest heartbeat is less than ``within`` seconds old, most recent first."""
    rows = await redis.zrevrangebyscore(WORKERS_KEY, "+inf", time.time() - within, withscores=True)
    return [
        SeenWorker(member.decode() if isinstance(member, bytes) else member, score) for member, score in rows
    ]


async def heartbeat(redis: Redis, worker_id: str, every: float = BEAT_EVERY) -> None:
    """Beat until cancelled; a Redis hiccup costs one beat, not the loop."""
    while True:
        try:
            await beat(redis, worker_id)
        except Exception as exc:
            log.warning("worker heartbeat failed: %s", exc, extra={"event": "worker_heartbeat_failed"})
        await asyncio.sleep(every)


async def queue_depth() -> int:
    """Tasks created and not started yet (PENDING), wherever they wait."""
    return await models.Task.filter(status=models.TaskStatus.PENDING).count()
