"""Keyset pagination for connections: cursors of `aicm.ids`, page size 1..100, one COUNT and one SELECT."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tortoise.queryset import QuerySet

from aicm.errors import BadUserInput
from aicm.ids import decode_cursor

MAX_PAGE = 100
DEFAULT_PAGE = 20


def page_size(first: int | None) -> int:
    if first is None:
        return DEFAULT_PAGE
    if not 1 <= first <= MAX_PAGE:
        raise BadUserInput(f"'first' must be between 1 and {MAX_PAGE}", field="first")
    return first


@dataclass
class Page:
    rows: Sequence[Any]
    has_next: bool
    total: int


async def paginate(
    queryset: QuerySet[Any], first: int | None, after: str | None, *, newest_first: bool = False
) -> Page:
    """Keyset pagination on the primary key: stable while rows are added."""
    size = page_size(first)
    total = await queryset.count()
    if after is not None:
        key = decode_cursor(after)
        queryset = queryset.filter(id__lt=key) if newest_first else queryset.filter(id__gt=key)
    rows = await queryset.order_by("-id" if newest_first else "id").limit(size + 1)
    return Page(rows[:size], len(rows) > size, total)
