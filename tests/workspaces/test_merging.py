from __future__ import annotations

import pytest

from aicm.errors import BadUserInput
from aicm.workspaces.merging import MergeConflict, MergeStrategy, PushRejected, merge, push
from aicm.workspaces.repositories import Repository, RepositoryStore
from aicm.workspaces.worktrees import Worktree, commit_all, create, task_branch
from tests.workspaces.helpers import ALICE, BOB, Upstream, write


async def _task(
    store: RepositoryStore, repo: Repository, number: int, files: dict[str, str | bytes | None]
) -> Worktree:
    path = store.worktree_path(1, number)
    tree = await create(repo, path, task_branch(number), await repo.resolve("main"))
    write(tree.path, files)
    await commit_all(tree, ALICE, f"Task {number}")
    return tree


async def _line(repo: Repository, *args: str) -> str:
    return (await repo.run(*args, op="t")).text.strip()


async def test_merging_the_first_task_works_and_the_second_conflicts_changing_nothing(
    store: RepositoryStore, repo: Repository, upstream: Upstream
) -> None:
    # given: two tasks rewrote the same line
    first = await _task(store, repo, 1, {"README.md": "# one\n"})
    second = await _task(store, repo, 2, {"README.md": "# two\n"})
    main_before = await upstream.head()

    # when
    merged = await merge(repo, "aicm/task-1", "main", MergeStrategy.MERGE, BOB)

    # then: the remote's main is a merge commit of the old main and the task
    assert merged.previous == main_before and await upstream.head() == merged.commit
    parents = await _line(repo, "rev-list", "--parents", "-n1", merged.commit)
    assert parents.split()[1:] == [main_before, await repo.commit_of("refs/heads/aicm/task-1")]
    assert await _line(repo, "show", "--no-patch", "--format=%an|%s", merged.commit) == (
        "Bob Example|Merge branch 'aicm/task-1' into main"
    )

    # when
    with pytest.raises(MergeConflict) as conflict:
        await merge(repo, "aicm/task-2", "main", MergeStrategy.MERGE, BOB)

    # then: nothing moved, nothing is left over, both task worktrees are untouched
    assert conflict.value.code == "CONFLICT" and conflict.value.files == ["README.md"]
    assert await upstream.head() == merged.commit
    assert await repo.resolve("main") == merged.commit
    listing = await _line(repo, "worktree", "list", "--porcelain")
    assert [line for line in listing.splitlines() if line.startswith("worktree ")] == [
        f"worktree {path}" for path in (repo.path, first.path, second.path)
    ]
    assert not list(repo.path.parent.glob(".merge-*"))
    for tree, text in ((first, "# one\n"), (second, "# two\n")):
        assert (await tree.run("status", "--porcelain", op="t")).text == ""
        assert (tree.path / "README.md").read_text() == text


async def test_squash_makes_one_commit_on_top_of_the_base(
    store: RepositoryStore, repo: Repository, upstream: Upstream
) -> None:
    # given: a task with two commits
    tree = await _task(store, repo, 1, {"a.txt": "a\n"})
    write(tree.path, {"b.txt": "b\n"})
    await commit_all(tree, ALICE, "More")
    base = await upstream.head()

    # when
    merged = await merge(repo, "aicm/task-1", "main", MergeStrategy.SQUASH, BOB, message="Add a and b")

    # then
    assert await _line(repo, "rev-list", "--parents", "-n1", merged.commit) == f"{merged.commit} {base}"
    assert (
        await _line(repo, "show", "--no-patch", "--format=%an|%s", merged.commit) == "Bob Example|Add a and b"
    )
    assert await _line(repo, "diff", "--name-only", base, merged.commit) == "a.txt\nb.txt"
    assert await upstream.head() == merged.commit


async def test_rebase_replays_the_tasks_commits_on_the_moved_base(
    store: RepositoryStore, repo: Repository, upstream: Upstream
) -> None:
    # given: main moved on after the task started
    await _task(store, repo, 1, {"a.txt": "a\n"})
    moved = await upstream.commit({"other.txt": "other\n"})
    await repo.fetch()

    # when
    merged = await merge(repo, "aicm/task-1", "main", MergeStrategy.REBASE, BOB)

    # then: linear history, the task's author kept
    assert await _line(repo, "rev-list", "--parents", "-n1", merged.commit) == f"{merged.commit} {moved}"
    assert await _line(repo, "show", "--no-patch", "--format=%an|%s", merged.commit) == "Alice Example|Task 1"
    assert await upstream.head() == merged.commit


async def test_a_branch_already_in_the_base_merges_to_nothing(
    store: RepositoryStore, repo: Repository
) -> None:
    await create(repo, store.worktree_path(1, 1), "aicm/task-1", await repo.resolve("main"))
    result = await merge(repo, "aicm/task-1", "main", MergeStrategy.SQUASH, BOB)
    assert result.previous == result.commit == await repo.resolve("main")


async def test_without_a_remote_the_local_base_branch_moves(store: RepositoryStore) -> None:
    repo = await store.ensure(1)
    await _task(store, repo, 1, {"a.txt": "a\n"})
    merged = await merge(repo, "aicm/task-1", "main", MergeStrategy.REBASE, BOB)
    assert await repo.resolve("main") == merged.commit == await repo.commit_of("refs/heads/aicm/task-1")
    with pytest.raises(BadUserInput, match="no remote"):
        await push(repo, "aicm/task-1")


async def test_merging_into_a_ref_that_is_not_a_branch_is_bad_user_input(
    store: RepositoryStore, repo: Repository
) -> None:
    await _task(store, repo, 1, {"a.txt": "a\n"})
    with pytest.raises(BadUserInput) as error:
        await merge(repo, "aicm/task-1", "no-such-branch", MergeStrategy.MERGE, BOB)
    assert error.value.field == "baseRef"


async def test_push_sends_the_task_branch_and_a_rejected_push_is_a_clear_error(
    store: RepositoryStore, repo: Repository, upstream: Upstream
) -> None:
    # given
    tree = await _task(store, repo, 1, {"a.txt": "a\n"})

    # when
    pushed = await push(repo, "aicm/task-1")

    # then
    assert await upstream.head("aicm/task-1") == pushed
    assert await repo.commit_of("refs/remotes/origin/aicm/task-1") == pushed

    # given: someone else force-pushed another history to that branch, and the task goes on here
    await upstream.commit({"x.txt": "x\n"})
    force = ["push", "--quiet", "--force", "origin", "HEAD:refs/heads/aicm/task-1"]
    await upstream.git.run(force, op="t", cwd=upstream.work)
    write(tree.path, {"b.txt": "b\n"})
    await commit_all(tree, ALICE, "Follow-up")

    # then
    with pytest.raises(PushRejected) as error:
        await push(repo, "aicm/task-1")
    assert error.value.code == "CONFLICT" and "rejected" in error.value.message
    assert await upstream.head("aicm/task-1") != await repo.commit_of("refs/heads/aicm/task-1")
