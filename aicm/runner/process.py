"""One agent run as an OS process: start it, read its lines, cancel it, reap it (CONTRACT §5).

The agent runs without a shell, with stdin on /dev/null, in its own session and so in its own process group:
``cancel`` signals the whole group, so the tools the agent started (a test run, a dev server) stop with it.

Use it as an async context manager, so that whatever is left of the group is killed on the way out even when
the caller fails or is cancelled. ``run`` reads every line, enforces ``runner.timeout`` and reacts to a
cancel request::

    argv = build_argv(settings.runner.command, task.prompt, resume_session_id=previous_session_id)
    env = scrubbed_env(os.environ, settings.runner.env)
    cwd = (await workspaces.prepare(task)).path  # the task's git worktree (aicm/runner/workspace.py)
    summary = RunSummary()

    async def on_line(stream: str, line: str) -> None:
        parsed = parse_line(stream, line)
        summary.feed(parsed)
        ...  # store the TaskLogLine, publish it

    try:
        async with AgentProcess(argv, cwd=cwd, env=env) as agent:
            outcome = await agent.run(
                on_line, time_limit=settings.runner.timeout, cancel_event=cancel_requested
            )
    except AgentNotFound as exc:
        ...  # FAILED with error=str(exc), exitCode null; stop here

    if outcome.cancelled:   status = CANCELLED   # exitCode = outcome.exit_code (None when a signal ended it)
    elif outcome.timed_out: status = TIMED_OUT
    else:                   status = SUCCEEDED if summary.succeeded(outcome.exit_code) else FAILED

Doing it by hand instead: iterate ``lines()`` inside ``asyncio.timeout(runner.timeout)``; on ``TimeoutError``
call ``await agent.cancel()`` (SIGTERM to the group, SIGKILL after the grace) and then ``await agent.wait()``.
Always consume ``lines()``: an agent whose pipes are not read blocks once the pipe buffer (64 KiB) is full.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import fcntl
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from aicm.runner.limits import Limits, RunCgroup, limit_from_exit, preexec

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_MAX_LINE_BYTES",
    "AgentNotFound",
    "AgentProcess",
    "RunOutcome",
]

DEFAULT_MAX_LINE_BYTES = 1024 * 1024
DEFAULT_GRACE = 5.0  # seconds between SIGTERM and SIGKILL (CONTRACT §7, Runner)
DEFAULT_DRAIN_TIMEOUT = 2.0  # after the agent exits, stop reading pipes that stay silent this long
_POLL = 0.05  # how often to look for the agent's exit while waiting on something else
_RESEND_TERM = 0.5  # sandboxed cancel: how often SIGTERM is sent again to what runs inside
_REAP_TIMEOUT = 5.0  # after SIGKILL, how long to wait for the kernel to report the exit
_CHUNK = 64 * 1024  # bytes read from a pipe at once, then cut into lines
_QUEUE_SIZE = 16  # chunks read ahead of the consumer; beyond that the pipes fill and the agent waits
# The agent's stdout pipe holds this much (Linux; 64 KiB by default, ~180 stream-json lines): an agent that
# prints fast goes on while the event loop is busy elsewhere for a few ms, instead of waiting on a full pipe
_PIPE_BYTES = 1024 * 1024

_LIMIT_POLL = 0.25  # how often to look at the run's cgroup for an OOM kill or a refused fork
_MAX_DESCENDANTS = 10_000
_NOT_RUNNABLE = {errno.ENOENT, errno.EACCES, errno.ENOTDIR, errno.ENOEXEC, errno.ELOOP, errno.EISDIR}


class AgentNotFound(Exception):
    """The agent program could not be executed: missing from PATH, or not an executable file."""

    def __init__(self, command: str, reason: str = "not found") -> None:
        self.command = command
        self.reason = reason
        super().__init__(f"agent command {command!r} {reason} (check runner.command and PATH)")


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How ``AgentProcess.run`` ended. ``exit_code`` is None when a signal ended the agent.

    ``limit`` names the ``runner.limits`` entry the run passed ("memory", "processes", "file_size",
    "cpu_time", "output_bytes"), else None; the caller ends such a run as FAILED.
    """

    exit_code: int | None
    timed_out: bool = False
    cancelled: bool = False
    limit: str | None = None


@dataclass(frozen=True, slots=True)
class _End:
    stream: str
    error: BaseException | None


class AgentProcess:
    """An agent program running in its own process group, read line by line.

    ``max_line_bytes`` bounds one line: the bytes beyond it are discarded as they are read (never held in
    memory) and the line ends with `` …[truncated N bytes]``.

    ``limits`` (``runner.limits``): the run gets a cgroup of its own when this machine allows one and its
    rlimits (see ``aicm.runner.limits``); ``limits.line_bytes`` replaces ``max_line_bytes``; past
    ``output_bytes`` of stdout and stderr together the rest is read and dropped and the run is killed.
    ``kill`` reaches every process of the cgroup, also those that left the process group with ``setsid``.
    (Without a cgroup only the sandbox's PID namespace contains those: see ``aicm.runner.sandbox``.)
    ``sandboxed``: ``argv`` is a ``sandbox.wrap`` command line; ``cancel`` then sends its SIGTERM to the
    processes inside the sandbox, not to bubblewrap, which would die of it and kill them without a word.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: str | Path,
        env: Mapping[str, str],
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        limits: Limits | None = None,
        sandboxed: bool = False,
    ) -> None:
        if not argv or not argv[0]:
            raise ValueError("argv must name a program")
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self.argv = list(argv)
        self.cwd = Path(cwd)
        self.env = dict(env)
        self.max_line_bytes = limits.line_bytes if limits else max_line_bytes
        self.drain_timeout = drain_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._lines_taken = False
        # --- runner.limits
        self.limits = limits
        self.sandboxed = sandboxed
        self._cgroup: RunCgroup | None = None
        self._output_bytes = 0
        self._limit: str | None = None
        self._limit_hit = asyncio.Event()

    # ----------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> AgentProcess:
        """Spawn the program. Raises AgentNotFound when it cannot be executed, OSError for a bad ``cwd``."""
        if self._proc is not None:
            raise RuntimeError("the agent process was already started")
        if self.limits is not None:
            self._cgroup = RunCgroup.create(self.limits)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,  # own session, own process group: cancel reaches the children
                limit=self.max_line_bytes,
                preexec_fn=preexec(self.limits, self._cgroup) if self.limits else None,
            )
        except OSError as exc:
            self._remove_cgroup()
            names_cwd = exc.filename is not None and os.fsdecode(exc.filename) == os.fsdecode(self.cwd)
            if names_cwd or exc.errno not in _NOT_RUNNABLE:
                raise
            reason = "not found" if exc.errno == errno.ENOENT else f"cannot be executed ({exc.strerror})"
            raise AgentNotFound(self.argv[0], reason) from exc
        return self

    async def __aenter__(self) -> AgentProcess:
        if self._proc is None:
            await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Kill whatever is left of the process group and reap the agent (bounded). Safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None or self._group_alive():
            self.kill()
        waiter = asyncio.ensure_future(proc.wait())  # also waits for the pipes to close
        try:
            await asyncio.wait({waiter}, timeout=_REAP_TIMEOUT)
        finally:
            waiter.cancel()
        if not waiter.done():  # a process that left the group still holds a pipe: let go of it
            transport = getattr(proc, "_transport", None)
            if transport is not None:
                transport.close()
        self._remove_cgroup()

    def _remove_cgroup(self) -> None:
        if self._cgroup is not None:
            self._cgroup.kill()
            self._cgroup.remove()

    # --------------------------------------------------------------------------------------- inspection

    @property
    def pid(self) -> int:
        """The agent's pid, which is also its process group id."""
        return self._started().pid

    @property
    def returncode(self) -> int | None:
        """The raw return code once the agent has exited (negative: the signal that ended it), else None."""
        return self._started().returncode

    # ------------------------------------------------------------------------------------------ reading

    async def lines(self) -> AsyncIterator[tuple[str, str]]:
        """Yield ``(stream, line)`` from stdout and stderr as they come, each stream in its own order.

        Lines are decoded as UTF-8 (invalid bytes become U+FFFD, NUL too) and lose their ``\\n`` / ``\\r\\n``.
        Ends when both pipes close, or, when a process the agent left behind keeps them open, once the agent
        has exited and the pipes stay silent for ``drain_timeout`` seconds. It can be iterated once.
        """
        proc = self._started()
        if self._lines_taken:
            raise RuntimeError("lines() can be iterated only once")
        self._lines_taken = True
        assert proc.stdout is not None and proc.stderr is not None
        queue: asyncio.Queue[tuple[str, list[str]] | _End] = asyncio.Queue(maxsize=_QUEUE_SIZE)
        _widen_pipe(proc)
        pumps = [
            asyncio.create_task(self._pump("stdout", proc.stdout, queue)),
            asyncio.create_task(self._pump("stderr", proc.stderr, queue)),
        ]
        getter: asyncio.Future[tuple[str, list[str]] | _End] | None = None
        open_streams = len(pumps)
        try:
            # Each pass takes one item, or waits at most _POLL while the agent runs (its exit matters because
            # asyncio's own wait() also waits for the pipes), or ends after drain_timeout once it has exited.
            while open_streams:
                if getter is None and not queue.empty():
                    item = queue.get_nowait()
                else:
                    getter = getter or asyncio.ensure_future(queue.get())
                    running = proc.returncode is None
                    done, _ = await asyncio.wait({getter}, timeout=_POLL if running else self.drain_timeout)
                    if not done:
                        if running:
                            continue
                        break
                    item, getter = getter.result(), None
                if isinstance(item, _End):
                    open_streams -= 1
                    if item.error is not None:
                        raise item.error
                    continue
                stream, read = item
                for line in read:
                    yield stream, line
        finally:
            if getter is not None:
                getter.cancel()
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(self, name: str, reader: asyncio.StreamReader, queue: asyncio.Queue) -> None:
        """Read the pipe in large chunks and queue its lines a chunk at a time (one queue item, one consumer
        wake-up per chunk rather than per line)."""
        error: BaseException | None = None
        cap = self.limits.output_bytes if self.limits else None
        lines = _LineSplitter(self.max_line_bytes)
        try:
            while chunk := await reader.read(_CHUNK):  # ends at EOF
                if read := lines.feed(chunk):
                    await queue.put((name, self._within_cap(read, cap)))
            if last := lines.end():
                await queue.put((name, self._within_cap([last], cap)))
        except Exception as exc:  # handed to the consumer, raised from lines()
            error = exc
        await queue.put(_End(name, error))

    def _within_cap(self, read: list[tuple[str, int]], cap: int | None) -> list[str]:
        """The lines to hand on; past ``output_bytes`` none (the run is ended, the pipe drained)."""
        if cap is None:
            return [line for line, _ in read]
        kept = []
        for line, size in read:
            self._output_bytes += size
            if self._output_bytes > cap:
                self._hit("output_bytes")
                continue
            kept.append(line)
        return kept

    # ---------------------------------------------------------------------------------- waiting, signals

    async def wait(self) -> int | None:
        """Wait for the agent to exit: its exit code, or None when a signal ended it.

        Unbounded by itself: bound it with ``asyncio.timeout`` or use ``run``. Unlike asyncio's
        ``Process.wait`` it does not wait for the pipes, which a process the agent left behind may hold.
        """
        code = await self._wait_exit()
        return None if code < 0 else code

    async def _wait_exit(self) -> int:
        proc = self._started()
        if proc.returncode is not None:
            return proc.returncode
        waiter = asyncio.ensure_future(proc.wait())
        try:
            while proc.returncode is None and not waiter.done():  # polls until the exit; callers bound it
                await asyncio.wait({waiter}, timeout=_POLL)
        finally:
            waiter.cancel()
        assert proc.returncode is not None
        return proc.returncode

    async def cancel(self, grace: float = DEFAULT_GRACE) -> None:
        """SIGTERM to the process group; SIGKILL to it if any of it is still alive ``grace`` seconds later.

        Returns once the group is gone, or after the SIGKILL once the agent has been reaped (bounded).
        """
        proc = self._started()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, grace)
        if self.sandboxed:  # bubblewrap dies of SIGTERM and takes the agent with it: ask the agent itself
            _signal_descendants(proc.pid, signal.SIGTERM)
        else:
            self._signal_group(signal.SIGTERM)
        resend = loop.time() + _RESEND_TERM
        while (remaining := deadline - loop.time()) > 0:  # bounded by grace
            if proc.returncode is not None and not self._group_alive():
                return
            if self.sandboxed and loop.time() >= resend:
                # A cancel right after the start can find only the sandbox's init, which ignores SIGTERM
                # (PID 1 of its namespace): the agent it was about to start gets the signal now.
                _signal_descendants(proc.pid, signal.SIGTERM)
                resend = loop.time() + _RESEND_TERM
            await asyncio.sleep(min(_POLL, remaining))
        self.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wait_exit(), _REAP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL to the whole process group, and to every process of the run's cgroup, at once."""
        self._signal_group(signal.SIGKILL)
        if self._cgroup is not None:
            self._cgroup.kill()

    def _hit(self, limit: str) -> None:
        """Record the first limit the run passed and end it (no grace: it is over its limit)."""
        if self._limit is None:  # once: the reader calls this for every line past output_bytes
            self._limit = limit
            self._limit_hit.set()
            self.kill()

    async def _watch_limits(self) -> None:
        """Returns once a limit is passed: output (from the reader) or memory and processes (the cgroup)."""
        cgroup = self._cgroup
        while not self._limit_hit.is_set():  # polls until cancelled by run()
            if cgroup is not None and (limit := cgroup.limit_hit()) is not None:
                self._hit(limit)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._limit_hit.wait(), _LIMIT_POLL)

    def _signal_group(self, sig: signal.Signals) -> None:
        proc = self._started()
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # e.g. macOS refuses a group of zombies: signal the agent alone
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    def _group_alive(self) -> bool:
        if self._cgroup is not None and self._cgroup.pids():
            return True
        try:
            os.killpg(self._started().pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    # ------------------------------------------------------------------------------------ the whole run

    async def run(
        self,
        on_line: Callable[[str, str], Awaitable[object]],
        *,
        time_limit: float | None = None,
        cancel_event: asyncio.Event | None = None,
        grace: float = DEFAULT_GRACE,
    ) -> RunOutcome:
        """Feed every line to ``on_line`` until the agent ends, then report how it ended.

        When ``time_limit`` seconds pass (``runner.timeout``) or ``cancel_event`` is set (``cancelTask``), the
        group gets ``cancel(grace)`` and the lines printed meanwhile are still delivered. The result says
        ``timed_out`` or ``cancelled``; ``exit_code`` is what the agent returned, None when a signal ended it.
        (The parameter is not called ``timeout``: reaching it does not abort the call, it cancels the agent.)
        """
        proc = self._started()
        reasons: list[str] = []
        watchdog = asyncio.create_task(self._watchdog(time_limit, cancel_event, grace, reasons))
        try:
            async with contextlib.aclosing(self.lines()) as lines:
                async for stream, line in lines:
                    await on_line(stream, line)
            exited = asyncio.ensure_future(self._wait_exit())
            try:
                await asyncio.wait({exited, watchdog}, return_when=asyncio.FIRST_COMPLETED)
                if reasons:
                    await watchdog  # bounded: cancel() takes at most grace + _REAP_TIMEOUT
                if not exited.done():
                    await asyncio.wait({exited}, timeout=_REAP_TIMEOUT)
            finally:
                exited.cancel()
        finally:
            if not watchdog.done():
                watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watchdog
        code = proc.returncode
        if self._limit is None and self._cgroup is not None:
            self._limit = self._cgroup.limit_hit()
        if self._limit is None and self.limits is not None:
            self._limit = limit_from_exit(code)
        return RunOutcome(
            exit_code=None if code is None or code < 0 else code,
            timed_out=reasons == ["timeout"],
            cancelled=reasons == ["cancel"],
            limit=self._limit,
        )

    async def _watchdog(
        self, time_limit: float | None, cancel_event: asyncio.Event | None, grace: float, reasons: list[str]
    ) -> None:
        proc = self._started()
        loop = asyncio.get_running_loop()
        requested = asyncio.ensure_future(cancel_event.wait() if cancel_event else loop.create_future())
        over_limit = asyncio.ensure_future(self._watch_limits())
        try:
            done, _ = await asyncio.wait(
                {requested, over_limit}, timeout=time_limit, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            requested.cancel()
            over_limit.cancel()
        if over_limit in done:  # _hit has killed it already
            reasons.append("limit")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_exit(), _REAP_TIMEOUT)
            return
        if proc.returncode is not None:  # it ended on its own; only leftovers may still hold the pipes
            self.kill()
            return
        reasons.append("cancel" if done else "timeout")
        await self.cancel(grace)

    def _started(self) -> asyncio.subprocess.Process:
        if self._proc is None:
            raise RuntimeError("the agent process has not been started")
        return self._proc


def _signal_descendants(pid: int, sig: signal.Signals) -> None:
    """Signal every descendant of ``pid`` (not ``pid`` itself), found through /proc/<pid>/task/*/children.

    Inside a PID namespace the orphans of a ``setsid`` are re-parented to the namespace's init, itself a
    descendant, so this reaches them too. (The init ignores signals it has no handler for.)
    """
    seen: set[int] = set()
    todo = [pid]
    while todo and len(seen) < _MAX_DESCENDANTS:  # bounded: a fork bomb cannot keep this going
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.scandir(f"/proc/{parent}/task"):
                with open(f"{task.path}/children") as f:
                    children = {int(child) for child in f.read().split()} - seen
                seen |= children
                todo.extend(children)
    for child in seen:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, sig)


def _widen_pipe(proc: asyncio.subprocess.Process) -> None:
    """Ask for a larger stdout pipe where the OS allows it (best effort: the default works, only slower)."""
    transport = getattr(proc, "_transport", None)
    pipe = transport.get_pipe_transport(1) if transport is not None else None
    handle = pipe.get_extra_info("pipe") if pipe is not None else None
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if handle is None or set_size is None:
        return
    with contextlib.suppress(OSError, ValueError):
        fcntl.fcntl(handle.fileno(), set_size, _PIPE_BYTES)


class _LineSplitter:
    """Cuts what is read from a pipe into ``(line, bytes it took)``, as ``StreamReader.readuntil`` would with
    ``limit=max_line_bytes``: a line keeps its first ``limit`` bytes and ends with `` …[truncated N bytes]``
    when it is longer; the bytes beyond are counted, never held."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._partial = b""  # the unfinished line, at most ``limit`` bytes
        self._head: bytes | None = None  # a line longer than ``limit``: its first ``limit`` bytes
        self._beyond = 0  # and how many bytes came after them so far
        self._cr = False  # whether its last byte so far is a \r

    def feed(self, chunk: bytes) -> list[tuple[str, int]]:
        parts = chunk.split(b"\n")
        rest = parts.pop()  # after the last newline: the start of the next line
        out = []
        limit = self.limit
        for n, raw in enumerate(parts):
            if n == 0 and (self._partial or self._head is not None):
                self._add(raw)
                out.append(self._finish(newline=True))
            elif len(raw) <= limit:
                out.append((_decode(raw.removesuffix(b"\r")), len(raw) + 1))
            else:
                self._add(raw)
                out.append(self._finish(newline=True))
        if rest:
            self._add(rest)
        return out

    def end(self) -> tuple[str, int] | None:
        """The last line, when the output did not end with a newline."""
        if not self._partial and self._head is None:
            return None
        return self._finish(newline=False)

    def _add(self, piece: bytes) -> None:
        if self._head is not None:
            self._beyond += len(piece)
            self._cr = piece.endswith(b"\r") if piece else self._cr
            return
        partial = self._partial + piece
        if len(partial) <= self.limit:
            self._partial = partial
            return
        self._head, self._beyond, self._partial = partial[: self.limit], len(partial) - self.limit, b""
        self._cr = partial.endswith(b"\r")

    def _finish(self, *, newline: bool) -> tuple[str, int]:
        head = self._head
        if head is None:
            raw, self._partial = self._partial, b""
            return _decode(raw.removesuffix(b"\r")), len(raw) + newline
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(head, final=False)  # holds back a character cut in half
        # readuntil's reader drops the \r before the newline of a long line, not at the end of the output
        dropped = len(decoder.getstate()[0]) + self._beyond - (1 if newline and self._cr else 0)
        size = len(head) + self._beyond + newline
        self._head, self._beyond, self._cr = None, 0, False
        return text.replace("\x00", "\ufffd") + f" …[truncated {dropped} bytes]", size


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
