"""AICode Manager: a GraphQL API server to run AI coding agents on team projects."""

__version__ = "1.0.0"
