"""The application's error hierarchy: one class per CONTRACT §3 code.

Domain code raises these; ``aicm.schema.errors`` maps them to ``extensions.code`` in one place.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """An expected failure that clients see with its code and message."""

    code = "INTERNAL_SERVER_ERROR"
    default_message = "Internal server error"

    def __init__(self, message: str | None = None, **extensions: Any) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.extensions = {k: v for k, v in extensions.items() if v is not None}


class Unauthenticated(AppError):
    code = "UNAUTHENTICATED"
    default_message = "Authentication required"


class Forbidden(AppError):
    code = "FORBIDDEN"
    default_message = "You are not allowed to do this"


class NotFound(AppError):
    code = "NOT_FOUND"
    default_message = "Not found"


class BadUserInput(AppError):
    """Invalid input; ``field`` names the offending argument or input field."""

    code = "BAD_USER_INPUT"
    default_message = "Invalid input"

    def __init__(self, message: str | None = None, *, field: str | None = None, **extensions: Any) -> None:
        super().__init__(message, field=field, **extensions)
        self.field = field


class Conflict(AppError):
    code = "CONFLICT"
    default_message = "Conflicts with existing data"

    def __init__(self, message: str | None = None, *, field: str | None = None, **extensions: Any) -> None:
        super().__init__(message, field=field, **extensions)
        self.field = field


class RateLimited(AppError):
    code = "RATE_LIMITED"
    default_message = "Too many requests"


class QueryTooComplex(AppError):
    code = "QUERY_TOO_COMPLEX"
    default_message = "Query is too complex"

