"""Redaction: no password, token or secret reaches a log line (CONTRACT §6)."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from aicm.logs.records import default_event, record_extras, record_message

REDACTED = "[REDACTED]"
_REDACTED_MARK = "_aicm_redacted"
_MAX_DEPTH = 8


_SENSITIVE = r"passw(?:or)?d|secret|token|authorization|cookie|api[_-]?key|refresh|private[_-]?key"
_SENSITIVE_KEY = re.compile(_SENSITIVE, re.IGNORECASE)
# key=value, key: value, "key": "value", 'key': 'value' inside free text (query strings, reprs, JSON dumps).
# Keys start at a word boundary and are taken whole (possessive ++), so scanning stays linear in the text.
_KEY_VALUE = re.compile(
    rf"(?P<key>(?<![A-Za-z0-9_.-])(?=[A-Za-z0-9_.-]*?(?:{_SENSITIVE}))[A-Za-z0-9_.-]++)"
    r"(?P<sep>[\"']?\s*[:=]\s*)"
    r"(?P<value>\[REDACTED\]|\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'"
    r"|(?:(?:bearer|basic)\s+)?(?:\[REDACTED\]|[^\s&,;\"'}\])]+))",
    re.IGNORECASE,
)
_AUTH_SCHEME = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Anthropic API keys (agent credentials) wherever they turn up, e.g. inside an exception message.
_ANTHROPIC_KEY = re.compile(r"(?<![A-Za-z0-9_-])sk-ant-[A-Za-z0-9_-]{8,}")
# What every pattern above needs somewhere in the text, lower-cased: a superset, which spares the texts none
# of them could match the four scans (~10 µs per short string, and a log line has a dozen strings).
_CANDIDATE = re.compile(
    "passw|secret|token|authorization|cookie|api|refresh|private|bearer|basic|eyj|sk-ant-"
)


@functools.lru_cache(maxsize=1024)  # log records use a few dozen field and header names
def _sensitive_key(key: str) -> bool:
    return _SENSITIVE_KEY.search(key) is not None


def _redact_key_value(match: re.Match[str]) -> str:
    value = match["value"]
    quote = value[0] if value[0] in "\"'" else ""
    return f"{match['key']}{match['sep']}{quote}{REDACTED}{quote}"


class Redactor:
    """Replaces secrets with ``[REDACTED]`` in text, nested values and log records.

    A value goes when its key names a secret (password, passwd, secret, token, authorization, cookie, api_key,
    refresh, private_key; case-insensitive substring). Free text loses ``Bearer …``/``Basic …`` credentials,
    JWT-looking strings, Anthropic API keys (``sk-ant-…``) and ``password=…`` / ``"token": "…"`` forms.

    >>> Redactor().redact({"user": "ann", "headers": {"Authorization": "Bearer abc"}})
    {'user': 'ann', 'headers': {'Authorization': '[REDACTED]'}}
    """

    def is_sensitive_key(self, key: object) -> bool:
        if isinstance(key, bytes | bytearray):
            key = bytes(key).decode("latin-1")
        return isinstance(key, str) and _sensitive_key(key)

    def redact_text(self, text: str) -> str:
        if _CANDIDATE.search(text.lower()) is None:
            return text
        text = _KEY_VALUE.sub(_redact_key_value, text)
        text = _AUTH_SCHEME.sub(lambda m: f"{m[1]} {REDACTED}", text)
        text = _JWT.sub(REDACTED, text)
        return _ANTHROPIC_KEY.sub(REDACTED, text)

    def redact(self, value: Any, key: object = None, _depth: int = 0) -> Any:
        """A JSON-ready copy of ``value`` without secrets (``key`` is the name it was stored under)."""
        if value is None:
            return None
        if key is not None and self.is_sensitive_key(key):
            return REDACTED
        if isinstance(value, bool | int):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, bytes | bytearray):
            return self.redact_text(bytes(value).decode("utf-8", "replace"))
        if _depth >= _MAX_DEPTH:
            return "[…]"
        if isinstance(value, Mapping):
            return {self._key(k): self.redact(v, k, _depth + 1) for k, v in value.items()}
        if isinstance(value, tuple) and len(value) == 2 and self.is_sensitive_key(value[0]):
            return [self._key(value[0]), REDACTED]  # a header pair: (b"authorization", b"Bearer …")
        if isinstance(value, list | tuple | set | frozenset):
            return [self.redact(item, None, _depth + 1) for item in value]
        if isinstance(value, dt.datetime | dt.date):
            return value.isoformat()
        return self.redact_text(str(value))

    def redact_record(self, record: logging.LogRecord) -> None:
        """Redact the message (with its args) and every extra field of ``record`` in place, once."""
        if getattr(record, _REDACTED_MARK, False):
            return
        try:
            if not hasattr(record, "event"):
                record.event = default_event(record)
            record.msg = self.redact_text(record_message(record))
            record.args = None
            for name, value in record_extras(record).items():
                setattr(record, name, self.redact(value, name))
        except Exception:  # never let redaction raise into the caller, and never let a secret through
            record.msg, record.args = "[log record could not be redacted]", None
        setattr(record, _REDACTED_MARK, True)

    @staticmethod
    def _key(key: object) -> str:
        if isinstance(key, bytes | bytearray):
            return bytes(key).decode("latin-1")
        return key if isinstance(key, str) else str(key)


DEFAULT_REDACTOR = Redactor()


class RedactionFilter(logging.Filter):
    """Handler filter: runs :meth:`Redactor.redact_record` on every record the handler sees."""

    def __init__(self, redactor: Redactor = DEFAULT_REDACTOR) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        self.redactor.redact_record(record)
        return True
