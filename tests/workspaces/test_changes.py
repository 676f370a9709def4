from __future__ import annotations

import pytest

from aicm.errors import BadUserInput
from aicm.workspaces.changes import FileStatus, TaskChanges, changes, commits, overlaps
from aicm.workspaces.repositories import Repository, RepositoryStore
from aicm.workspaces.worktrees import Worktree, commit_all, create, task_branch
from tests.workspaces.helpers import ALICE, Upstream, write


async def _task(store: RepositoryStore, repo: Repository, files: dict[str, str | bytes | None]) -> Worktree:
    tree = await create(repo, store.worktree_path(1, 1), task_branch(1), await repo.resolve("main"))
    write(tree.path, files)
    await commit_all(tree, ALICE, "Agent work")
    return tree


async def test_changes_list_each_file_with_status_counts_and_patch(
    store: RepositoryStore, repo: Repository
) -> None:
    # given
    files = {
        "README.md": "# Demo\n\nline one\nline 2\nline three\n",
        "src/app.py": None,
        "docs/naïve file.md": "x\n",
    }
    await _task(store, repo, files)

    # when
    found = await changes(repo, await repo.resolve("main"), "aicm/task-1")

    # then
    by_path = {f.path: f for f in found.files}
    assert (found.files_changed, found.additions, found.deletions, found.truncated) == (3, 2, 2, False)
    assert by_path["README.md"].status is FileStatus.MODIFIED
    assert (by_path["README.md"].additions, by_path["README.md"].deletions) == (1, 1)
    assert "-line two\n+line 2\n" in (by_path["README.md"].patch or "")
    assert by_path["src/app.py"].status is FileStatus.DELETED
    assert by_path["docs/naïve file.md"].status is FileStatus.ADDED
    assert (by_path["docs/naïve file.md"].patch or "").startswith("diff --git a/docs/naïve file.md")
    assert not any(f.binary or f.old_path for f in found.files)


async def test_a_base_branch_that_moves_on_does_not_change_the_tasks_changes(
    store: RepositoryStore, repo: Repository, upstream: Upstream
) -> None:
    # given
    await _task(store, repo, {"feature.txt": "feature\n"})
    before = await changes(repo, await repo.resolve("main"), "aicm/task-1")

    # when: others change the base branch, including the same file
    await upstream.commit({"feature.txt": "theirs\n", "README.md": "rewritten\n"})
    await repo.fetch()

    # then
    assert await changes(repo, await repo.resolve("main"), "aicm/task-1") == before
    assert [f.path for f in before.files] == ["feature.txt"]


async def test_renames_and_binary_files(store: RepositoryStore, repo: Repository) -> None:
    await _task(
        store, repo, {"src/app.py": None, "src/main.py": "print('hello')\n", "logo.png": b"\x89PNG\0\1\2"}
    )
    found = {f.path: f for f in (await changes(repo, await repo.resolve("main"), "aicm/task-1")).files}
    assert found["src/main.py"].status is FileStatus.RENAMED and found["src/main.py"].old_path == "src/app.py"
    assert found["logo.png"].binary and found["logo.png"].additions == 0
    assert "Binary files" in (found["logo.png"].patch or "")


async def test_patches_are_cut_at_the_limit_with_truncated_and_counts_stay_complete(
    store: RepositoryStore, repo: Repository
) -> None:
    # given: a 5,000-line file and a small one after it
    await _task(store, repo, {"a-big.txt": "".join(f"line {i}\n" for i in range(5000)), "b-small.txt": "s\n"})

    # when
    cut = await changes(repo, await repo.resolve("main"), "aicm/task-1", max_patch_bytes=1000)
    whole = await changes(repo, await repo.resolve("main"), "aicm/task-1")

    # then
    big, small = cut.files
    assert cut.truncated and not whole.truncated
    assert big.additions == 5000 and cut.additions == 5001
    assert big.patch is not None and len(big.patch.encode()) <= 1000 and big.patch.endswith("\n")
    assert small.patch is None
    assert whole.files[1].patch and whole.files[1].patch.endswith("+s\n")
    exact = sum(len((f.patch or "").encode()) for f in whole.files)
    assert not (
        await changes(repo, await repo.resolve("main"), "aicm/task-1", max_patch_bytes=exact)
    ).truncated
    assert (
        await changes(repo, await repo.resolve("main"), "aicm/task-1", max_patch_bytes=exact - 1)
    ).truncated


async def test_changes_round_trip_through_json(store: RepositoryStore, repo: Repository) -> None:
    await _task(store, repo, {"src/app.py": None, "src/main.py": "print('hello')\n", "bin": b"\0\1"})
    found = await changes(repo, await repo.resolve("main"), "aicm/task-1")
    assert TaskChanges.from_json(found.to_json()) == found
    assert '"oldPath"' not in found.to_json() and '"old_path":"src/app.py"' in found.to_json()


async def test_branches_without_common_history_are_bad_user_input(
    store: RepositoryStore, repo: Repository
) -> None:
    other = await store.ensure(2)
    await repo.run("fetch", "--quiet", str(other.path), "main:refs/heads/unrelated", op="t")
    with pytest.raises(BadUserInput) as error:
        await changes(repo, await repo.resolve("main"), "unrelated")
    assert error.value.field == "baseRef"


async def test_commits_lists_the_branchs_own_commits_oldest_first(
    store: RepositoryStore, repo: Repository
) -> None:
    tree = await _task(store, repo, {"one.txt": "1\n"})
    write(tree.path, {"two.txt": "2\n"})
    await commit_all(tree, ALICE, "Second run\n\nwith a body")
    found = await commits(repo, await repo.resolve("main"), "aicm/task-1")
    assert [c.message for c in found] == ["Agent work", "Second run\n\nwith a body"]
    assert {(c.author_name, c.author_email) for c in found} == {("Alice Example", "alice@example.com")}
    assert found[1].sha == await repo.commit_of("refs/heads/aicm/task-1")
    assert found[0].at.tzinfo is not None
    assert type(found[0]).from_dict(found[0].to_dict()) == found[0]


def test_overlaps_names_the_other_tasks_touching_the_same_paths() -> None:
    assert overlaps({1: ["a.py", "b.py"], 2: ["b.py"], 3: ["c.py"], 4: ["a.py", "a.py"]}) == {
        1: [2, 4],
        2: [1],
        3: [],
        4: [1],
    }
