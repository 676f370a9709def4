"""Which repository URLs a project may name (CONTRACT §8).

Accepted: ``https://host/path``, ``ssh://[user@]host[:port]/path``, scp-style ``[user@]host:path`` and, when
local repositories are allowed, ``file:///abs/path`` and a plain absolute path. Everything else is refused
before git sees it: other transports (``http``, ``git://``, ``ext::``, ``fd::`` and any ``<helper>::``),
values git would read as an option (``--upload-pack=…``, a host or user starting with ``-``), control
characters, passwords in the URL (they belong in the project's credential), relative paths, and local paths
outside ``allowed_roots`` or inside ``forbidden_roots`` (for example the workspace root, where other
projects' repositories live).

``file://`` needs ``allow_local`` too: on a server it reads the server's disk just like a plain path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from aicm.errors import BadUserInput

__all__ = ["validate_repository_url"]

FIELD = "repositoryUrl"
MAX_LENGTH = 2048
REMOTE_SCHEMES = ("https", "ssh")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_HELPER = re.compile(r"^[A-Za-z0-9+.-]*::")
_SCP = re.compile(r"^(?:(?P<user>[^@/]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(?P<path>.*)$")
_HOST = re.compile(r"^(?:\[?[0-9A-Fa-f:.]+:[0-9A-Fa-f:.]*\]?|[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)$")
_USER = re.compile(r"^[A-Za-z0-9._~%+-]+$")


def _refuse(message: str) -> BadUserInput:
    return BadUserInput(message, field=FIELD)


def validate_repository_url(
    url: str,
    *,
    allow_local: bool,
    allowed_roots: Sequence[Path] = (),
    forbidden_roots: Sequence[Path] = (),
) -> str:
    """The URL to hand to git (surrounding blanks removed), or ``BadUserInput`` (field ``repositoryUrl``)."""
    url = url.strip()
    if not url:
        raise _refuse("Repository URL is empty")
    if len(url) > MAX_LENGTH:
        raise _refuse(f"Repository URL is longer than {MAX_LENGTH} characters")
    if any(ord(char) < 32 or ord(char) == 127 for char in url):
        raise _refuse("Repository URL contains control characters")
    if url.startswith("-"):
        raise _refuse("Repository URL must not start with '-'")
    if _HELPER.match(url):
        raise _refuse("Repository URL names a transport that is not allowed (use https, ssh or a file path)")
    scheme = _SCHEME.match(url)
    if scheme:
        name = scheme.group(1).lower()
        if name == "file":
            _check_local(unquote(urlsplit(url).path), allow_local, allowed_roots, forbidden_roots)
        elif name in REMOTE_SCHEMES:
            _check_remote(url, name)
        else:
            raise _refuse(f"Repository URL scheme {name!r} is not allowed (use https, ssh or a file path)")
        return url
    if url.startswith("/"):
        _check_local(url, allow_local, allowed_roots, forbidden_roots)
        return url
    scp = _SCP.match(url)
    if scp:
        _check_host_and_user(scp.group("host"), scp.group("user"))
        path = scp.group("path")
        if not path or path.startswith("-"):
            raise _refuse("Repository URL has no valid path after the host")
        return url
    raise _refuse("Repository URL must be https://, ssh://, user@host:path or an absolute path")


def _check_remote(url: str, scheme: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise _refuse("Repository URL is not a valid URL") from None
    if parts.password is not None:
        raise _refuse("Repository URL must not contain a password; set the project's credential instead")
    if not parts.hostname:
        raise _refuse("Repository URL has no host")
    _check_host_and_user(parts.hostname, parts.username)
    if scheme == "https" and parts.path in ("", "/"):
        raise _refuse("Repository URL has no repository path")


def _check_host_and_user(host: str, user: str | None) -> None:
    if not _HOST.match(host):
        raise _refuse("Repository URL has an invalid host")
    if user is not None and (not _USER.match(user) or user.startswith("-")):
        raise _refuse("Repository URL has an invalid user name")


def _check_local(
    path: str, allow_local: bool, allowed_roots: Sequence[Path], forbidden_roots: Sequence[Path]
) -> None:
    if not allow_local:
        raise _refuse("Local repositories are not allowed on this server")
    if not path.startswith("/"):
        raise _refuse("A local repository path must be absolute")
    resolved = Path(path).resolve()
    if allowed_roots and not any(resolved.is_relative_to(root.resolve()) for root in allowed_roots):
        raise _refuse("Local repository path is outside the allowed directories")
    if any(resolved.is_relative_to(root.resolve()) for root in forbidden_roots):
        raise _refuse("Local repository path is inside a directory that is not allowed")
