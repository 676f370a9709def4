"""The one codec for opaque IDs (``Type:key``) and connection cursors (``cursor:key``).

Both are URL-safe base64 without padding. Decoding bounds an integer key to the range of the id columns
(``IntField``: PostgreSQL ``integer``, 1..2^31-1) once, here, so no query is ever sent a number the database
cannot hold (SQLite raised ``OverflowError`` past 2^63, PostgreSQL ``value out of int32 range`` past 2^31):

- a malformed ID or cursor is ``BAD_USER_INPUT`` (its ``field``);
- a well-formed ID whose key is outside the range names nothing: ``NOT_FOUND``, like any unknown id;
- a well-formed cursor outside the range is ``BAD_USER_INPUT`` (``field: "after"``): the server only issues
  cursors of rows, so it cannot come from a page it sent.
"""

from __future__ import annotations

import base64
import binascii
import re
from functools import lru_cache

from aicm.errors import BadUserInput, NotFound

__all__ = ["MAX_KEY", "decode_cursor", "decode_id", "decode_opaque", "encode_cursor", "encode_id"]

MAX_KEY = 2**31 - 1  # the largest value of an IntField id column (PostgreSQL int4)
_CURSOR = "cursor"
_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only (int() also takes other scripts' digits)


@lru_cache(maxsize=8192)  # a page of a list encodes the same few users' and roles' ids over and over
def _encode(kind: str, key: int | str) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{key}".encode()).decode().rstrip("=")


def _decode(value: str) -> tuple[str, str] | None:
    """``(kind, key)``, or None when ``value`` is not ``kind:key`` in unpadded URL-safe base64."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    kind, sep, key = raw.partition(":")
    return (kind, key) if sep and key else None


def _integer(key: str) -> int | None:
    """The number ``key`` spells, None when it is not an integer; very long ones are not converted (Python
    refuses over 4300 digits), only placed outside every column's range."""
    if not _INTEGER.fullmatch(key):
        return None
    if len(key.lstrip("+-").lstrip("0")) > 20:
        return -1 if key.startswith("-") else MAX_KEY + 1
    return int(key)


def encode_id(type_name: str, pk: int | str) -> str:
    return _encode(type_name, pk)


def decode_opaque(value: str, type_name: str, *, field: str = "id") -> str:
    """The key behind an opaque ID of the expected type.

    A malformed ID is bad input; a well-formed ID of another type names nothing and answers NOT_FOUND.
    """
    decoded = _decode(value)
    if decoded is None:
        raise BadUserInput(f"Malformed ID in '{field}'", field=field)
    kind, key = decoded
    if kind != type_name:
        raise NotFound(f"{type_name} not found")
    return key


def decode_id(value: str, type_name: str, *, field: str = "id") -> int:
    """The integer primary key behind an opaque ID, within 1..MAX_KEY (else NOT_FOUND)."""
    number = _integer(decode_opaque(value, type_name, field=field))
    if number is None:
        raise BadUserInput(f"Malformed ID in '{field}'", field=field)
    if not 1 <= number <= MAX_KEY:
        raise NotFound(f"{type_name} not found")
    return number


def encode_cursor(key: int) -> str:
    return _encode(_CURSOR, key)


def decode_cursor(cursor: str, *, field: str = "after") -> int:
    """The row key behind a cursor, within 1..MAX_KEY (else BAD_USER_INPUT)."""
    decoded = _decode(cursor)
    number = _integer(decoded[1]) if decoded is not None and decoded[0] == _CURSOR else None
    if number is None:
        raise BadUserInput(f"Malformed cursor in '{field}'", field=field)
    if not 1 <= number <= MAX_KEY:
        raise BadUserInput(f"Cursor out of range in '{field}'", field=field)
    return number
