"""Runs tasks in this process: claims them, runs the agent, stores and publishes its lines, records the end.

Used by ``serve`` (``runner.embedded: true``) and by ``aicli-api worker``. At most ``runner.max_concurrent``
agents run at once; further tasks wait in FIFO order. A running task holds a lease that is renewed while it
runs; a task whose lease expired belonged to a process that died and is marked FAILED by ``recover``.

Stopping (``close``) drains: no new task starts, running ones may finish within ``runner.shutdown_grace``,
and those still running then are stopped and marked FAILED ("worker stopped"). They are not handed back to
the queue: a half-run agent may already have changed the workspace and spent money, so running its prompt
again unasked could do the work twice; the user sees why it ended and can start a follow-up task.
Every start and end is logged (``task_started``, ``task_finished`` with status, duration and cost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise.transactions import in_transaction

from aicm import models
from aicm.config import Settings
from aicm.errors import AppError
from aicm.metrics import TASK_LOG_LINES, TASKS, TASKS_RUNNING
from aicm.runner import webhooks
from aicm.runner.agent_credentials import ENV_NAMES, RunKey, UndecryptableCredential, run_key
from aicm.runner.approvals import PERMISSION_MODES, ApprovalGate
from aicm.runner.command import APPROVAL_PROMPT_TOOL, AgentFlags, build_argv, scrubbed_env
from aicm.runner.isolation import RunIsolation, cut_note, git_paths, limit_error
from aicm.runner.logs import LogWriter
from aicm.runner.process import DEFAULT_GRACE, AgentNotFound, AgentProcess
from aicm.runner.session_store import keep_session, restore_session
from aicm.runner.status import announce
from aicm.runner.stream_json import RunSummary, parse_line
from aicm.runner.workspace import Workspaces, describe
from aicm.subscriptions import channels
from aicm.subscriptions.broker import Broker
from aicm.subscriptions.events import line_payload
from aicm.subscriptions.publisher import publish
from aicm.subscriptions.subscription import Event
from aicm.workspaces.worktrees import Worktree

log = logging.getLogger("aicm.runner")

LEASE_SECONDS = 30.0
RENEW_EVERY = 5.0  # also how often the database is asked whether a cancel was requested
RUNNING, PENDING = models.TaskStatus.RUNNING, models.TaskStatus.PENDING
WAITING = models.TaskStatus.WAITING_FOR_APPROVAL
# After the grace, a stopped agent gets SIGTERM, then SIGKILL DEFAULT_GRACE later, then is reaped: wait that.
STOP_WAIT = DEFAULT_GRACE + 10.0
WORKTREE_SWEEP_EVERY = 3600.0  # how often worktrees past runner.worktree_retention are looked for
REDACTED = "[REDACTED]"  # what a run's API key becomes in the lines its agent prints
MIN_REDACTED = 8  # a shorter "key" (a test value) would blank out ordinary words


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _now() -> datetime:
    return datetime.now(UTC)


async def finish(
    task_id: int,
    status: models.TaskStatus,
    *,
    error: str | None = None,
    only_from: tuple[models.TaskStatus, ...] = (PENDING, RUNNING, WAITING),
    **fields: Any,
) -> bool:
    """Record a task's end unless it is no longer in one of ``only_from``; True when this call ended it.

    A line with ``stream: system`` tells readers of the log why the server ended it.
    """
    async with in_transaction() as connection:  # the end and its explanation are stored together
        updated = (
            await models.Task.filter(id=task_id, status__in=list(only_from))
            .using_db(connection)
            .update(
                status=status,
                error=error,
                finished_at=_now(),
                lease_expires_at=None,
                approval_token_hash=None,
                **fields,
            )
        )
        if not updated:
            return False
        task = await models.Task.get(id=task_id).using_db(connection)
        line = None
        if error and status != models.TaskStatus.SUCCEEDED:
            line = models.TaskLog(
                task_id=task.id, seq=task.last_seq + 1, at=_now(), stream="system", kind="text", text=error
            )
            await line.save(using_db=connection)
            task.last_seq = line.seq
            await task.save(using_db=connection, update_fields=["last_seq"])
    TASKS.labels(str(status)).inc()
    _log_finished(task)
    if line is not None:
        await publish(channels.task_logs(task_id), {"lines": [line_payload(line)]})
    await publish(channels.task_logs(task_id), {"end": True, "status": str(status)})
    await announce(task)
    await webhooks.task_finished(task)
    return True


def _log_finished(task: models.Task) -> None:
    duration = None
    if task.started_at is not None and task.finished_at is not None:
        duration = round((task.finished_at - task.started_at).total_seconds() * 1000)
    fields = {
        "event": "task_finished",
        "task_id": task.id,
        "project_id": task.project_id,  # type: ignore[attr-defined]
        "status": str(task.status),
        "duration_ms": duration,
        "cost_usd": task.cost_usd,
        "exit_code": task.exit_code,
        "worker_id": task.worker_id,
    }
    level = (
        logging.INFO
        if task.status in (models.TaskStatus.SUCCEEDED, models.TaskStatus.CANCELLED)
        else logging.WARNING
    )
    log.log(level, "task %s %s", task.id, fields["status"], extra=fields)


async def cancel_pending(task_id: int) -> bool:
    """End a task that no process has started yet; False when it is running (or over)."""
    return await finish(
        task_id, models.TaskStatus.CANCELLED, error="Cancelled before it started", only_from=(PENDING,)
    )


class TaskExecutor:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        *,
        worker_id: str | None = None,
        workspaces: Workspaces | None = None,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.workspaces = workspaces or Workspaces(settings)
        self._worktrees: dict[int, Worktree] = {}  # running tasks' worktrees, for saving work on a stop
        self.worker_id = worker_id or new_worker_id()
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._cancels: dict[int, asyncio.Event] = {}
        self._background: list[asyncio.Task[None]] = []
        self._slots: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[Any]] = set()  # slots running a task
        self._active: set[int] = set()  # tasks being claimed or run here
        self._idle = asyncio.Event()  # set while none is
        self._idle.set()
        self._draining = False  # closing: no new task starts here
        self._stopped: set[int] = set()  # running tasks the shutdown stopped
        self._grace = settings.runner.shutdown_grace
        self.isolation = RunIsolation(settings)

    async def start(self, *, local_queue: bool = True, single_process: bool = False) -> None:
        """Begin: recover what a dead process left, then run.

        ``local_queue``: this process runs the tasks handed to ``submit`` (``runner.max_concurrent`` at a
        time, FIFO); a worker fed by the job queue calls ``run`` itself instead. Unless ``single_process``,
        other processes may die holding tasks, so expired leases are swept periodically.
        """
        await self.isolation.detect()  # once; raises when an explicit runner.sandbox: bubblewrap cannot run
        await self.recover(single_process=single_process)
        if local_queue:
            slots = self.settings.runner.max_concurrent
            self._slots = [asyncio.create_task(self._slot(), name=f"aicm-runner-{n}") for n in range(slots)]
        self._background.append(asyncio.create_task(self._renew_leases(), name="aicm-runner-leases"))
        self._background.append(asyncio.create_task(self._follow_cancels(), name="aicm-runner-cancels"))
        self._background.append(asyncio.create_task(self._sweep_worktrees(), name="aicm-runner-worktrees"))
        sender = webhooks.WebhookSender(self.settings)
        self._background.append(asyncio.create_task(sender.run(self.broker), name="aicm-webhooks"))
        if not single_process:
            self._background.append(asyncio.create_task(self._sweep(), name="aicm-runner-sweep"))

    @property
    def draining(self) -> bool:
        return self._draining

    async def close(self, grace: float | None = None) -> None:
        """Drain, then stop: no new task starts; running tasks may finish within ``grace`` seconds
        (``runner.shutdown_grace``); those still running are then stopped and marked FAILED "worker stopped".
        Tasks queued here and not started stay PENDING."""
        grace = self.settings.runner.shutdown_grace if grace is None else grace
        self._grace = grace
        self._draining = True
        for slot in self._slots:
            if slot not in self._busy:
                slot.cancel()
        running = sorted(self._active)
        if running:
            log.info(
                "stopping: waiting for %d running task(s)",
                len(running),
                extra={"event": "runner_draining", "task_ids": running, "grace_seconds": grace},
            )
        if not await self._wait_idle(grace):
            for task_id, event in list(self._cancels.items()):
                self._stopped.add(task_id)
                event.set()
            await self._wait_idle(STOP_WAIT)
        for task in [*self._slots, *self._background]:  # anything still running ends as FAILED too
            task.cancel()
        for task in [*self._slots, *self._background]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._slots, self._background = [], []

    def _stop_error(self) -> str:
        return f"worker stopped: the task was still running {self._grace:g} s after the shutdown began"

    async def _wait_idle(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def submit(self, task_id: int) -> None:
        self._queue.put_nowait(task_id)

    async def cancel_everything(self, wait: float = 10.0) -> None:
        """Drop queued tasks and cancel the running ones, waiting (bounded) until none runs here."""
        while not self._queue.empty():
            self._queue.get_nowait()
        for event in self._cancels.values():
            event.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._idle.wait()

    def cancel_local(self, task_id: int) -> bool:
        """Stop the task if it runs here; True when it did."""
        event = self._cancels.get(task_id)
        if event is None:
            return False
        event.set()
        return True

    async def _follow_cancels(self) -> None:
        """Cancel requests for tasks that may run in any process arrive on one control channel."""
        async with self.broker.subscribe([channels.task_control()]) as subscription:
            async for item in subscription:
                if isinstance(item, Event) and isinstance(item.payload.get("cancel"), int):
                    self.cancel_local(item.payload["cancel"])

    # --- recovery -----------------------------------------------------------------------------------

    async def recover(self, *, single_process: bool) -> None:
        """Fail tasks whose runner died; in single-process mode requeue PENDING tasks too.

        Single-process (no Redis): nothing else can be running a task, so every RUNNING task was left by a
        previous life of this server. With workers: only tasks whose lease expired.
        """
        stale = models.Task.filter(status__in=list(models.ACTIVE))
        if not single_process:
            stale = stale.filter(lease_expires_at__lt=_now())
        for task_id in await stale.values_list("id", flat=True):
            log.warning(
                "task left running by a dead process", extra={"event": "task_recovered", "task_id": task_id}
            )
            if await finish(
                task_id, models.TaskStatus.FAILED, error="The process running this task stopped (worker lost)"
            ):
                await self._salvage(task_id)
        if single_process:
            for task_id in (
                await models.Task.filter(status=PENDING).order_by("id").values_list("id", flat=True)
            ):
                await self.submit(task_id)

    async def _salvage(self, task_id: int) -> None:
        """Commit what a lost worker's agent left, when its worktree is on this machine."""
        task = await models.Task.get(id=task_id).prefetch_related("project")
        try:
            await self.workspaces.salvage(task)
        except Exception as exc:
            log.warning(
                "saving a lost task's work failed: %s",
                describe(exc),
                extra={"event": "task_work_not_saved", "task_id": task_id},
            )

    async def _sweep_worktrees(self) -> None:
        while True:
            try:
                removed = await self.workspaces.sweep()
                if removed:
                    log.info(
                        "removed %d worktree(s) past runner.worktree_retention",
                        removed,
                        extra={"event": "worktrees_removed", "count": removed},
                    )
            except Exception:
                log.exception("sweeping worktrees failed", extra={"event": "worktree_sweep_failed"})
            await asyncio.sleep(min(WORKTREE_SWEEP_EVERY, self.workspaces.retention))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS)
            try:
                await self.recover(single_process=False)
            except Exception:
                log.exception("sweeping expired leases failed", extra={"event": "task_sweep_failed"})

    # --- running ------------------------------------------------------------------------------------

    async def _slot(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        while not self._draining:
            task_id = await self._queue.get()
            self._busy.add(me)
            try:
                await self.run(task_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("task run failed", extra={"event": "task_error", "task_id": task_id})
                await finish(task_id, models.TaskStatus.FAILED, error="Internal error while running the task")
            finally:
                self._busy.discard(me)

    async def _claim(self, task_id: int) -> models.Task | None:
        claimed = await models.Task.filter(id=task_id, status=PENDING, cancel_requested=False).update(
            status=RUNNING,
            started_at=_now(),
            worker_id=self.worker_id,
            lease_expires_at=_now() + timedelta(seconds=LEASE_SECONDS),
        )
        if not claimed:
            await cancel_pending(task_id)  # ends it only if a cancel left it PENDING
            return None
        return await models.Task.get(id=task_id).prefetch_related("project")

    async def run(self, task_id: int) -> None:
        """Claim and run one task; a task whose run begins while this executor drains is left PENDING."""
        if self._draining:
            return
        self._active.add(task_id)  # from the claim on, a drain waits for it
        self._idle.clear()
        try:
            await self._run_claimed(task_id)
        finally:
            self._active.discard(task_id)
            if not self._active:
                self._idle.set()

    async def _run_claimed(self, task_id: int) -> None:
        task = await self._claim(task_id)
        if task is None:
            return
        cancel = self._cancels[task.id] = asyncio.Event()
        TASKS_RUNNING.inc()
        log.info(
            "task %s started",
            task.id,
            extra={
                "event": "task_started",
                "task_id": task.id,
                "project_id": task.project_id,  # type: ignore[attr-defined]
                "worker_id": self.worker_id,
                "parent_id": task.parent_id,
            },
        )
        try:
            await announce(task)
            await self._execute(task, cancel)
        except asyncio.CancelledError:  # stopped past every grace; the agent's group is already killed
            await asyncio.shield(self._stopped_hard(task))
            raise
        finally:
            self._worktrees.pop(task.id, None)
            self._cancels.pop(task.id, None)
            self._stopped.discard(task.id)
            TASKS_RUNNING.dec()

    async def _stopped_hard(self, task: models.Task) -> None:
        tree = self._worktrees.get(task.id)
        if tree is not None:
            await self._save_work(task, tree)
        await finish(task.id, models.TaskStatus.FAILED, error=self._stop_error())

    async def _prepare_worktree(self, task: models.Task) -> Worktree | None:
        """The task's worktree; None (the task FAILED with git's reason) when it cannot be made."""
        try:
            tree = await self.workspaces.prepare(task)
        except AppError as exc:
            await finish(
                task.id, models.TaskStatus.FAILED, error=f"Could not prepare the repository: {exc.message}"
            )
            return None
        self._worktrees[task.id] = tree
        return tree

    async def _save_work(self, task: models.Task, tree: Worktree) -> str | None:
        """Commit and publish what the agent left (after every run); the reason when that failed."""
        try:
            await self.workspaces.save_work(task, tree)
        except Exception as exc:
            log.warning(
                "saving the task's work failed: %s",
                describe(exc),
                exc_info=not isinstance(exc, AppError),
                extra={"event": "task_work_not_saved", "task_id": task.id},
            )
            return f"Could not save the agent's work: {describe(exc)}"
        return None

    def agent_flags(self, task: models.Task, gate: ApprovalGate | None = None) -> AgentFlags | None:
        """The Claude CLI flags for what the task asks (its budget, the project's permission mode, the
        run's approval gate); None with ``runner.agent_cli: generic``."""
        if self.settings.runner.agent_cli != "claude":
            return None
        mode = models.AgentPermissionMode(task.project.agent_permission_mode)
        return AgentFlags(
            max_budget_usd=task.max_budget_usd,
            permission_mode=PERMISSION_MODES[mode],
            mcp_config=str(gate.mcp_config) if gate else None,
            permission_prompt_tool=APPROVAL_PROMPT_TOOL if gate else None,
        )

    async def _agent_env(self, task: models.Task) -> dict[str, str]:
        """The scrubbed environment with the run's API key (creator's, else project's, else runner.env's).

        Raises ``UndecryptableCredential`` rather than falling back to another key (and another bill)."""
        env = scrubbed_env(os.environ, self.settings.runner.env)
        key: RunKey | None = await run_key(self.workspaces.box, task)
        if key is not None:
            env[key.env_name] = key.value
        return env

    async def _execute(self, task: models.Task, cancel: asyncio.Event) -> None:
        runner = self.settings.runner
        resume = None
        if task.parent_id:
            parent = await models.Task.get_or_none(id=task.parent_id)
            resume = parent.cli_session_id if parent else None
        try:
            env = await self._agent_env(task)
        except (UndecryptableCredential, ValueError) as exc:
            await finish(task.id, models.TaskStatus.FAILED, error=f"Could not start the agent: {exc}")
            return
        # An agent told to print its key must not put it in the task's log (readable by every project viewer).
        secret = env.get(ENV_NAMES["anthropic"], "")
        secret = secret if len(secret) >= MIN_REDACTED else ""
        summary = RunSummary()
        writer = LogWriter(task.id, task.last_seq)

        async def on_line(stream: str, line: str) -> None:
            if secret and secret in line:
                line = line.replace(secret, REDACTED)
            parsed = parse_line(stream, line)
            summary.feed(parsed)
            await writer.add(parsed.stream, parsed.kind, parsed.text, parsed.data, parsed.json)
            if note := cut_note(line, self.isolation.limits):
                await writer.add("system", "text", note, None)

        tree = await self._prepare_worktree(task)
        if tree is None:
            return
        try:
            async with contextlib.AsyncExitStack() as stack:
                gate = None
                if self._asks_approval(task):
                    gate = await stack.enter_async_context(ApprovalGate(self.settings, self.broker, task.id))
                flags = self.agent_flags(task, gate)
                options = flags.argv() if flags is not None else []
                argv = build_argv(runner.command, task.prompt, resume_session_id=resume, options=options)
                cwd = tree.path
                creator = task.created_by_id  # type: ignore[attr-defined]
                paths = git_paths(tree)
                if gate:  # the approval socket's directory
                    paths["read_write"].append(gate.directory)
                argv, limits, sandboxed = self.isolation.build_run(argv, cwd, creator, **paths)
                sessions = self.isolation.session_dir(creator, env)
                await restore_session(task, cwd, sessions)
                agent = await stack.enter_async_context(
                    AgentProcess(argv, cwd=cwd, env=env, limits=limits, sandboxed=sandboxed)
                )
                outcome = await agent.run(on_line, time_limit=runner.timeout, cancel_event=cancel)
        except (AgentNotFound, ValueError, OSError) as exc:  # the agent could not be started at all
            await writer.close()
            await finish(task.id, models.TaskStatus.FAILED, error=f"Could not start the agent: {exc}")
            return
        await writer.close()
        await keep_session(task, summary.session_id, cwd, sessions)
        TASK_LOG_LINES.inc(writer.written)
        fields = {
            "exit_code": outcome.exit_code,
            "cost_usd": summary.cost_usd,
            "cli_session_id": summary.session_id,
        }
        not_saved = await self._save_work(task, tree)
        if outcome.cancelled and task.id in self._stopped:
            await finish(task.id, models.TaskStatus.FAILED, error=self._stop_error(), **fields)
        elif outcome.cancelled:
            await finish(task.id, models.TaskStatus.CANCELLED, error="Cancelled", **fields)
        elif outcome.timed_out:
            limit = int(runner.timeout)
            await finish(task.id, models.TaskStatus.TIMED_OUT, error=f"Timed out after {limit} s", **fields)
        elif outcome.limit is not None:
            error = limit_error(outcome.limit, self.isolation.limits)
            await finish(task.id, models.TaskStatus.FAILED, error=error, **fields)
        elif not_saved is not None:
            await finish(task.id, models.TaskStatus.FAILED, error=not_saved, **fields)
        elif summary.succeeded(outcome.exit_code):
            await finish(task.id, models.TaskStatus.SUCCEEDED, **fields)
        else:
            reason = (
                summary.result_text if summary.is_error else f"The agent exited with code {outcome.exit_code}"
            )
            await finish(
                task.id, models.TaskStatus.FAILED, error=reason or "The agent reported an error", **fields
            )

    def _asks_approval(self, task: models.Task) -> bool:
        """Claude Code runs ask this system before a tool that needs permission, unless in BYPASS mode."""
        mode = task.project.agent_permission_mode
        return self.settings.runner.agent_cli == "claude" and mode != models.AgentPermissionMode.BYPASS

    async def _renew_leases(self) -> None:
        """Keep our running tasks' leases alive, and catch cancels that arrived only through the database."""
        while True:
            await asyncio.sleep(RENEW_EVERY)
            ids = list(self._cancels)
            if not ids:
                continue
            with contextlib.suppress(Exception):
                active = list(models.ACTIVE)
                await models.Task.filter(id__in=ids, worker_id=self.worker_id, status__in=active).update(
                    lease_expires_at=_now() + timedelta(seconds=LEASE_SECONDS)
                )
                for task_id in await models.Task.filter(id__in=ids, cancel_requested=True).values_list(
                    "id", flat=True
                ):
                    self.cancel_local(task_id)
