"""Opaque IDs and Relay-style connection types (``edges``, ``pageInfo``, ``totalCount``)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import strawberry

from aicm.errors import BadUserInput, NotFound
from aicm.resolvers.pagination import Page, encode_cursor

N = TypeVar("N")


def encode_id(type_name: str, pk: int | str) -> strawberry.ID:
    return strawberry.ID(base64.urlsafe_b64encode(f"{type_name}:{pk}".encode()).decode().rstrip("="))


def decode_opaque(value: str, type_name: str, *, field: str = "id") -> str:
    """The key behind an opaque ID of the expected type.

    A malformed ID is bad input; a well-formed ID of another type names nothing and answers NOT_FOUND.
    """
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadUserInput(f"Malformed ID in '{field}'", field=field) from exc
    kind, sep, key = raw.partition(":")
    if not sep or not key:
        raise BadUserInput(f"Malformed ID in '{field}'", field=field)
    if kind != type_name:
        raise NotFound(f"{type_name} not found")
    return key


def decode_id(value: str, type_name: str, *, field: str = "id") -> int:
    """The integer primary key behind an opaque ID (see ``decode_opaque``)."""
    key = decode_opaque(value, type_name, field=field)
    try:
        number = int(key)
    except ValueError as exc:
        raise BadUserInput(f"Malformed ID in '{field}'", field=field) from exc
    if not 1 <= number < 2**63:
        raise NotFound(f"{type_name} not found")
    return number


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class Edge(Generic[N]):
    cursor: str
    node: N


@strawberry.type
class Connection(Generic[N]):
    edges: list[Edge[N]]
    page_info: PageInfo
    total_count: int


def connection(page: Page, to_node: Callable[[Any], N]) -> Connection[N]:
    edges = [Edge(cursor=encode_cursor(row.id), node=to_node(row)) for row in page.rows]
    return Connection(
        edges=edges,
        page_info=PageInfo(has_next_page=page.has_next, end_cursor=edges[-1].cursor if edges else None),
        total_count=page.total,
    )
