"""Separate task workers: the job queue (saq on Redis) and ``aicli-api worker``.

saq was chosen over arq and taskiq: it is asyncio-native, maintained, small, and its Redis queue gives FIFO
jobs, per-job keys (a task is queued once) and worker concurrency without a broker process of its own.
The job only carries a task id; the task's state, lease and cancellation live in the database and on the
event broker, exactly as for tasks run inside ``serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from saq import Job, Queue, Worker
from tortoise import Tortoise

from aicm.config import Settings
from aicm.db import tortoise_config
from aicm.redis_pool import make_redis
from aicm.runner import liveness
from aicm.runner.dispatch import request_cancel
from aicm.runner.executor import TaskExecutor
from aicm.subscriptions.broker import Broker
from aicm.subscriptions.factory import make_broker
from aicm.subscriptions.publisher import Publisher, set_current

log = logging.getLogger("aicm.worker")

QUEUE_NAME = "aicm-tasks"
JOB = "run_task"
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def make_queue(settings: Settings, name: str = QUEUE_NAME) -> Queue:
    if not settings.redis.dsn:
        raise ValueError("workers need Redis: set redis.addr or REDIS_URL")
    return Queue.from_url(settings.redis.dsn, name=name)


class QueueDispatcher:
    """``runner.embedded: false``: tasks go to the job queue; any worker may take them."""

    def __init__(self, queue: Queue, broker: Broker) -> None:
        self.queue = queue
        self.broker = broker

    async def submit(self, task_id: int) -> None:
        # No job timeout (the executor enforces runner.timeout); the key queues a task at most once.
        await self.queue.enqueue(
            Job(JOB, kwargs={"task_id": task_id}, key=f"task-{task_id}", timeout=0, retries=1)
        )

    async def cancel(self, task_id: int) -> None:
        await request_cancel(self.broker, task_id)


async def run_worker(
    settings: Settings, *, stop: asyncio.Event | None = None, queue_name: str = QUEUE_NAME
) -> None:
    """Take tasks from the queue, ``runner.max_concurrent`` at a time, until SIGTERM/SIGINT or ``stop``.

    Stopping drains (see ``TaskExecutor.close``): running tasks may finish within ``runner.shutdown_grace``,
    then are stopped and FAILED. A job taken from the queue meanwhile is not started: it is held until saq
    stops, which hands it back to the queue for another worker. While it runs the worker sends a heartbeat
    (``aicm.runner.liveness``) that ``/health`` and ``aicm_workers_live`` read.
    """
    redis = make_redis(settings)
    assert redis is not None  # workers need Redis (the CLI checks it first)
    await Tortoise.init(config=tortoise_config(settings))
    broker = make_broker(settings, client=redis)
    await broker.start()
    set_current(Publisher(broker))
    executor = TaskExecutor(settings, broker)
    await executor.start(local_queue=False)
    queue = make_queue(settings, queue_name)

    async def run_task(ctx: dict, *, task_id: int) -> None:
        if executor.draining:
            # Not started here: saq's stop cancels this wait and puts the job back on the queue.
            await asyncio.get_running_loop().create_future()
        await executor.run(task_id)

    worker = Worker(queue, functions=[(JOB, run_task)], concurrency=settings.runner.max_concurrent)
    worker.SIGNALS = []  # saq's handlers would cancel running jobs at once: this function drains first
    stopping = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in SIGNALS:
        loop.add_signal_handler(signum, stopping.set)

    async def drain_then_stop() -> None:
        await stopping.wait()
        log.info("worker stopping", extra={"event": "worker_stopping", "worker_id": executor.worker_id})
        beating.cancel()  # a draining worker takes no task: it no longer counts as live
        with contextlib.suppress(Exception):
            await liveness.forget(redis, executor.worker_id)
        await executor.close()
        await worker.stop()

    await liveness.beat(redis, executor.worker_id)
    beating = asyncio.create_task(liveness.heartbeat(redis, executor.worker_id), name="aicm-worker-heartbeat")
    draining = asyncio.create_task(drain_then_stop(), name="aicm-worker-drain")
    log.info("worker started", extra={"event": "worker_started", "worker_id": executor.worker_id})
    try:
        await worker.start()
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)
        if not draining.done():  # saq ended on its own: still drain
            stopping.set()
            await draining
        log.info("worker stopped", extra={"event": "worker_stopped", "worker_id": executor.worker_id})
        await queue.disconnect()
        set_current(None)
        await broker.close()
        await Tortoise.close_connections()
        await redis.aclose()
