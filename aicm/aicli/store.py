"""The saved sign-in: server URL and tokens in ``$XDG_CONFIG_HOME/aicli/credentials.json`` (mode 0600).

Several ``aicli`` processes may run at once (a ``logs --follow`` in one terminal, ``approve`` in another), and
each refresh rotates the refresh token, so a refresh happens under an exclusive lock on a file beside it and
first re-reads the file: a process that waited finds the pair the other one saved and uses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

FILE_NAME = "credentials.json"
# Refresh this long before the access token expires (at most a fifth of its lifetime, for short ones).
REFRESH_MARGIN = 30.0
SOCKET_MARGIN = 120.0


@dataclass(frozen=True)
class Credentials:
    url: str  # the server's base URL, without /graphql
    email: str = ""
    refresh_token: str = ""
    access_token: str = ""
    expires_at: float = 0.0  # when the access token expires (epoch seconds)
    lifetime: float = 0.0  # the access token's lifetime as the server gave it

    @property
    def signed_in(self) -> bool:
        return bool(self.refresh_token)

    def access_is_fresh(self, *, lasting: float | None = None) -> bool:
        """The access token is usable for a while yet (``lasting`` seconds, when given)."""
        margin = min(REFRESH_MARGIN, self.lifetime / 5) if lasting is None else lasting
        return bool(self.access_token) and self.expires_at - margin > time.time()

    def socket_lasting(self) -> float:
        """How long a token must still last to open a WebSocket with it: the server closes the socket when
        the token expires, so one about to expire would only make the follower reconnect at once."""
        return min(SOCKET_MARGIN, self.lifetime / 2)

    def with_tokens(
        self, *, access: str, refresh: str, expires_in: float, email: str | None = None
    ) -> Credentials:
        return replace(
            self,
            access_token=access,
            refresh_token=refresh,
            expires_at=time.time() + expires_in,
            lifetime=float(expires_in),
            email=self.email if email is None else email,
        )

    def signed_out(self) -> Credentials:
        """The same server, no tokens (the next ``login`` offers the URL again)."""
        return Credentials(url=self.url, email=self.email)


def config_dir(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME/aicli``, else ``~/.config/aicli``."""
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "aicli"


class CredentialStore:
    """Reads and writes the credentials file; writes are atomic and never readable by others."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / FILE_NAME

    def load(self) -> Credentials | None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("url"), str):
            raise StoreError(f"{self.path} is not an aicli credentials file; remove it and sign in again")
        fields = Credentials.__dataclass_fields__
        return Credentials(**{key: value for key, value in raw.items() if key in fields})

    def save(self, credentials: Credentials) -> None:
        self._ensure_directory()
        temporary = self.path.with_name(f".{FILE_NAME}.{os.getpid()}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            json.dump(asdict(credentials), out, indent=2)
            out.write("\n")
        os.chmod(temporary, 0o600)  # an existing temporary file keeps its mode through O_CREAT
        os.replace(temporary, self.path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the exclusive lock that serializes refreshes across processes."""
        self._ensure_directory()
        descriptor = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing releases the lock

    def _ensure_directory(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)


class StoreError(Exception):
    """The credentials file exists but cannot be used."""
