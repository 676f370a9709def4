"""Helpers for GraphQL-over-HTTP tests."""

from __future__ import annotations

from typing import Any

import httpx


async def execute(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    token: str | None = None,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.post(
        "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
    )
    assert response.status_code in (200, 400, 401), response.text
    return response.json()


def error_codes(result: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in result.get("errors") or []]


def assert_ok(result: dict[str, Any]) -> dict[str, Any]:
    assert not result.get("errors"), result
    return result["data"]


def assert_error(result: dict[str, Any], code: str, field: str | None = None) -> dict[str, Any]:
    errors = result.get("errors") or []
    assert errors, f"expected {code}, got no errors: {result}"
    error = errors[0]
    assert error.get("extensions", {}).get("code") == code, result
    if field is not None:
        assert error["extensions"].get("field") == field, result
    return error
