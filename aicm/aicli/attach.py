"""``run --follow`` and ``logs --follow``: print a task's log as it comes, a progress line under it, the
outcome and cost at the end; exit codes a script can use. Ctrl-C asks whether to cancel the task or detach."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

from aicm.aicli.api import Api
from aicm.aicli.errors import CliError
from aicm.aicli.follow import TASK_FIELDS, LogFollower
from aicm.aicli.render import Output

EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "TIMED_OUT": 1, "CANCELLED": 130}
INTERRUPTED = 130
FINAL = f"query($id: ID!) {{ task(id: $id) {{ {TASK_FIELDS} }} }}"
CANCEL = "mutation($id: ID!) { cancelTask(id: $id) { id status } }"
APPROVALS = "query($id: ID!) { task(id: $id) { approvals { id toolName input status } } }"
HINT_WIDTH = 100


async def attach(api: Api, out: Output, task_id: str, *, after_seq: int = 0) -> int:
    """Follow the task until it ends (its exit code) or the user detaches (130)."""
    progress = out.progress()
    approvals = _Approvals(api, out, task_id)

    def on_task(task: dict[str, Any]) -> None:
        progress.update(task)
        approvals.status(task["status"])

    follower = LogFollower(
        api,
        task_id,
        after_seq=after_seq,
        on_line=out.log_line,
        on_task=on_task,
        on_reconnect=lambda why: out.note(why),
    )
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    cancelled = False
    try:
        with progress:
            following = asyncio.ensure_future(follower.run())
            while True:
                waiting = asyncio.ensure_future(interrupted.wait())
                await asyncio.wait({following, waiting}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                if following.done():
                    following.result()
                    break
                interrupted.clear()
                progress.pause()
                if not cancelled and _ask_cancel(out, task_id, loop):
                    await api.execute(CANCEL, {"id": task_id})
                    cancelled = True
                    out.note("cancelling the task; Ctrl-C again to stop waiting", style="yellow")
                    loop.add_signal_handler(signal.SIGINT, interrupted.set)
                    progress.resume()
                    continue
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await following
                out.note(f"detached; the task goes on. Follow it again: aicli logs {task_id} --follow")
                return INTERRUPTED
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    task = (await api.execute(FINAL, {"id": task_id}))["task"]
    out.task_summary(task)
    return exit_code(task)


class _Approvals:
    """When the task starts waiting for approval, say which tool call and how to decide it."""

    def __init__(self, api: Api, out: Output, task_id: str) -> None:
        self.api, self.out, self.task_id = api, out, task_id
        self.announced: set[str] = set()
        self._pending: set[asyncio.Future[None]] = set()

    def status(self, status: str) -> None:
        if status == "WAITING_FOR_APPROVAL" and not self.out.json:
            future = asyncio.ensure_future(self._announce())
            self._pending.add(future)
            future.add_done_callback(self._pending.discard)

    async def _announce(self) -> None:
        try:
            task = (await self.api.execute(APPROVALS, {"id": self.task_id}))["task"]
        except CliError:
            return  # only a hint: the progress line says it waits either way
        for request in task["approvals"]:
            if request["status"] == "PENDING" and request["id"] not in self.announced:
                self.announced.add(request["id"])
                what = f"{request['toolName']} {json.dumps(request['input'], ensure_ascii=False)}"
                if len(what) > HINT_WIDTH:
                    what = what[: HINT_WIDTH - 1] + "…"
                self.out.note(
                    f"approval needed: {what}; decide with aicli approve {request['id']} "
                    f"(or aicli deny {request['id']} --reason …)",
                    style="magenta",
                )


def exit_code(task: dict[str, Any]) -> int:
    return EXIT_CODES.get(task["status"], 1)


def _ask_cancel(out: Output, task_id: str, loop: asyncio.AbstractEventLoop) -> bool:
    """Ask at the terminal; without one (a script), Ctrl-C only detaches. A second Ctrl-C detaches."""
    loop.remove_signal_handler(signal.SIGINT)  # back to KeyboardInterrupt while we ask
    if not sys.stdin.isatty():
        return False
    try:
        answer = input(f"\nCancel task {task_id} on the server, or detach and let it run? [c]ancel/[D]etach ")
    except (KeyboardInterrupt, EOFError):
        return False
    return answer.strip().lower() in ("c", "cancel")
