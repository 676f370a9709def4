"""Building a GraphQL type from a model row: fields named like the row's attributes are copied."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def from_row(cls: type[T], row: Any, **values: Any) -> T:
    """``cls`` with each constructor field taken from ``values``, else from ``row``'s attribute of that name.

    >>> @dataclasses.dataclass
    ... class Point:
    ...     x: int
    ...     y: int
    >>> from_row(Point, Point(1, 2), y=5)
    Point(x=1, y=5)
    """
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    return cls(**{name: values[name] if name in values else getattr(row, name) for name in names})
