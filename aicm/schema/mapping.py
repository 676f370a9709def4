"""Building a GraphQL type from a model row: fields named like the row's attributes are copied."""

from __future__ import annotations

import dataclasses
from functools import cache
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
    return cls(**{name: values[name] if name in values else getattr(row, name) for name in _init_names(cls)})


@cache
def _init_names(cls: type) -> tuple[str, ...]:
    """A type's constructor fields, computed once per type (``dataclasses.fields`` builds a tuple per call,
    and a page of a list builds hundreds of objects)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)
