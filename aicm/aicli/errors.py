"""What can go wrong talking to the server, as the messages a person reads."""

from __future__ import annotations

from typing import Any

# extensions.reason values that mean the session is over: only a new sign-in helps.
SESSION_OVER = frozenset({"SESSION_REVOKED", "TOKEN_REUSED", "TOKEN_INVALID", "ACCOUNT_INACTIVE"})


class CliError(Exception):
    """Ends the command with this message on stderr and exit code 1."""


class ApiError(CliError):
    """A GraphQL error the server answered (``extensions.code`` as in the API's contract)."""

    def __init__(
        self, message: str, code: str | None = None, extensions: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.extensions = extensions or {}

    @classmethod
    def from_error(cls, error: Any) -> ApiError:
        if not isinstance(error, dict):
            return cls(str(error))
        extensions = error.get("extensions") if isinstance(error.get("extensions"), dict) else {}
        return cls(str(error.get("message") or "error"), extensions.get("code"), extensions)

    @property
    def reason(self) -> str | None:
        return self.extensions.get("reason")

    @property
    def field(self) -> str | None:
        return self.extensions.get("field")

    def unknown_field(self, name: str) -> bool:
        """The server's schema has no such field: an older server (GraphQL validation error)."""
        return f"Cannot query field '{name}'" in self.message

    def __str__(self) -> str:
        details = [part for part in (self.code, self.field and f"field {self.field}", self.reason) if part]
        return f"{self.message} ({', '.join(details)})" if details else self.message


class NotSignedIn(CliError):
    def __init__(self) -> None:
        super().__init__("not signed in: run `aicli login [URL]` first")


class SessionEnded(CliError):
    """The server ended the session (logout elsewhere, revoked, refresh token reused, account disabled)."""

    def __init__(self, url: str, reason: str | None) -> None:
        why = {
            "SESSION_REVOKED": "it was revoked or signed out",
            "TOKEN_REUSED": "its refresh token was used twice, so the server ended it to be safe",
            "ACCOUNT_INACTIVE": "the account is deactivated",
        }.get(reason or "", "the server no longer accepts it")
        super().__init__(f"your session on {url} has ended ({why}); sign in again: aicli login {url}")
        self.reason = reason


class Unreachable(CliError):
    """No answer from the server (connection refused, DNS, TLS, timeout)."""


class Dropped(Exception):
    """The WebSocket closed before the operation completed; ``code`` is the close code, if any."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason
