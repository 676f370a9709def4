from __future__ import annotations

from pathlib import Path

import pytest

from aicm.errors import BadUserInput
from aicm.workspaces.git import Git, GitError, RemoteError
from aicm.workspaces.repositories import Repository, RepositoryStore
from tests.workspaces.helpers import Upstream, sh


async def test_a_clone_lives_under_the_project_id_and_resolves_the_remotes_refs(
    store: RepositoryStore, upstream: Upstream, git: Git
) -> None:
    # given
    await sh(git, "tag", "v1", cwd=upstream.work)
    await sh(git, "push", "--quiet", "origin", "v1", cwd=upstream.work)
    main = await upstream.head()

    # when
    repo = await store.ensure(7, upstream.url)

    # then
    assert repo.path == store.root / "projects" / "7" / "repo.git"
    assert await repo.default_branch() == "main"
    assert await repo.resolve("main") == main
    assert await repo.resolve("v1") == main
    assert await repo.resolve(main[:10]) == main
    assert await repo.resolve("origin/main") == main
    assert not list(repo.path.parent.glob(".repo.git.*"))


async def test_the_default_branch_comes_from_the_remotes_head(tmp_path: Path, git: Git) -> None:
    remote = Upstream(git, tmp_path, branch="trunk")
    await remote.create({"a.txt": "a\n"})
    repo = await RepositoryStore(tmp_path / "ws", git).ensure(1, remote.url)
    assert await repo.default_branch() == "trunk"
    assert await repo.remote_default_branch() == "trunk"


async def test_without_url_the_repository_starts_with_one_empty_commit(store: RepositoryStore) -> None:
    repo = await store.ensure(3)
    assert await repo.default_branch() == "main"
    assert await repo.remote_url() is None
    log = await repo.run("log", "--format=%an <%ae>|%s", "main", op="log")
    assert log.text.splitlines() == ["AICode Manager <aicm@localhost>|Initial commit"]
    await repo.fetch()  # nothing to fetch, no error


@pytest.mark.parametrize("ref", ["nope", "v9.9", "deadbeef", "--upload-pack=touch x", "a..b", "bad\nref", ""])
async def test_an_unknown_or_invalid_ref_is_bad_user_input_on_base_ref(repo: Repository, ref: str) -> None:
    with pytest.raises(BadUserInput) as error:
        await repo.resolve(ref)
    assert error.value.field == "baseRef"


async def test_fetch_brings_what_was_pushed_since(repo: Repository, upstream: Upstream) -> None:
    before = await repo.resolve("main")
    after = await upstream.commit({"new.txt": "new\n"})
    assert await repo.resolve("main") == before
    await repo.fetch()
    assert await repo.resolve("main") == after


async def test_an_unreachable_remote_is_an_error_and_leaves_nothing(
    store: RepositoryStore, tmp_path: Path
) -> None:
    with pytest.raises(RemoteError) as error:
        await store.ensure(4, f"file://{tmp_path}/missing.git")
    assert error.value.code == "BAD_USER_INPUT" and error.value.field == "repositoryUrl"
    assert "does not appear to be a git repository" in error.value.message
    assert not store.exists(4)
    assert [p.name for p in store.project_dir(4).iterdir()] == ["lock"]


async def test_ensure_keeps_the_repository_and_follows_a_new_url(
    store: RepositoryStore, repo: Repository, tmp_path: Path, git: Git
) -> None:
    # given: the project moves to another remote
    other = Upstream(git, tmp_path / "other")
    other_main = await other.create({"moved.txt": "moved\n"})

    # when
    again = await store.ensure(1, other.url)

    # then
    assert again.path == repo.path
    assert await again.remote_url() == other.url
    assert await again.resolve("main") == other_main


async def test_remove_deletes_everything_and_the_next_project_starts_clean(
    store: RepositoryStore, repo: Repository
) -> None:
    # given: a file left in the project's storage
    (store.project_dir(1) / "tasks").mkdir()
    (store.project_dir(1) / "tasks" / "left.txt").write_text("old")

    # when
    await store.remove(1)

    # then
    assert not store.project_dir(1).exists()
    assert not [p for p in (store.root / "projects").iterdir()]
    fresh = await store.ensure(2)
    assert not (store.project_dir(2) / "tasks").exists()
    assert await fresh.resolve("main")


async def test_the_file_lock_keeps_a_second_process_out(
    repo: Repository, store: RepositoryStore, git: Git
) -> None:
    # given: another process's store (its own asyncio locks) on the same disk
    other = RepositoryStore(store.root, git, lock_timeout=0.3).open(1)

    # then
    async with repo.locked():
        with pytest.raises(GitError, match="busy"):
            await other.fetch()
    await other.fetch()
