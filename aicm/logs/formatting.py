"""JSON and text formatters: a fixed head (timestamp, level, event, the request fields), then the rest."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from aicm.logs.records import default_event, record_extras, record_message
from aicm.logs.redaction import DEFAULT_REDACTOR, Redactor

# Request fields in the order they follow timestamp, level and event.
_HEAD = ("ip", "request_id", "method", "path", "status", "duration_ms", "user_id")


def _timestamp(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Formatter(logging.Formatter):
    def __init__(self, redactor: Redactor = DEFAULT_REDACTOR) -> None:
        super().__init__()
        self.redactor = redactor

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """timestamp, level, event, the request head, message, logger, extras, then error and stack."""
        extras = record_extras(record)
        event = extras.pop("event", None)
        payload: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname.lower(),
            "event": str(event) if event else default_event(record),
        }
        payload |= {key: extras.pop(key) for key in _HEAD if key in extras}
        payload["message"] = record_message(record).rstrip()
        payload["logger"] = record.name
        for key, value in extras.items():
            payload.setdefault(key, value)
        if record.exc_info and record.exc_info[0] is not None:
            kind, exc = record.exc_info[0], record.exc_info[1]
            text = str(exc) if exc is not None else ""
            payload.setdefault("error", f"{kind.__name__}: {text}" if text else kind.__name__)
            payload.setdefault("stack", self.formatException(record.exc_info).rstrip())
        if record.stack_info:
            payload.setdefault("stack", self.formatStack(record.stack_info))
        redacted: dict[str, Any] = self.redactor.redact(payload)
        return redacted


class JSONFormatter(_Formatter):
    """One JSON object per line (CONTRACT §6).

    >>> record = logging.LogRecord("aicm", logging.INFO, __file__, 1, "hello", None, None)
    >>> JSONFormatter().format(record)  # doctest: +ELLIPSIS
    '{"timestamp":"...Z", "level":"info", "event":"hello", "message":"hello", "logger":"aicm"}'
    """

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record), ensure_ascii=False, separators=(", ", ":"), default=str)


class TextFormatter(_Formatter):
    """``logging.format: text``: ``<timestamp> <LEVEL> <event> key=value … [logger] message`` (+ stack)."""

    def format(self, record: logging.LogRecord) -> str:
        payload = self.fields(record)
        head = [payload.pop("timestamp"), payload.pop("level").upper(), payload.pop("event")]
        message, logger, stack = payload.pop("message"), payload.pop("logger"), payload.pop("stack", None)
        pairs = [f"{key}={self._value(value)}" for key, value in payload.items()]
        line = " ".join([*head, *pairs, f"[{logger}]", message])
        return f"{line}\n{stack}" if stack else line

    @staticmethod
    def _value(value: Any) -> str:
        if isinstance(value, str) and value and not any(c.isspace() or c in '"=' for c in value):
            return value
        return json.dumps(value, ensure_ascii=False, default=str)
