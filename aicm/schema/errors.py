"""The one place where exceptions become ``extensions.code`` (CONTRACT §3).

Expected failures (``AppError``) keep their message and extensions; integrity errors become ``CONFLICT``;
GraphQL syntax and validation errors become ``BAD_USER_INPUT``; everything else is masked as
``INTERNAL_SERVER_ERROR`` (no stack, no SQL) and logged with the request id.
"""

from __future__ import annotations

import logging
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.types import ExecutionContext
from tortoise.exceptions import IntegrityError

from aicm.errors import AppError

log = logging.getLogger("aicm.graphql")

MASKED_MESSAGE = "Internal server error"


def apply_code(error: GraphQLError) -> bool:
    """Give the error its code in place, masking it when unexpected; True when it was unexpected."""
    original = error.original_error
    if isinstance(original, AppError):
        error.extensions = {"code": original.code, **original.extensions}
    elif isinstance(original, IntegrityError):
        error.message = "Conflicts with existing data"
        error.extensions = {"code": "CONFLICT"}
        error.original_error = None
    elif original is None or isinstance(original, GraphQLError):
        error.extensions = {
            **(error.extensions or {}),
            "code": (error.extensions or {}).get("code", "BAD_USER_INPUT"),
        }
    else:
        error.message = MASKED_MESSAGE
        error.extensions = {"code": "INTERNAL_SERVER_ERROR"}
        return True
    return False


class Schema(strawberry.Schema):
    """Strawberry's schema with our error policy applied to every result (HTTP and WebSocket)."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        context: Any = execution_context.context if execution_context else None
        request_id = getattr(context, "request_id", None)
        for error in errors:
            original = error.original_error
            if apply_code(error):
                log.error(
                    "unexpected error in resolver",
                    exc_info=original,
                    extra={"event": "graphql_error", "request_id": request_id, "path": error.path},
                )
                error.original_error = None
