"""Structured logging: JSON lines (CONTRACT §6), request context, redaction and a size-and-age rotating file.

``configure_logging(settings.logging)`` installs one stream handler (``json`` or ``text``) and, when
``logging.file.enabled``, one rotating file handler (always JSON: operators grep and ``jq`` that file) on the
root logger. The ``uvicorn`` loggers lose their own handlers and propagate to the root, so every line shares
one format; ``uvicorn.access`` is silenced (``http_request`` lines replace it). Every handler it installs
runs two filters before formatting: :class:`RequestContextFilter` (``request_id``, ``ip`` and ``user_id`` of
the request being served) and :class:`RedactionFilter` (no password, token or secret reaches a line); the
formatters redact once more as a last guard.

The JSON line keeps a fixed head: ``timestamp``, ``level``, ``event`` then ``ip``. Items are separated by
``", "`` and keys from values by a bare ``":"``, so the runbook's ``grep 'status":5'`` finds 5xx lines and
``awk '{print $4}'`` on a ``rate_limit_exceeded`` line prints its ``"ip":"…"`` item.

Example::

    configure_logging(settings.logging)
    uvicorn.run(app, log_config=log_config(), access_log=False)
    security_event(logging.getLogger(__name__), "auth_failed", email=email)
"""

from __future__ import annotations

import contextvars
import datetime as dt
import glob
import json
import logging
import math
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aicm.config import LoggingConfig

__all__ = [
    "REDACTED",
    "SECURITY_EVENTS",
    "JSONFormatter",
    "RedactionFilter",
    "Redactor",
    "RequestContextFilter",
    "SizeAndAgeRotatingHandler",
    "TextFormatter",
    "bind_request",
    "client_ip",
    "configure_logging",
    "current_request_id",
    "log_config",
    "reset_request",
    "security_event",
]

REDACTED = "[REDACTED]"
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
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
# uvicorn's own access lines repeat the http_request line AccessLogMiddleware writes: this logger keeps no
# handlers and does not propagate, so uvicorn (which asks ``hasHandlers()``) does not even format them. Done
# here and not only by ``access_log=False``: ``serve --workers N`` configures logging in each worker after
# uvicorn did.
ACCESS_LOGGER = "uvicorn.access"
MEGABYTE = 1024 * 1024

# Attributes every LogRecord has; anything else on a record came from ``extra=`` (or a filter).
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
# uvicorn's ANSI-coloured copy of its message: noise in a log line.
_DROPPED_EXTRAS = frozenset({"color_message"})
# Request fields in the order they follow timestamp, level and event.
_HEAD = ("ip", "request_id", "method", "path", "status", "duration_ms", "user_id")
_HANDLER_MARK = "_aicm_handler"
_REDACTED_MARK = "_aicm_redacted"
_MAX_DEPTH = 8


# --- redaction ------------------------------------------------------------------------------------

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


def _redact_key_value(match: re.Match[str]) -> str:
    value = match["value"]
    quote = value[0] if value[0] in "\"'" else ""
    return f"{match['key']}{match['sep']}{quote}{REDACTED}{quote}"


class Redactor:
    """Replaces secrets with ``[REDACTED]`` in text, nested values and log records.

    A value goes when its key names a secret (password, passwd, secret, token, authorization, cookie, api_key,
    refresh, private_key; case-insensitive substring). Free text loses ``Bearer …``/``Basic …`` credentials,
    JWT-looking strings and ``password=…`` / ``"token": "…"`` forms.

    >>> Redactor().redact({"user": "ann", "headers": {"Authorization": "Bearer abc"}})
    {'user': 'ann', 'headers': {'Authorization': '[REDACTED]'}}
    """

    def is_sensitive_key(self, key: object) -> bool:
        if isinstance(key, bytes | bytearray):
            key = bytes(key).decode("latin-1")
        return isinstance(key, str) and _SENSITIVE_KEY.search(key) is not None

    def redact_text(self, text: str) -> str:
        text = _KEY_VALUE.sub(_redact_key_value, text)
        text = _AUTH_SCHEME.sub(lambda m: f"{m[1]} {REDACTED}", text)
        return _JWT.sub(REDACTED, text)

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
            record.msg = self.redact_text(_message(record))
            record.args = None
            for name, value in _extras(record).items():
                setattr(record, name, self.redact(value, name))
        except Exception:  # never let redaction raise into the caller, and never let a secret through
            record.msg, record.args = "[log record could not be redacted]", None
        setattr(record, _REDACTED_MARK, True)

    @staticmethod
    def _key(key: object) -> str:
        if isinstance(key, bytes | bytearray):
            return bytes(key).decode("latin-1")
        return key if isinstance(key, str) else str(key)


_REDACTOR = Redactor()


class RedactionFilter(logging.Filter):
    """Handler filter: runs :meth:`Redactor.redact_record` on every record the handler sees."""

    def __init__(self, redactor: Redactor = _REDACTOR) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        self.redactor.redact_record(record)
        return True


# --- request context ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RequestContext:
    request_id: str
    scope: MutableMapping[str, Any]


_request: contextvars.ContextVar[_RequestContext | None] = contextvars.ContextVar(
    "aicm_request", default=None
)


def bind_request(
    request_id: str, scope: MutableMapping[str, Any]
) -> contextvars.Token[_RequestContext | None]:
    """Make ``request_id`` (and the scope's client ip and ``state["user_id"]``) reach records logged now."""
    return _request.set(_RequestContext(request_id, scope))


def reset_request(token: contextvars.Token[_RequestContext | None]) -> None:
    _request.reset(token)


def current_request_id() -> str | None:
    context = _request.get()
    return context.request_id if context is not None else None


def client_ip(scope: Mapping[str, Any]) -> str | None:
    """``scope["state"]["client_ip"]`` when a proxy-aware middleware set it, else the socket peer."""
    state = scope.get("state") or {}
    if state.get("client_ip"):
        return str(state["client_ip"])
    client = scope.get("client")
    return str(client[0]) if client else None


class RequestContextFilter(logging.Filter):
    """Handler filter: adds the current request's ``request_id``, ``ip`` and ``user_id`` unless set."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _request.get()
        if context is not None:
            state = context.scope.get("state") or {}
            if not hasattr(record, "request_id"):
                record.request_id = context.request_id
            if not hasattr(record, "ip"):
                record.ip = client_ip(context.scope)
            if not hasattr(record, "user_id"):
                record.user_id = state.get("user_id")
        return True


# --- formatters -----------------------------------------------------------------------------------

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


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # bad %-args: keep what was meant rather than raising from a log call
        return f"{record.msg!s} {record.args!r}"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in _RECORD_ATTRS and k not in _DROPPED_EXTRAS and not k.startswith("_")
    }


def _timestamp(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Formatter(logging.Formatter):
    def __init__(self, redactor: Redactor = _REDACTOR) -> None:
        super().__init__()
        self.redactor = redactor

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """timestamp, level, event, the request head, message, logger, extras, then error and stack."""
        extras = _extras(record)
        event = extras.pop("event", None)
        payload: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname.lower(),
            "event": str(event) if event else default_event(record),
        }
        payload |= {key: extras.pop(key) for key in _HEAD if key in extras}
        payload["message"] = _message(record).rstrip()
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


# --- rotating file --------------------------------------------------------------------------------


class SizeAndAgeRotatingHandler(RotatingFileHandler):
    """Rotates at ``max_bytes``, keeps at most ``backup_count`` numbered backups (``app.log.1`` newest)
    and, at start and on every rollover, deletes backups older than ``max_age_days`` (0 = no age limit).
    Creates the parent directory. With ``backup_count`` 0 a full file is truncated instead.

    >>> handler = SizeAndAgeRotatingHandler("/tmp/aicm/app.log", max_bytes=100 * MEGABYTE, backup_count=10,
    ...                                     max_age_days=30)  # doctest: +SKIP
    """

    def __init__(
        self,
        filename: str | Path,
        *,
        max_bytes: int,
        backup_count: int,
        max_age_days: float,
        encoding: str = "utf-8",
    ) -> None:
        Path(filename).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(filename, mode="a", maxBytes=max_bytes, backupCount=backup_count, encoding=encoding)
        self.max_age_seconds = max_age_days * 86_400
        self.prune()

    def doRollover(self) -> None:
        if self.backupCount > 0:
            super().doRollover()
        else:
            if self.stream:
                self.stream.close()
            self.stream = self._open_truncated()
        self.prune()

    def _open_truncated(self) -> IO[str]:
        return open(self.baseFilename, "w", encoding=self.encoding)  # the handler owns and closes it

    def backups(self) -> dict[int, Path]:
        """Numbered backups on disk: ``{1: app.log.1, 2: app.log.2, …}``."""
        base = Path(self.baseFilename)
        found = {}
        for path in base.parent.glob(f"{glob.escape(base.name)}.*"):
            suffix = path.name[len(base.name) + 1 :]
            if suffix.isdigit():
                found[int(suffix)] = path
        return found

    def prune(self, now: float | None = None) -> None:
        """Delete backups beyond ``backup_count`` and backups last written more than ``max_age_days`` ago."""
        cutoff = (now if now is not None else time.time()) - self.max_age_seconds
        for number, path in self.backups().items():
            try:
                too_many = self.backupCount > 0 and number > self.backupCount
                too_old = self.max_age_seconds > 0 and path.stat().st_mtime < cutoff
                if too_many or too_old:
                    path.unlink()
            except FileNotFoundError:
                continue


# --- setup ----------------------------------------------------------------------------------------


def _install(handler: logging.Handler, formatter: logging.Formatter) -> logging.Handler:
    handler.setFormatter(formatter)
    handler.addFilter(RequestContextFilter())
    handler.addFilter(RedactionFilter())
    setattr(handler, _HANDLER_MARK, True)
    return handler


def _level(name: str) -> int:
    level = logging.getLevelName(name.strip().upper())
    if not isinstance(level, int):
        raise ValueError(f"unknown logging.level {name!r}")
    return level


def configure_logging(config: LoggingConfig, *, stream: IO[str] | None = None) -> None:
    """Install the aicm handlers on the root logger and route the uvicorn loggers into them.

    Idempotent: handlers from an earlier call are removed and closed first; handlers installed by anyone else
    (pytest's, for instance) are left alone. ``stream`` overrides ``config.output`` (tests).
    """
    level = _level(config.level)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(handler)
        handler.close()
    target = stream if stream is not None else (sys.stderr if config.output == "stderr" else sys.stdout)
    formatter = TextFormatter() if config.format == "text" else JSONFormatter()
    root.addHandler(_install(logging.StreamHandler(target), formatter))
    if config.file.enabled:
        file_handler = SizeAndAgeRotatingHandler(
            config.file.path,
            max_bytes=config.file.max_size * MEGABYTE,
            backup_count=config.file.max_backups,
            max_age_days=config.file.max_age,
        )
        root.addHandler(_install(file_handler, JSONFormatter()))
    root.setLevel(level)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        for handler in logger.handlers[:]:
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = name != ACCESS_LOGGER
        logger.disabled = False


def log_config() -> dict[str, Any]:
    """For ``uvicorn.run(log_config=log_config())``: uvicorn installs none of its own handlers or formats.

    An *incremental* ``dictConfig``: it only makes the uvicorn loggers propagate and stay enabled, so the
    handlers :func:`configure_logging` installed are neither closed nor replaced.
    """
    return {
        "version": 1,
        "incremental": True,
        "loggers": {name: {"propagate": name != ACCESS_LOGGER} for name in UVICORN_LOGGERS},
    }


def security_event(
    logger: logging.Logger, event: str, /, *, message: str | None = None, **fields: Any
) -> None:
    """Log a security event (CONTRACT §6 names, see ``SECURITY_EVENTS``): INFO for ``auth_succeeded``, else
    WARNING. ``request_id``, ``ip`` and ``user_id`` come from the current request unless given.

    >>> security_event(logging.getLogger("aicm.auth"), "auth_failed", email="ann@example.com", reason="bad")
    """
    level = logging.INFO if event == "auth_succeeded" else logging.WARNING
    extra = {(f"{key}_" if key in _RECORD_ATTRS else key): value for key, value in fields.items()}
    extra["event"] = event
    logger.log(level, message or event, extra=extra, stacklevel=2)
