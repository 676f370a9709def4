"""Lists run a constant number of SQL statements whatever the page size (DataLoaders, no N+1)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from starlette.applications import Starlette

from aicm.auth.permissions import DEVELOPER, VIEWER
from tests.factories import add_member, make_project, make_user, token_for
from tests.graphql import assert_ok, execute

PROJECTS = """
query($first: Int!) {
  projects(first: $first) {
    totalCount
    edges { node { owner { email } viewerRole { name }
                   members { user { email } role { name permissions } } } }
  }
}
"""


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.statements: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.lstrip().split(" ", 1)[0].upper() in {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"}:
            self.statements.append(message)


@contextmanager
def count_sql() -> Iterator[list[str]]:
    """Every SQL statement Tortoise sends while the block runs (its client logs each one at DEBUG)."""
    logger = logging.getLogger("tortoise.db_client")
    counter, level = _Counter(), logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    try:
        yield counter.statements
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)


async def _count_for_page(client: httpx.AsyncClient, token: str, size: int) -> int:
    with count_sql() as statements:
        data = assert_ok(await execute(client, PROJECTS, {"first": size}, token=token))
    assert len(data["projects"]["edges"]) == size
    return len(statements)


@pytest.mark.parametrize("viewer_kind", ["member", "admin"])
async def test_project_list_runs_constant_sql_at_page_sizes_5_and_50(
    app: Starlette, client: httpx.AsyncClient, viewer_kind: str
) -> None:
    # given 50 projects, each with an owner, a developer and a viewer, all visible to the viewer
    viewer = await make_user(roles=("member", "admin") if viewer_kind == "admin" else ("member",))
    for _ in range(50):
        project = await make_project(await make_user())
        await add_member(project, await make_user(), DEVELOPER)
        await add_member(project, viewer, VIEWER)
    token = await token_for(app, viewer)
    # when
    small = await _count_for_page(client, token, 5)
    large = await _count_for_page(client, token, 50)
    # then
    assert small == large, (small, large)
    assert large <= 10
