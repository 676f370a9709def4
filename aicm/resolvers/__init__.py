"""Domain logic, one module per domain; no HTTP and no Strawberry here."""

from aicm.resolvers import audit, projects, roles, users

__all__ = ["audit", "projects", "roles", "users"]
