from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from aicm.workspaces.credentials import Credential
from aicm.workspaces.git import Git, RemoteError
from aicm.workspaces.merging import push
from aicm.workspaces.repositories import RepositoryStore
from aicm.workspaces.worktrees import commit_all, create, task_branch
from tests.workspaces.helpers import ALICE, Upstream, processes_showing, write
from tests.workspaces.https_remote import GitHttpsRemote

TOKEN = "ghp_TestToken0123456789abcdefSECRET"


@pytest.fixture
async def served(tmp_path: Path, git: Git) -> Upstream:
    remote = Upstream(git, tmp_path / "served")
    await remote.create({"README.md": "over https\n"})
    return remote


@pytest.fixture
def https(served: Upstream) -> Iterator[GitHttpsRemote]:
    with GitHttpsRemote(served.bare.parent, TOKEN, delay=0.3) as server:
        yield server


@pytest.fixture
def https_store(tmp_path: Path, https: GitHttpsRemote) -> RepositoryStore:
    git = Git(timeout=30, extra_env={"GIT_SSL_CAINFO": str(https.ca_file)})
    return RepositoryStore(tmp_path / "ws", git, auth_dir=tmp_path / "auth")


async def _watch(needle: str, seen: list[str], git_seen: list[str], stop: asyncio.Event) -> None:
    for _ in range(2000):
        if stop.is_set():
            return
        seen.extend(processes_showing(needle))
        git_seen.extend(processes_showing("remote-https"))
        await asyncio.sleep(0.01)


async def test_a_token_clones_and_pushes_over_https_and_never_shows_in_processes_or_logs(
    https: GitHttpsRemote,
    https_store: RepositoryStore,
    served: Upstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given
    caplog.set_level(logging.DEBUG)
    credential = Credential(token=TOKEN)
    seen: list[str] = []
    git_seen: list[str] = []
    stop = asyncio.Event()
    watcher = asyncio.ensure_future(_watch(TOKEN, seen, git_seen, stop))

    # when: clone, work, push
    try:
        repo = await https_store.ensure(1, https.url("origin.git"), credential)
        tree = await create(repo, https_store.worktree_path(1, 1), task_branch(1), await repo.resolve("main"))
        write(tree.path, {"pushed.txt": "over https\n"})
        sha = await commit_all(tree, ALICE, "Work")
        await push(repo, "aicm/task-1", credential)
    finally:
        stop.set()
        await watcher

    # then: the work arrived, authenticated, and the token was never visible
    assert await served.head("aicm/task-1") == sha
    assert (await repo.remote_url()) == https.url("origin.git")
    assert {status for _, _, status in https.requests} >= {200, 401}
    assert any("git-receive-pack" in path for _, path, status in https.requests if status == 200)
    assert git_seen, "the watcher never saw git talking to the server"
    assert seen == []
    assert TOKEN not in caplog.text
    assert list((tmp_path / "auth").iterdir()) == []
    assert TOKEN not in (repo.path / "config").read_text()


async def test_a_wrong_or_missing_token_is_refused_without_showing_the_token(
    https: GitHttpsRemote, https_store: RepositoryStore
) -> None:
    for credential in (Credential(token="wrong-" + TOKEN), None):
        with pytest.raises(RemoteError) as error:
            await https_store.ensure(1, https.url("origin.git"), credential)
        assert TOKEN not in error.value.message
        assert (
            "Authentication failed" in error.value.message
            or "terminal prompts disabled" in error.value.message
        )
        assert not https_store.exists(1)


async def test_an_unreachable_remote_is_an_error_without_secrets(tmp_path: Path, git: Git) -> None:
    # given: a loopback port nobody listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = RepositoryStore(tmp_path / "ws", git)

    # then
    with pytest.raises(RemoteError) as error:
        await store.ensure(1, f"https://127.0.0.1:{port}/x.git", Credential(token=TOKEN))
    assert "Failed to connect" in error.value.message or "Could not connect" in error.value.message
    assert TOKEN not in error.value.message
    assert error.value.field == "repositoryUrl"
