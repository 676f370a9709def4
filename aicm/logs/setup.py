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

import logging
import sys
from typing import IO, TYPE_CHECKING, Any

from aicm.logs.context import RequestContextFilter
from aicm.logs.formatting import JSONFormatter, TextFormatter
from aicm.logs.records import RECORD_ATTRS
from aicm.logs.redaction import RedactionFilter
from aicm.logs.rotation import MEGABYTE, SizeAndAgeRotatingHandler

if TYPE_CHECKING:
    from aicm.config import LoggingConfig

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
# uvicorn's own access lines repeat the http_request line AccessLogMiddleware writes: this logger keeps no
# handlers and does not propagate, so uvicorn (which asks ``hasHandlers()``) does not even format them. Done
# here and not only by ``access_log=False``: ``serve --workers N`` configures logging in each worker after
# uvicorn did.
ACCESS_LOGGER = "uvicorn.access"
_HANDLER_MARK = "_aicm_handler"


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
    extra = {(f"{key}_" if key in RECORD_ATTRS else key): value for key, value in fields.items()}
    extra["event"] = event
    logger.log(level, message or event, extra=extra, stacklevel=2)
