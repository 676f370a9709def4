"""Every application metric, named as the operations guide and CONTRACT §2 require.

HTTP request metrics (``http_requests_total``, ``http_request_duration_seconds``) come from
starlette-exporter's middleware; the rest are defined here, once, and updated by the module owning the fact.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

AUTH_ATTEMPTS = Counter("auth_attempts_total", "Sign-in attempts", ["method", "outcome"])
ACTIVE_SESSIONS = Gauge("active_sessions_total", "Active login sessions (read from the session store)")
DATABASE_CONNECTIONS = Gauge("database_connections_active", "Database connections in use")
GRAPHQL_OPERATIONS = Counter(
    "graphql_operations_total", "GraphQL operations", ["operation", "type", "outcome"]
)
GRAPHQL_DURATION = Histogram(
    "graphql_operation_duration_seconds", "GraphQL operation duration", ["operation", "type"]
)
GRAPHQL_SUBSCRIPTIONS = Gauge("graphql_subscriptions_active", "Open GraphQL subscriptions")
WEBSOCKET_CONNECTIONS = Gauge("websocket_connections_active", "Open WebSocket connections")
EVENTS_DELIVERED = Counter("subscription_events_delivered_total", "Events delivered to subscribers")
EVENTS_DROPPED = Counter("subscription_events_dropped_total", "Subscribers ended because they fell behind")
BROKER_RECONNECTS = Counter("broker_reconnects_total", "Reconnections of the Redis event listener")
TASKS = Counter("tasks_total", "Tasks that ended, by final status", ["status"])
TASKS_RUNNING = Gauge("tasks_running", "Tasks running in this process")
TASK_LOG_LINES = Counter("task_log_lines_total", "Task log lines stored")
RATE_LIMIT_EXCEEDED = Counter("rate_limit_exceeded_total", "Requests refused by the rate limiter", ["scope"])
