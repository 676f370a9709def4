"""Opaque IDs and Relay-style connections (``first``/``after``, ``edges``, ``pageInfo``, ``totalCount``)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import strawberry
from tortoise.queryset import QuerySet

from aicm.errors import BadUserInput, NotFound

N = TypeVar("N")
MAX_PAGE = 100
DEFAULT_PAGE = 20


def encode_id(type_name: str, pk: int | str) -> strawberry.ID:
    return strawberry.ID(base64.urlsafe_b64encode(f"{type_name}:{pk}".encode()).decode().rstrip("="))


def decode_id(value: str, type_name: str, *, field: str = "id") -> int:
    """The primary key behind an opaque ID of the expected type.

    A malformed ID is bad input; a well-formed ID of another type names nothing and answers NOT_FOUND.
    """
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        kind, _, pk = raw.partition(":")
        number = int(pk)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadUserInput(f"Malformed ID in '{field}'", field=field) from exc
    if kind != type_name or number < 1:
        raise NotFound(f"{type_name} not found")
    return number


def _encode_cursor(key: int) -> str:
    return base64.urlsafe_b64encode(f"cursor:{key}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, key = raw.partition(":")
        if kind != "cursor":
            raise ValueError(kind)
        return int(key)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadUserInput("Malformed cursor in 'after'", field="after") from exc


def page_size(first: int | None) -> int:
    if first is None:
        return DEFAULT_PAGE
    if not 1 <= first <= MAX_PAGE:
        raise BadUserInput(f"'first' must be between 1 and {MAX_PAGE}", field="first")
    return first


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


@dataclass
class Page:
    rows: Sequence[Any]
    has_next: bool
    total: int


async def paginate(
    queryset: QuerySet[Any], first: int | None, after: str | None, *, newest_first: bool = False
) -> Page:
    """Keyset pagination on the primary key: stable while rows are added, one COUNT and one SELECT."""
    size = page_size(first)
    total = await queryset.count()
    if after is not None:
        key = _decode_cursor(after)
        queryset = queryset.filter(id__lt=key) if newest_first else queryset.filter(id__gt=key)
    rows = await queryset.order_by("-id" if newest_first else "id").limit(size + 1)
    return Page(rows[:size], len(rows) > size, total)


def connection(page: Page, to_node: Callable[[Any], N]) -> Connection[N]:
    edges = [Edge(cursor=_encode_cursor(row.id), node=to_node(row)) for row in page.rows]
    return Connection(
        edges=edges,
        page_info=PageInfo(has_next_page=page.has_next, end_cursor=edges[-1].cursor if edges else None),
        total_count=page.total,
    )
