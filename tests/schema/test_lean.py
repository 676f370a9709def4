"""The direct resolvers and the lean execution context answer exactly what Strawberry's own path answers."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import pytest
import strawberry
from strawberry.extensions import SchemaExtension
from strawberry.permission import BasePermission

from aicm.schema.errors import Schema
from aicm.schema.lean import LeanExecutionContext, lean_resolvers


@strawberry.enum
class Colour(enum.Enum):
    RED = "red"


class Denied(BasePermission):
    message = "denied"

    def has_permission(self, source: Any, info: strawberry.Info, **kwargs: Any) -> bool:
        return False


@strawberry.type
class Item:
    id: strawberry.ID
    name: str
    at: datetime
    colour: Colour
    note: str | None
    missing: str  # set to None below: graphql-core's non-null error

    @strawberry.field
    def shout(self) -> str:
        return self.name.upper()

    @strawberry.field
    def with_info(self, info: strawberry.Info) -> str:
        return f"{self.name}@{info.field_name}"

    @strawberry.field
    async def later(self) -> int:
        return len(self.name)

    @strawberry.field
    def repeat(self, times: int = 2) -> str:
        return self.name * times

    @strawberry.field(permission_classes=[Denied])
    def secret(self) -> str | None:
        return "s"

    @strawberry.field
    def fails(self) -> str | None:
        raise ValueError("broken")


@strawberry.type
class Query:
    @strawberry.field
    def items(self) -> list[Item]:
        at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        return [
            Item(id=strawberry.ID(str(n)), name=f"n{n}", at=at, colour=Colour.RED, note=None, missing="m")
            for n in range(3)
        ] + [
            Item(id=strawberry.ID("x"), name="x", at=at, colour=Colour.RED, note="y", missing=None)  # type: ignore[arg-type]
        ]


QUERY = """{ items { id name at colour note shout withInfo later repeat(times: 3) secret fails
  __typename alias: name again: later } }"""
BROKEN = "{ items { id missing } }"


def _schemas(*extensions: Any) -> tuple[Schema, Schema]:
    plain = Schema(query=Query, extensions=list(extensions))
    lean = Schema(query=Query, extensions=list(extensions), execution_context_class=LeanExecutionContext)
    assert lean_resolvers(lean) > 0
    return plain, lean


def _answer(result: Any) -> tuple[Any, list[tuple[str, Any]]]:
    return result.data, sorted((e.message, e.path) for e in result.errors or [])


@pytest.mark.parametrize("query", [QUERY, BROKEN])
async def test_lean_execution_answers_what_strawberry_answers(query: str) -> None:
    plain, lean = _schemas()
    expected = _answer(await plain.execute(query))
    assert _answer(await lean.execute(query)) == expected
    assert expected[1]  # the queries do exercise errors (permission, raised, non-null)


def test_only_fields_without_arguments_or_permissions_are_replaced() -> None:
    _, lean = _schemas()
    direct = {
        name
        for name, field in lean._schema.type_map["Item"].fields.items()
        if field.resolve.__module__ == "aicm.schema.lean"
    }
    assert direct == {"id", "name", "at", "colour", "note", "missing", "shout", "withInfo", "later", "fails"}


class Counting(SchemaExtension):
    seen: list[str] = []

    def resolve(self, _next: Any, root: Any, info: Any, *args: Any, **kwargs: Any) -> Any:
        Counting.seen.append(info.field_name)
        return _next(root, info, *args, **kwargs)


async def test_a_resolve_hook_still_sees_every_field() -> None:
    plain, lean = _schemas(Counting)
    Counting.seen = []
    await plain.execute("{ items { id name } }")
    expected, Counting.seen = sorted(Counting.seen), []
    await lean.execute("{ items { id name } }")
    assert sorted(Counting.seen) == expected
    assert expected.count("id") == 4
