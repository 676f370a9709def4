"""Output: rich for a person at a terminal, plain lines when stdout is not a tty, JSON with ``--json``.

Plain output is for scripts: lists are tab-separated rows without a header, a created thing prints its ID,
log lines print their ``text`` exactly. Everything meant only for a person (notes, progress, summaries) goes
to stderr, so stdout stays clean to pipe.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import IO, Any

from rich.console import Console
from rich.status import Status
from rich.table import Table
from rich.text import Text

# How each kind of log line looks at a terminal (stream first: stderr and server lines stand out).
LINE_STYLES = {"stderr": "red", "system": "yellow"}
KIND_STYLES = {"assistant": "", "user": "dim", "system": "dim italic", "result": "bold", "text": ""}
STATUS_STYLES = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "TIMED_OUT": "red",
    "CANCELLED": "yellow",
    "RUNNING": "cyan",
    "PENDING": "blue",
    "WAITING_FOR_APPROVAL": "magenta",
}


class Output:
    def __init__(self, *, json_mode: bool = False, stdout: IO[str] | None = None) -> None:
        self.stdout = stdout or sys.stdout
        self.json = json_mode
        self.rich = not json_mode and self.stdout.isatty()
        self.console = Console(file=self.stdout, highlight=False, soft_wrap=not self.rich)
        self.err = Console(file=sys.stderr, highlight=False, soft_wrap=True)

    # ---------------------------------------------------------------- data
    def emit_json(self, value: Any) -> None:
        self.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
        self.stdout.flush()

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], items: Any) -> None:
        """A list: a rich table, tab-separated rows (no header), or ``items`` as JSON."""
        if self.json:
            self.emit_json(items)
        elif self.rich:
            table = Table(*headers, box=None, header_style="bold", pad_edge=False)
            for row in rows:
                table.add_row(*(cell if isinstance(cell, Text) else Text(_cell(cell)) for cell in row))
            self.console.print(table if rows else Text("(none)", style="dim"))
        else:
            for row in rows:
                self.plain("\t".join(_cell(cell.plain if isinstance(cell, Text) else cell) for cell in row))

    def done(self, message: str, *, value: str, item: Any) -> None:
        """A mutation's result: a ✓ line for a person, ``value`` (an ID, a status) for a script."""
        if self.json:
            self.emit_json(item)
        elif self.rich:
            self.console.print(Text("✓ ", style="green") + Text(message))
        else:
            self.plain(value)

    def plain(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    # ---------------------------------------------------------------- for a person, on stderr
    def note(self, message: str, style: str = "dim") -> None:
        if self.rich:
            self.console.print(Text(message, style=style))
        else:
            sys.stderr.write(message + "\n")
            sys.stderr.flush()

    def error(self, message: str) -> None:
        self.err.print(Text("error: ", style="bold red") + Text(message), highlight=False)

    # ---------------------------------------------------------------- task logs
    def log_line(self, line: dict[str, Any]) -> None:
        if self.json:
            self.emit_json(line)
            return
        text = line_text(line)
        if not self.rich:
            self.plain(text)
            return
        style = LINE_STYLES.get(line.get("stream", "")) or KIND_STYLES.get(line.get("kind", ""), "")
        if line.get("kind") == "assistant" and _uses_tool(line):
            style = "cyan"
        self.console.print(Text(text, style=style))

    def progress(self) -> Progress:
        return Progress(self)

    def task_summary(self, task: dict[str, Any]) -> None:
        """How a followed task ended, with its cost."""
        if self.json:
            self.emit_json({"task": task})
            return
        status = task["status"]
        parts = [f"task {task['id']} {status}"]
        took = duration(task.get("startedAt"), task.get("finishedAt"))
        if took:
            parts.append(f"in {took}")
        if task.get("exitCode") is not None:
            parts.append(f"exit code {task['exitCode']}")
        parts.append(cost(task.get("costUsd")))
        summary = " · ".join(parts)
        if task.get("error"):
            summary += f"\n{task['error']}"
        if self.rich:
            mark = "✓ " if status == "SUCCEEDED" else "✗ "
            self.console.print(Text(mark + summary, style=STATUS_STYLES.get(status, "bold")))
        else:
            sys.stderr.write(summary + "\n")
            sys.stderr.flush()


class Progress:
    """The line under the log while the task waits or runs: ``queued 3 s``, ``running for 12 s``…

    At a terminal it is a rich status line that keeps ticking; elsewhere it shows nothing."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.task: dict[str, Any] = {}
        self._status: Status | None = None
        self._began = time.monotonic()

    def __enter__(self) -> Progress:
        if self.out.rich:
            self._status = Status(self, console=self.out.console, spinner="dots")
            self._status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pause()

    def update(self, task: dict[str, Any]) -> None:
        self.task = task

    def pause(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def resume(self) -> None:
        self.__enter__()

    def __rich__(self) -> Text:
        return Text(self.describe(), style="dim")

    def describe(self, now: datetime | None = None) -> str:
        status = self.task.get("status")
        if status == "PENDING":
            return f"queued {since(self.task.get('createdAt'), now) or ''}".strip()
        if status == "RUNNING":
            return f"running for {since(self.task.get('startedAt'), now) or '0 s'}"
        if status == "WAITING_FOR_APPROVAL":
            return "waiting for approval (aicli approvals)"
        if status:
            return status.lower().replace("_", " ")
        return f"connecting… {int(time.monotonic() - self._began)} s"


# -------------------------------------------------------------------- formatting helpers


def line_text(line: dict[str, Any]) -> str:
    if isinstance(line.get("text"), str):
        return line["text"]
    return json.dumps(line["data"], ensure_ascii=False) if line.get("data") is not None else ""


def cost(value: float | None) -> str:
    return "cost unknown" if value is None else f"cost ${value:.4f}"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def since(start: str | None, now: datetime | None = None) -> str | None:
    began = parse_time(start)
    if began is None:
        return None
    current = now or datetime.now(began.tzinfo)
    return seconds((current - began).total_seconds())


def duration(start: str | None, end: str | None) -> str | None:
    began, ended = parse_time(start), parse_time(end)
    if began is None or ended is None:
        return None
    return seconds((ended - began).total_seconds())


def seconds(value: float) -> str:
    value = max(0, int(value))
    if value < 60:
        return f"{value} s"
    minutes, secs = divmod(value, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def short_time(value: str | None) -> str:
    moment = parse_time(value)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M") if moment else ""


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return " ".join(str(value).split())  # one line per row, and no tab inside a cell


def _uses_tool(line: dict[str, Any]) -> bool:
    data = line.get("data")
    message = data.get("message") if isinstance(data, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    return isinstance(content, list) and any(
        isinstance(block, dict) and block.get("type") == "tool_use" for block in content
    )
