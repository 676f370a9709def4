"""One agent output line → one ``TaskLogLine`` (CONTRACT §5, §7), and what a whole run said about itself.

The Claude CLI's ``--output-format stream-json --verbose`` prints one JSON object per line: ``system`` (init,
first), ``assistant`` / ``user`` turns, and ``result`` (last). ``parse_line`` turns each stdout line into
``kind`` (the object's ``type``, else ``text``), a readable ``text`` and ``data`` (the object, else None);
``RunSummary`` picks out the session id, the cost and the outcome.

>>> summary = RunSummary()
>>> for raw in ['{"type":"system","subtype":"init","session_id":"s-1","model":"m","cwd":"/w"}',
...             '{"type":"result","is_error":false,"result":"Done.","total_cost_usd":0.5}']:
...     summary.feed(parse_line("stdout", raw))
>>> summary.session_id, summary.cost_usd, summary.succeeded(0)
('s-1', 0.5, True)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from aicm.runner.command import SESSION_ID_PATTERN

__all__ = ["ParsedLine", "RunSummary", "parse_line", "summarize_tool_input"]

MAX_KIND_CHARS = 64
TOOL_INPUT_CHARS = 200
TOOL_RESULT_CHARS = 500
TOOL_RESULT_LINES = 5
THINKING_CHARS = 200

# The input key that best says what a tool call does, for the common Claude Code tools.
_TOOL_INPUT_KEYS = {
    "Bash": ("command",),
    "BashOutput": ("bash_id",),
    "KillShell": ("shell_id",),
    "Read": ("file_path",),
    "Write": ("file_path",),
    "Edit": ("file_path",),
    "MultiEdit": ("file_path",),
    "NotebookEdit": ("notebook_path",),
    "Glob": ("pattern", "path"),
    "Grep": ("pattern", "path"),
    "LS": ("path",),
    "WebFetch": ("url",),
    "WebSearch": ("query",),
    "Task": ("description",),
}
_GENERIC_INPUT_KEYS = ("command", "file_path", "path", "pattern", "url", "query", "description", "prompt")


@dataclass(frozen=True, slots=True)
class ParsedLine:
    """One output line as the task log stores it: ``TaskLogLine { stream kind text data }``."""

    stream: str  # "stdout" | "stderr"
    kind: str  # the JSON object's "type", else "text"
    text: str  # readable rendering; the raw line for non-JSON lines and for stderr
    data: dict[str, Any] | None  # the parsed object, else None
    # ``data`` as JSON text when the line itself is that (storable as printed), so nobody encodes it again
    json: str | None = field(default=None, compare=False)


def parse_line(stream: str, raw: str) -> ParsedLine:
    """Parse one line of agent output (without its newline).

    Only stdout is parsed; a stderr line is always ``kind="text"`` with ``data=None``. JSON that is not an
    object (an array, a number, a string) counts as text. NUL characters and unpaired surrogates, which
    PostgreSQL cannot store, are replaced by U+FFFD in ``text`` and inside ``data``.
    """
    raw = raw.replace("\x00", "\ufffd")
    data, as_is = _load_object(raw) if stream == "stdout" else (None, False)
    if data is None:
        return ParsedLine(stream, "text", raw, None)
    text_json = raw if as_is else None
    kind = data.get("type")
    if not isinstance(kind, str) or not kind:
        return ParsedLine(stream, "text", raw, data, text_json)
    kind = kind[:MAX_KIND_CHARS]
    return ParsedLine(stream, kind, _render(kind, data, raw), data, text_json)


@dataclass
class RunSummary:
    """What the stream-json lines of one run said: feed it every ``ParsedLine`` in order.

    ``session_id`` comes from the ``system``/``init`` line (else from any later line carrying one), for
    ``--resume`` follow-ups; ``cost_usd`` from the ``result`` line's ``total_cost_usd`` (or ``cost_usd``);
    ``is_error`` is true when the ``result`` line says ``is_error: true``.
    """

    session_id: str | None = None
    cost_usd: float | None = None
    is_error: bool = False
    result_text: str | None = None
    has_result: bool = False

    def feed(self, parsed: ParsedLine) -> None:
        data = parsed.data
        if parsed.stream != "stdout" or data is None:
            return
        session_id = data.get("session_id")
        valid_session = isinstance(session_id, str) and SESSION_ID_PATTERN.fullmatch(session_id)
        is_init = parsed.kind == "system" and data.get("subtype") == "init"
        if valid_session and (is_init or self.session_id is None):
            self.session_id = session_id
        if parsed.kind != "result":
            return
        self.has_result = True
        self.is_error = data.get("is_error") is True
        result = data.get("result")
        self.result_text = result if isinstance(result, str) else None
        for key in ("total_cost_usd", "cost_usd"):
            cost = data.get(key)
            if _is_number(cost) and math.isfinite(cost) and cost >= 0:
                self.cost_usd = float(cost)
                break

    def succeeded(self, exit_code: int | None) -> bool:
        """SUCCEEDED rather than FAILED: exit code 0 and no ``result`` line with ``is_error: true``."""
        return exit_code == 0 and not self.is_error


def summarize_tool_input(name: str, tool_input: Any) -> str:
    """A one-line summary of a tool call: ``Bash: pytest -q``, ``Edit: billing/invoice.py``."""
    summary = ""
    if isinstance(tool_input, dict):
        if name == "TodoWrite" and isinstance(tool_input.get("todos"), list):
            count = len(tool_input["todos"])
            summary = f"{count} item" + ("" if count == 1 else "s")
        else:
            keys = _TOOL_INPUT_KEYS.get(name, _GENERIC_INPUT_KEYS)
            values = [tool_input[k] for k in keys if isinstance(tool_input.get(k), str) and tool_input[k]]
            summary = " in ".join(values[:2]) if name in ("Glob", "Grep") else (values[0] if values else "")
            if not summary and tool_input:
                summary = json.dumps(tool_input, ensure_ascii=False, separators=(",", ":"))
    elif tool_input is not None:
        summary = str(tool_input)
    summary = _shorten(summary, TOOL_INPUT_CHARS, max_lines=1)
    return f"{name}: {summary}" if summary else name


# --------------------------------------------------------------------------- helpers


_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19  # orjson reads integers past 64 bits as floats: such lines go to the json module


def _load_object(raw: str) -> tuple[dict[str, Any] | None, bool]:
    """The line's object, and whether the line as printed is storable JSON text of it."""
    if not raw.lstrip().startswith("{"):
        return None, False
    encoded = raw.encode(errors="surrogatepass")  # a lone surrogate then fails orjson, not encode()
    data: Any = None
    if _LONG_NUMBER not in encoded.translate(_DIGITS):
        try:  # ~4x faster than json.loads; NaN and Infinity are refused as below
            data = orjson.loads(encoded)
        except orjson.JSONDecodeError:
            data = None  # e.g. an escaped unpaired surrogate: json.loads reads it, _storable fixes it
    as_is = data is not None
    if data is None:
        try:
            data = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            return None, False
    if not isinstance(data, dict):
        return None, False
    if "\\u" in raw:  # only \u escapes can smuggle in NUL or unpaired surrogates
        return _storable(data), False
    return data, as_is


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _storable(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with NUL and unpaired surrogates replaced by U+FFFD in every key and string, in place."""
    stack: list[dict[str, Any] | list[Any]] = [data]
    while stack:  # one pass over the nodes of one (size-bounded) line
        node = stack.pop()
        if isinstance(node, dict):
            if any(_unstorable(key) for key in node):
                fixed = {_fix(key): value for key, value in node.items()}
                node.clear()
                node.update(fixed)
            pairs: list[tuple[Any, Any]] = list(node.items())
        else:
            pairs = list(enumerate(node))
        for key, value in pairs:
            if isinstance(value, str):
                if _unstorable(value):
                    node[key] = _fix(value)
            elif isinstance(value, dict | list):
                stack.append(value)
    return data


def _unstorable(text: str) -> bool:
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # json.loads already joined the valid surrogate pairs; these are lone ones
        return True
    return False


def _fix(text: str) -> str:
    return "".join("\ufffd" if char == "\x00" or "\ud800" <= char <= "\udfff" else char for char in text)


def _render(kind: str, data: dict[str, Any], raw: str) -> str:
    if kind == "system":
        subtype = data.get("subtype")
        if subtype == "init":
            details = [f"{key} {data[key]}" for key in ("model", "cwd") if isinstance(data.get(key), str)]
            return "session started" + (f" ({', '.join(details)})" if details else "")
        if subtype == "api_retry":
            return _render_retry(data)
        message = next((data[k] for k in ("message", "text") if isinstance(data.get(k), str)), "")
        label = f"system: {subtype}" if isinstance(subtype, str) and subtype else "system"
        return f"{label}: {message}" if message else label
    if kind in ("assistant", "user"):
        message = data.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "\n".join(part for part in map(_render_block, content) if part)
        return raw
    if kind == "result":
        result = data.get("result")
        if isinstance(result, str) and result:
            return result
        subtype = data.get("subtype") if isinstance(data.get("subtype"), str) else "result"
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            return f"{subtype}: " + "; ".join(str(error) for error in errors[:5])
        return subtype
    return raw


def _render_retry(data: dict[str, Any]) -> str:
    """``system``/``api_retry``: the CLI retries a failed API request. Field names vary between CLI versions,
    so the usual spellings are read: ``attempt``, ``max_retries``, ``retry_delay_ms`` (or ``delay_ms``,
    ``retry_in_ms``, ``delay`` in seconds), ``error`` (text, or an object with ``type``/``message``) and
    ``error_status``. → ``API request failed (529 overloaded_error: Overloaded); retry 2 of 10 in 4.0 s``."""
    error = data.get("error") or data.get("message")
    if isinstance(error, dict):
        inner = error.get("error") if isinstance(error.get("error"), dict) else error
        parts = [str(inner[k]) for k in ("type", "message") if isinstance(inner.get(k), str) and inner[k]]
        error = ": ".join(parts)
    status = next((data[k] for k in ("error_status", "status") if _is_number(data.get(k))), None)
    reason = " ".join(str(part) for part in (status, error) if part not in (None, ""))
    text = "API request failed" + (f" ({_shorten(reason, 300, 1)})" if reason else "")
    attempt, limit = data.get("attempt"), data.get("max_retries")
    retry = "retry"
    if _is_number(attempt):
        retry += f" {attempt}" + (f" of {limit}" if _is_number(limit) else "")
    delays = ("retry_delay_ms", "delay_ms", "retry_in_ms")
    delay_ms = next((data[k] for k in delays if _is_number(data.get(k))), None)
    if delay_ms is None and _is_number(data.get("delay")):
        delay_ms = data["delay"] * 1000
    if delay_ms is not None:
        retry += f" in {delay_ms / 1000:.1f} s"
    return f"{text}; {retry}"


def _render_block(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return ""
    block_type = block.get("type")
    if block_type == "text":
        return block.get("text") if isinstance(block.get("text"), str) else ""
    if block_type == "tool_use":
        name = block.get("name") if isinstance(block.get("name"), str) else "tool"
        return summarize_tool_input(name, block.get("input"))
    if block_type == "tool_result":
        label = "Tool error" if block.get("is_error") is True else "Tool result"
        body = _shorten(_content_text(block.get("content")), TOOL_RESULT_CHARS, max_lines=TOOL_RESULT_LINES)
        return f"{label}: {body}" if body else label
    if block_type in ("thinking", "redacted_thinking"):
        thinking = block.get("thinking")
        if not isinstance(thinking, str) or not thinking.strip():
            return "Thinking"
        return f"Thinking: {_shorten(thinking, THINKING_CHARS, max_lines=1)}"
    return f"[{block_type}]" if isinstance(block_type, str) else ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for item in content:
            if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
                parts.append(item["text"])
            elif isinstance(item, dict) and isinstance(item.get("type"), str):
                parts.append(f"[{item['type']}]")
            elif isinstance(item, str):
                parts.append(item)
        return "\n".join(parts)
    return ""


def _shorten(text: str, max_chars: int, max_lines: int) -> str:
    lines = text.strip().splitlines()
    short = "\n".join(lines[:max_lines])
    cut = len(lines) > max_lines
    if len(short) > max_chars:
        short, cut = short[:max_chars].rstrip(), True
    return short + " …" if cut else short
