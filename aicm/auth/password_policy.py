"""The common-password blocklist shipped in the package: ``common_passwords.txt``, one lower-case entry
a line.

``aicm.auth.passwords.check_policy`` asks ``is_common``; the list is read once, on first use.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["common_passwords", "is_common"]

_RESOURCE = "common_passwords.txt"


@cache
def common_passwords() -> frozenset[str]:
    text = resources.files(__package__).joinpath(_RESOURCE).read_text(encoding="utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())


def is_common(password: str) -> bool:
    """True when the password, compared case-insensitively, is on the blocklist."""
    return password.strip().lower() in common_passwords()
