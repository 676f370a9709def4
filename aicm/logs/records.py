"""What a log record carries: its event name, its message, and the fields that came with ``extra=``."""

from __future__ import annotations

import logging
import re
from typing import Any

SECURITY_EVENTS = frozenset(
    {
        "auth_failed",
        "auth_succeeded",
        "rate_limit_exceeded",
        "token_reuse_detected",
        "permission_denied",
        "account_locked",
    }
)
_RESERVED_EVENTS = SECURITY_EVENTS | {"http_request"}

# Attributes every LogRecord has; anything else on a record came from ``extra=`` (or a filter).
RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
# uvicorn's ANSI-coloured copy of its message: noise in a log line.
_DROPPED_EXTRAS = frozenset({"color_message"})

_PLACEHOLDER = re.compile(r"%(?:\(\w+\))?[-#0 +]*(?:\d+|\*)?(?:\.\d+)?[a-zA-Z%]|\{[^{}]*\}")
_CUT = re.compile(r"[:(\[{\n.;,!?\"'=]")
_NON_WORD = re.compile(r"[^a-z0-9]+")


def default_event(record: logging.LogRecord) -> str:
    """A snake_case event from the message template ("Started server process [%d]" → started_server_process),
    else from the logger name (``uvicorn.access`` → ``uvicorn_access``). Names only aicm emits on purpose
    (``http_request`` and the security events) get the logger name in front (``httpx_http_request``)."""
    template = record.msg if isinstance(record.msg, str) else ""
    words = _NON_WORD.sub("_", _CUT.split(_PLACEHOLDER.sub("", template), maxsplit=1)[0].lower()).strip("_")
    event = "_".join(words.split("_")[:8])[:64].strip("_")
    logger = _NON_WORD.sub("_", record.name.lower()).strip("_")
    if event in _RESERVED_EVENTS:  # httpx's "HTTP Request: …" must not pass for an access line
        return f"{logger}_{event}".strip("_")
    return event or logger or "log"


def record_message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # bad %-args: keep what was meant rather than raising from a log call
        return f"{record.msg!s} {record.args!r}"


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in RECORD_ATTRS and k not in _DROPPED_EXTRAS and not k.startswith("_")
    }
