"""Input validation shared by the resolvers; every failure names its field (``BAD_USER_INPUT``)."""

from __future__ import annotations

import re

from aicm.errors import BadUserInput

# Every pattern here validates a whole value: use ``fullmatch`` (``$`` also matches before a final newline).
EMAIL_RE = re.compile(r"[^@\s]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})+")


def no_nul(value: str, field: str) -> str:
    if "\x00" in value:
        raise BadUserInput(f"'{field}' must not contain NUL characters", field=field)
    return value


def text(value: str, field: str, *, min_len: int = 0, max_len: int, strip: bool = True) -> str:
    no_nul(value, field)
    value = value.strip() if strip else value
    if len(value) < min_len:
        raise BadUserInput(
            f"'{field}' must not be empty"
            if min_len == 1
            else f"'{field}' needs at least {min_len} characters",
            field=field,
        )
    if len(value) > max_len:
        raise BadUserInput(f"'{field}' must be at most {max_len} characters", field=field)
    return value


def normalize_email(value: str, field: str = "email") -> str:
    email = text(value, field, min_len=1, max_len=254).lower()
    if not EMAIL_RE.fullmatch(email):
        raise BadUserInput("Not a valid email address", field=field)
    return email


SLUG_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?")
ROLE_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")


def slug(value: str, field: str = "slug") -> str:
    no_nul(value, field)
    if not SLUG_RE.fullmatch(value):
        raise BadUserInput(
            "A slug is 1-100 characters of a-z, 0-9 and '-', not starting or ending with '-'", field=field
        )
    return value


def role_name(value: str, field: str = "name") -> str:
    value = text(value, field, min_len=1, max_len=64)
    if not ROLE_NAME_RE.fullmatch(value):
        raise BadUserInput("A role name is a lower-case letter then a-z, 0-9, '_' or '-'", field=field)
    return value


def search(value: str | None, field: str = "search") -> str | None:
    if value is None:
        return None
    value = text(value, field, max_len=200)
    return value or None
