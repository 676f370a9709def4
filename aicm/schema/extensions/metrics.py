"""``graphql_operations_total`` and ``graphql_operation_duration_seconds``, one count per operation."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

from strawberry.extensions import SchemaExtension
from strawberry.types.execution import ExecutionResult

from aicm.metrics import GRAPHQL_DURATION, GRAPHQL_OPERATIONS

__all__ = ["ANONYMOUS", "OTHER", "GraphQLMetrics", "OperationNames"]

ANONYMOUS, OTHER, UNKNOWN = "anonymous", "other", "unknown"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class OperationNames:
    """Turns client-chosen operation names into bounded label values.

    A sane name (a GraphQL name of at most 64 characters) is kept while fewer than ``limit`` distinct names
    have been seen by this process; after that, and for anything else, the label is ``other``. No name is
    ``anonymous``. So a client can add at most ``limit`` series per process, whatever it sends.

    >>> names = OperationNames(limit=1)
    >>> names.label("Me"), names.label("Me"), names.label("Projects"), names.label(None)
    ('Me', 'Me', 'other', 'anonymous')
    """

    def __init__(self, limit: int = 200) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def label(self, name: str | None) -> str:
        if not name:
            return ANONYMOUS
        if not _NAME.fullmatch(name):
            return OTHER
        if name in self._seen:
            return name
        with self._lock:
            if len(self._seen) >= self.limit:
                return OTHER
            self._seen.add(name)
        return name


NAMES = OperationNames()


class GraphQLMetrics(SchemaExtension):
    """Counts each operation by name, type (query, mutation, subscription) and outcome (success, error);
    times queries and mutations. A subscription is counted when it ends, as an error if any of its results
    carried errors; its lifetime is not timed (it says nothing about the server's speed).

    >>> Schema(query=Query, extensions=[GraphQLMetrics])  # doctest: +SKIP
    """

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        self._failed = False
        try:
            yield
        except Exception:  # not GeneratorExit/CancelledError: a client leaving a subscription is no error
            self._failed = True
            raise
        finally:
            self._record(time.perf_counter() - started)

    def on_stream_result(self, result: ExecutionResult) -> Iterator[None]:  # type: ignore[override]
        if getattr(result, "errors", None):
            self._failed = True
        yield

    def _record(self, seconds: float) -> None:
        context = self.execution_context
        try:
            kind = context.operation_type.value
        except Exception:  # unparsable document, or no operation of the requested name
            kind = UNKNOWN
        try:
            name = context.operation_name
        except Exception:
            name = OTHER
        # A name the document does not define is whatever the client typed: it gets no series of its own.
        name = NAMES.label(name) if kind != UNKNOWN or not name else OTHER
        result = context.result
        failed = self._failed or bool(context.pre_execution_errors) or bool(result and result.errors)
        GRAPHQL_OPERATIONS.labels(name, kind, "error" if failed else "success").inc()
        if kind != "subscription":
            GRAPHQL_DURATION.labels(name, kind).observe(seconds)
