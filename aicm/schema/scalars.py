"""Custom scalars."""

from __future__ import annotations

from typing import Any, NewType

import strawberry

JSON = strawberry.scalar(
    NewType("JSON", object),
    description="Arbitrary JSON value",
    serialize=lambda v: v,
    parse_value=lambda v: v,
)

__all__ = ["JSON", "Any"]
