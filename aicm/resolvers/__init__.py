"""Domain logic, one module per domain; no HTTP and no Strawberry here."""

from aicm.resolvers import audit, auth, projects, roles, subscriptions, tasks, users

__all__ = ["audit", "auth", "projects", "roles", "subscriptions", "tasks", "users"]
