"""A stand-in for the Claude Code CLI that prints realistic ``stream-json``, to try the whole flow without it.

Configure it as the runner command (the interpreter must be the one aicm is installed in)::

    runner:
      command: ["python", "-m", "aicm.runner.demo_agent", "-p", "{prompt}", "--output-format", "stream-json",
                "--verbose"]
      env: {AICM_DEMO_DELAY: "0.05"}   # seconds between lines; runner.env is how it reaches the agent

It accepts the Claude flags the server passes (``-p``, ``--output-format``, ``--verbose``, ``--resume ID``,
``--max-budget-usd USD``, ``--permission-mode``, ``--mcp-config``, ``--permission-prompt-tool``) and ignores
the others. It lists the workspace (the task's git worktree) and appends one line for the prompt to
``NOTES_FILE`` there, so every demo task has a real diff on its branch.

Like Claude Code, it asks before that edit when it was given an MCP config and a permission prompt tool and
its permission mode is neither ``bypassPermissions`` nor ``acceptEdits``: it starts the config's MCP server
and calls the tool (``{"tool_name": "Edit", "input": …}``); a deny skips the edit and says why. So the whole
approval flow (CONTRACT §10) shows with ``config/demo.yaml``.

Like the real CLI it keeps its conversation in a session file,
``$CLAUDE_CONFIG_DIR/projects/<cwd, non-alphanumerics as ->/<session id>.jsonl`` (``~/.claude`` without
``CLAUDE_CONFIG_DIR``): ``--resume ID`` reads the earlier prompts from it and says so, and, as the real CLI
does, fails with "No conversation found with session ID" when the file is not there.

Words in the prompt steer it, for tests and demos:

``lines:N``      N extra assistant lines, printed as fast as possible
``sleep:S``      sleep S seconds before the result
``fail``         end with a result ``is_error: true`` and exit code 1
``stderr``       write a line to stderr
``spawn-child``  start a child process (sleeps 60 s) in the agent's process group, before any sleep
``cost:USD``     report ``total_cost_usd`` USD (default: a few tenths of a cent from the turns). Past
                 ``--max-budget-usd`` it stops there, like the CLI: result ``error_max_budget_usd``, the
                 budget as the cost, exit code 1. Monthly project budgets can be tried with it.

Standard library only, but for the ``mcp`` SDK (a server dependency) when it asks: it must run wherever the
server runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

MODEL = "claude-sonnet-4-5-20250929"
TOOLS = ["Task", "Bash", "Glob", "Grep", "Read", "Edit", "Write", "TodoWrite"]
VERSION = "1.0.0 (AICM demo agent)"
DEFAULT_DELAY = 0.05
MAX_EXTRA_LINES = 1_000_000
MAX_SLEEP = 3600.0
MAX_COST = 1_000_000.0
NOTES_FILE = "AICM_DEMO.md"
LISTED_ENTRIES = 20

# Claude flags that take a value; the value must not be mistaken for the prompt.
_VALUE_FLAGS = frozenset(
    {
        "--output-format",
        "--input-format",
        "--resume",
        "-r",
        "--model",
        "--fallback-model",
        "--max-turns",
        "--system-prompt",
        "--append-system-prompt",
        "--allowedTools",
        "--allowed-tools",
        "--disallowedTools",
        "--disallowed-tools",
        "--permission-mode",
        "--permission-prompt-tool",
        "--session-id",
        "--mcp-config",
        "--add-dir",
        "--settings",
        "--setting-sources",
        "--agents",
        "--max-budget-usd",
    }
)


class Options:
    def __init__(self) -> None:
        self.prompt: str | None = None
        self.output_format = "text"
        self.verbose = False
        self.resume: str | None = None
        self.version = False
        self.max_budget_usd: float | None = None
        self.permission_mode = "default"
        self.mcp_config: str | None = None
        self.permission_prompt_tool: str | None = None

    @property
    def asks_before_edits(self) -> bool:
        """Whether an edit needs approval through the permission prompt tool."""
        return (
            self.mcp_config is not None
            and self.permission_prompt_tool is not None
            and self.permission_mode not in ("bypassPermissions", "acceptEdits")
        )


def parse_args(argv: Sequence[str]) -> Options:
    """Claude-like parsing: ``-p`` is a switch and the prompt is the first positional argument."""
    options = Options()
    positional: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):  # each pass consumes one or two arguments
        arg = args[i]
        i += 1
        value: str | None = None
        if arg == "--":
            positional += args[i:]
            break
        if arg.startswith("--") and "=" in arg:
            arg, value = arg.split("=", 1)
        elif arg in _VALUE_FLAGS:
            value = args[i] if i < len(args) else ""
            i += 1
        if arg == "--output-format":
            options.output_format = value or ""
        elif arg in ("--resume", "-r"):
            options.resume = value or None
        elif arg == "--max-budget-usd":
            options.max_budget_usd = _positive(value)
        elif arg == "--permission-mode":
            options.permission_mode = value or "default"
        elif arg == "--mcp-config":
            options.mcp_config = value or None
        elif arg == "--permission-prompt-tool":
            options.permission_prompt_tool = value or None
        elif arg == "--verbose":
            options.verbose = True
        elif arg in ("--version", "-v"):
            options.version = True
        elif value is None and not (arg.startswith("-") and len(arg) > 1):
            positional.append(arg)
        # -p/--print and every other flag: accepted, nothing to do
    options.prompt = positional[0] if positional else None
    return options


def _positive(value: str | None) -> float | None:
    try:
        number = float(value or "")
    except ValueError:
        return None
    return number if 0 < number < float("inf") else None


def directives(prompt: str) -> dict[str, Any]:
    found: dict[str, Any] = {
        "lines": 0,
        "sleep": 0.0,
        "fail": False,
        "stderr": False,
        "spawn_child": False,
        "cost": None,
    }
    for word in prompt.split():
        name, _, arg = word.partition(":")
        try:
            if name == "lines" and arg:
                found["lines"] = max(0, min(int(arg), MAX_EXTRA_LINES))
            elif name == "sleep" and arg:
                found["sleep"] = max(0.0, min(float(arg), MAX_SLEEP))
            elif name == "cost" and arg:
                found["cost"] = max(0.0, min(float(arg), MAX_COST))
        except ValueError:
            continue
        if word in ("fail", "stderr"):
            found[word] = True
        elif word == "spawn-child":
            found["spawn_child"] = True
    return found


def _delay() -> float:
    try:
        return max(0.0, min(float(os.environ.get("AICM_DEMO_DELAY", DEFAULT_DELAY)), 10.0))
    except ValueError:
        return DEFAULT_DELAY


class Emitter:
    """Prints stream-json lines (or keeps quiet until the end for the text/json formats)."""

    def __init__(self, session_id: str, streaming: bool, delay: float) -> None:
        self.session_id = session_id
        self.streaming = streaming
        self.delay = delay
        self.turns = 0
        self.output_tokens = 0
        self._message = 0
        self._tool = 0

    def emit(self, obj: dict[str, Any], *, pause: bool = True) -> None:
        if not self.streaming:
            return
        sys.stdout.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
        sys.stdout.flush()
        if pause and self.delay:
            time.sleep(self.delay)

    def assistant(self, *blocks: dict[str, Any], pause: bool = True, last: bool = False) -> None:
        self._message += 1
        self.turns += 1
        tokens = 12 + sum(len(json.dumps(block)) // 4 for block in blocks)
        self.output_tokens += tokens
        uses_tool = any(block["type"] == "tool_use" for block in blocks)
        message = {
            "id": f"msg_demo_{self._message:04d}",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": list(blocks),
            "stop_reason": "tool_use" if uses_tool else ("end_turn" if last else None),
            "usage": {"input_tokens": 1200 + 150 * self._message, "output_tokens": tokens},
        }
        self.emit(self._wrap("assistant", message), pause=pause)

    def say(self, text: str, *, pause: bool = True, last: bool = False) -> None:
        self.assistant({"type": "text", "text": text}, pause=pause, last=last)

    def tool(self, name: str, tool_input: dict[str, Any], output: str, *, is_error: bool = False) -> None:
        self._tool += 1
        tool_id = f"toolu_demo_{self._tool:04d}"
        self.assistant({"type": "tool_use", "id": tool_id, "name": name, "input": tool_input})
        result = {"tool_use_id": tool_id, "type": "tool_result", "content": output, "is_error": is_error}
        self.emit(self._wrap("user", {"role": "user", "content": [result]}))

    def _wrap(self, kind: str, message: dict[str, Any]) -> dict[str, Any]:
        return {"type": kind, "message": message, "parent_tool_use_id": None, "session_id": self.session_id}


def _listing(path: str) -> str:
    try:
        entries = sorted(os.scandir(path), key=lambda entry: entry.name)
    except OSError as exc:
        return f"ls: cannot open directory '.': {exc.strerror}"
    if not entries:
        return "(the workspace is empty)"
    names = [entry.name + ("/" if entry.is_dir() else "") for entry in entries[:LISTED_ENTRIES]]
    more = len(entries) - LISTED_ENTRIES
    return "\n".join(names + ([f"... and {more} more"] if more > 0 else []))


def _note(prompt: str, *, follow_up: bool) -> str:
    return f"- {'follow-up: ' if follow_up else ''}{_short(' '.join(prompt.split()), 120)}\n"


def _add_note(cwd: str, line: str) -> str:
    """Append a line about this run to the notes file (made with a heading the first time); the line."""
    path = os.path.join(cwd, NOTES_FILE)
    new = not os.path.exists(path)
    with open(path, "a", encoding="utf-8") as notes:
        if new:
            notes.write("# Demo agent notes\n\nOne line per demo run (aicm.runner.demo_agent).\n\n")
        notes.write(line)
    return line


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def session_file(cwd: str, session_id: str) -> str:
    """Where Claude Code keeps session ``session_id`` of a run in ``cwd``."""
    config = os.environ.get("CLAUDE_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".claude")
    return os.path.join(config, "projects", re.sub(r"[^A-Za-z0-9]", "-", cwd), f"{session_id}.jsonl")


def earlier_prompts(path: str) -> list[str] | None:
    """The prompts of the session file's earlier runs; None when there is no such file."""
    try:
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return None
    return [r["message"]["content"] for r in records if r.get("type") == "user" and "message" in r]


def remember(path: str, session_id: str, cwd: str, prompt: str, answer: str) -> None:
    """Append this run's prompt and answer to the session file, as Claude Code's transcript records."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for kind, content in (("user", prompt), ("assistant", answer)):
            record = {
                "type": kind,
                "sessionId": session_id,
                "cwd": cwd,
                "uuid": str(uuid.uuid4()),
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "message": {"role": kind, "content": content},
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def no_conversation(options: Options, session_id: str) -> int:
    """What the CLI does for a ``--resume`` whose session file is not there."""
    message = f"No conversation found with session ID: {session_id}"
    if options.output_format == "stream-json":
        result = {"type": "result", "subtype": "error_during_execution", "is_error": True, "result": message}
        print(json.dumps({**result, "session_id": session_id}), flush=True)
    else:
        sys.stderr.write(message + "\n")
    return 1


async def _ask(options: Options, tool_name: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    """Call the permission prompt tool of the MCP config, as Claude Code does; its JSON answer."""
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    assert options.mcp_config is not None and options.permission_prompt_tool is not None
    with open(options.mcp_config, encoding="utf-8") as config:  # noqa: ASYNC230 - one small file, once
        servers = json.load(config)["mcpServers"]
    server_name, tool = options.permission_prompt_tool.removeprefix("mcp__").split("__", 1)
    spec = servers[server_name]
    params = StdioServerParameters(
        command=spec["command"], args=spec.get("args", []), env={**os.environ, **spec.get("env", {})}
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        arguments = {"tool_name": tool_name, "input": tool_input, "tool_use_id": f"toolu_{uuid.uuid4().hex}"}
        result = await session.call_tool(tool, arguments)
    answer = json.loads(result.content[0].text)  # type: ignore[union-attr]
    return answer if isinstance(answer, dict) else {"behavior": "deny", "message": "unreadable answer"}


def ask_permission(options: Options, tool_name: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    """The permission prompt tool's answer; a deny with the reason when it cannot be asked."""
    try:
        return asyncio.run(_ask(options, tool_name, tool_input))
    except Exception as exc:  # a demo: say what went wrong and carry on without the edit
        return {"behavior": "deny", "message": f"could not ask for permission: {exc}"}


def run(options: Options) -> int:
    prompt = (options.prompt or "").strip()
    streaming = options.output_format == "stream-json"
    started = time.monotonic()
    session_id = options.resume or str(uuid.uuid4())
    steer = directives(prompt)
    out = Emitter(session_id, streaming, _delay())
    cwd = os.getcwd()
    transcript = session_file(cwd, session_id)
    earlier = earlier_prompts(transcript) if options.resume else []
    if earlier is None:
        return no_conversation(options, session_id)

    out.emit(
        {
            "type": "system",
            "subtype": "init",
            "cwd": cwd,
            "session_id": session_id,
            "tools": TOOLS,
            "mcp_servers": [],
            "model": MODEL,
            "permissionMode": "default",
            "apiKeySource": "ANTHROPIC_API_KEY" if os.environ.get("ANTHROPIC_API_KEY") else "none",
        }
    )
    if options.resume:
        before = "; ".join(f"“{_short(p, 60)}”" for p in earlier) or "nothing yet"
        opening = f"Picking up where we left off (earlier in this session: {before})"
    else:
        opening = "I'll start by looking at the workspace"
    out.say(f"{opening}. Task: “{_short(prompt)}”")
    out.tool("Bash", {"command": "ls -A", "description": "List the workspace"}, _listing(cwd))
    keyword = next((word for word in prompt.split() if len(word) > 3 and ":" not in word), "main")
    out.tool("Grep", {"pattern": keyword, "path": "."}, f"No matches found for {keyword!r} (demo agent)")

    edit = {"file_path": NOTES_FILE, "new_string": _note(prompt, follow_up=options.resume is not None)}
    answer = {"behavior": "allow", "updatedInput": edit}
    if options.asks_before_edits:
        out.say(f"I need permission to edit {NOTES_FILE}; asking the project's approvers.")
        answer = ask_permission(options, "Edit", edit)
    if answer.get("behavior") == "allow":
        edit = answer.get("updatedInput") or edit
        _add_note(cwd, str(edit.get("new_string", "")))
        out.tool("Edit", edit, f"Appended a line to {NOTES_FILE}")
    else:
        message = answer.get("message") or "denied"
        out.tool("Edit", edit, f"Permission to use Edit was denied: {message}", is_error=True)

    if steer["stderr"]:
        sys.stderr.write("demo-agent: warning: this line was written to stderr on request\n")
        sys.stderr.flush()
    for n in range(1, steer["lines"] + 1):
        out.say(f"Working… line {n} of {steer['lines']}", pause=False)
    if steer["spawn_child"]:
        child = subprocess.Popen(  # same process group as the agent: cancel must reach it
            [sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.DEVNULL
        )
        command = {"command": "sleep 60", "description": "Start a background job", "run_in_background": True}
        out.tool("Bash", command, f"Started background process (pid {child.pid})")
    if steer["sleep"]:
        out.say(f"Waiting {steer['sleep']:g} s before finishing…")
        time.sleep(steer["sleep"])

    cost = steer["cost"]
    if cost is None:
        cost = round(0.0021 * out.turns + 0.000003 * out.output_tokens, 5)
    over_budget = options.max_budget_usd is not None and cost > options.max_budget_usd
    failed = steer["fail"] or over_budget
    if over_budget:
        cost = options.max_budget_usd
        final = f"Reached the maximum budget (${options.max_budget_usd:g}); stopped before finishing."
        subtype = "error_max_budget_usd"
    elif failed:
        final = "I could not finish: the prompt asked the demo agent to fail."
        subtype = "error_during_execution"
    else:
        final = f"Done. This was a demo run for “{_short(prompt, 80)}”; I noted it in {NOTES_FILE}."
        subtype = "success"
    out.say(final, last=True)
    remember(transcript, session_id, cwd, prompt, final)
    elapsed_ms = int((time.monotonic() - started) * 1000)
    result = {
        "type": "result",
        "subtype": subtype,
        "is_error": failed,
        "duration_ms": elapsed_ms,
        "duration_api_ms": int(elapsed_ms * 0.9),
        "num_turns": out.turns,
        "result": final,
        "session_id": session_id,
        "total_cost_usd": cost,
        "usage": {"input_tokens": 1200 * out.turns, "output_tokens": out.output_tokens},
        "permission_denials": [],
    }
    if streaming:
        out.emit(result, pause=False)
    elif options.output_format == "json":
        print(json.dumps(result, ensure_ascii=False), flush=True)
    else:
        print(final, flush=True)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    if options.version:
        print(VERSION)
        return 0
    if not options.prompt or not options.prompt.strip():
        sys.stderr.write("Error: Input must be provided either through stdin or as a prompt argument\n")
        return 1
    if options.output_format not in ("text", "json", "stream-json"):
        sys.stderr.write(f"Error: Invalid output format: {options.output_format}\n")
        return 1
    if options.output_format == "stream-json" and not options.verbose:
        sys.stderr.write("Error: When using --print, --output-format=stream-json requires --verbose\n")
        return 1
    try:
        return run(options)
    except BrokenPipeError:  # the reader went away: nobody left to tell
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(encoding="utf-8")  # type: ignore[attr-defined]
    sys.exit(main())
