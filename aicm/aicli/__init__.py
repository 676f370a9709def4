"""``aicli``: the terminal client of AICode Manager.

It talks to a server through the public API only (GraphQL over HTTP, subscriptions over
``graphql-transport-ws``) and imports nothing else from ``aicm``: it could ship on its own. Modules by job:
``store`` (the saved sign-in), ``api`` (HTTP with transparent token refresh), ``socket`` (subscriptions),
``follow`` (a task's log stream, resumed without gap or duplicate), ``render`` (rich for a person, plain
lines or JSON for scripts), ``commands/`` (one module per group of commands) and ``main`` (argument parsing).
"""
