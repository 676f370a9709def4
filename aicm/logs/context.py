"""The request being served, for every line logged while it runs: ``request_id``, ``ip`` and ``user_id``."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any


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
