"""Relay-style connection types (``edges``, ``pageInfo``, ``totalCount``), and the ID codec of ``aicm.ids``
as the schema modules use it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import strawberry

from aicm.ids import decode_id, decode_opaque, encode_cursor, encode_id
from aicm.resolvers.pagination import Page

__all__ = ["Connection", "Edge", "PageInfo", "connection", "decode_id", "decode_opaque", "encode_id"]

N = TypeVar("N")


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
