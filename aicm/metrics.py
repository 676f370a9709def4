"""Every application metric, named as the operations guide and CONTRACT §2 require.

Defined here, once, and updated by the module owning the fact. ``http_requests_total`` and
``http_request_duration_seconds`` are recorded by starlette-exporter's middleware (see ``aicm.http.metrics``),
which also serves ``/metrics``. Label values are bounded: paths are route templates, GraphQL operation names
are capped (``aicm.schema.extensions.metrics``), statuses and outcomes are small fixed sets.

Multiprocess (``serve --workers N``): ``aicli-api`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory
before the workers start, counters and histograms then add up across workers, and each gauge says how its
per-worker values combine (``multiprocess_mode``): ``livesum`` for what each worker holds (connections,
subscriptions, running tasks), ``livemostrecent`` for values read from shared state at scrape time.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_LABELS = ("method", "path", "status")
HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests", HTTP_LABELS)
HTTP_DURATION = Histogram("http_request_duration_seconds", "HTTP request duration", HTTP_LABELS)

AUTH_ATTEMPTS = Counter("auth_attempts_total", "Sign-in attempts", ["method", "outcome"])
ACTIVE_SESSIONS = Gauge(
    "active_sessions_total",
    "Active login sessions (read from the session store at scrape time)",
    multiprocess_mode="livemostrecent",
)
DATABASE_CONNECTIONS = Gauge(
    "database_connections_active",
    "Database connections open in the pool (SQLite: 1 while connected)",
    multiprocess_mode="livesum",
)
DATABASE_CONNECTIONS_IN_USE = Gauge(
    "database_connections_in_use", "Database connections checked out of the pool", multiprocess_mode="livesum"
)
DATABASE_CONNECTIONS_MAX = Gauge(
    "database_connections_max", "Largest size the database pool may grow to", multiprocess_mode="livesum"
)
DATABASE_PING = Gauge(
    "database_ping_duration_seconds",
    "Round trip of SELECT 1 at the latest scrape (NaN when it failed)",
    multiprocess_mode="livemostrecent",
)
WORKSPACE_DISK_FREE = Gauge(
    "workspace_disk_free_bytes",
    "Free space on the file system of runner.workspace_root",
    multiprocess_mode="livemostrecent",
)
WORKSPACE_DISK_TOTAL = Gauge(
    "workspace_disk_total_bytes",
    "Size of the file system of runner.workspace_root",
    multiprocess_mode="livemostrecent",
)
GRAPHQL_OPERATIONS = Counter(
    "graphql_operations_total", "GraphQL operations", ["operation", "type", "outcome"]
)
GRAPHQL_DURATION = Histogram(
    "graphql_operation_duration_seconds",
    "GraphQL query and mutation duration",
    ["operation", "type"],
)
GRAPHQL_SUBSCRIPTIONS = Gauge(
    "graphql_subscriptions_active", "Open GraphQL subscriptions", multiprocess_mode="livesum"
)
WEBSOCKET_CONNECTIONS = Gauge(
    "websocket_connections_active", "Open WebSocket connections", multiprocess_mode="livesum"
)
EVENTS_DELIVERED = Counter("subscription_events_delivered_total", "Events delivered to subscribers")
EVENTS_DROPPED = Counter("subscription_events_dropped_total", "Events lost to subscribers that fell behind")
BROKER_RECONNECTS = Counter("broker_reconnects_total", "Reconnections of the Redis event listener")
TASKS = Counter("tasks_total", "Tasks that ended, by final status", ["status"])
TASKS_RUNNING = Gauge("tasks_running", "Tasks running in this process", multiprocess_mode="livesum")
TASK_LOG_LINES = Counter("task_log_lines_total", "Task log lines stored")
TASK_QUEUE_DEPTH = Gauge(
    "aicm_task_queue_depth",
    "Tasks waiting to start (PENDING), read from the database at scrape time",
    multiprocess_mode="livemostrecent",
)
WORKERS_LIVE = Gauge(
    "aicm_workers_live",
    "aicli-api worker processes that sent a heartbeat in the last minute (read from Redis at scrape time)",
    multiprocess_mode="livemostrecent",
)
RATE_LIMIT_EXCEEDED = Counter("rate_limit_exceeded_total", "Requests refused by the rate limiter", ["scope"])
GIT_OPERATIONS = Counter(
    "aicm_git_operations_total", "git commands run, by operation and result", ["op", "result"]
)
GIT_DURATION = Histogram(
    "aicm_git_operation_duration_seconds",
    "Duration of git commands",
    ["op"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


def record_git_operation(op: str, result: str, seconds: float) -> None:
    """``Git(on_operation=...)``: one git command ended."""
    GIT_OPERATIONS.labels(op, result).inc()
    GIT_DURATION.labels(op).observe(seconds)
