from __future__ import annotations

from pathlib import Path

import pytest

from aicm.workspaces.git import Git
from aicm.workspaces.repositories import Repository, RepositoryStore
from tests.workspaces.helpers import Upstream

README = "# Demo\n\nline one\nline two\nline three\n"


@pytest.fixture
def git() -> Git:
    return Git(timeout=30)


@pytest.fixture
def store(tmp_path: Path, git: Git) -> RepositoryStore:
    return RepositoryStore(tmp_path / "workspaces", git, lock_timeout=10)


@pytest.fixture
async def upstream(tmp_path: Path, git: Git) -> Upstream:
    remote = Upstream(git, tmp_path)
    await remote.create({"README.md": README, "src/app.py": "print('hello')\n"})
    return remote


@pytest.fixture
async def repo(store: RepositoryStore, upstream: Upstream) -> Repository:
    return await store.ensure(1, upstream.url)
