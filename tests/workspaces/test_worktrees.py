from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aicm.errors import BadUserInput, Conflict
from aicm.workspaces.git import Git, GitError
from aicm.workspaces.repositories import Repository, RepositoryStore
from aicm.workspaces.worktrees import Worktree, commit_all, create, recreate, remove, task_branch
from tests.workspaces.helpers import ALICE, Upstream, sh, write


async def _task(store: RepositoryStore, repo: Repository, number: int) -> Worktree:
    return await create(repo, store.worktree_path(1, number), task_branch(number), await repo.resolve("main"))


async def _registered(repo: Repository) -> list[str]:
    listing = await repo.run("worktree", "list", "--porcelain", op="worktree")
    return [
        line.removeprefix("worktree ") for line in listing.text.splitlines() if line.startswith("worktree ")
    ]


async def _show(repo: Repository, ref: str, path: str) -> str:
    return (await repo.run("show", f"{ref}:{path}", op="show")).text


async def test_two_tasks_editing_one_file_each_get_exactly_their_own_change(
    store: RepositoryStore, repo: Repository
) -> None:
    # given
    first, second = await _task(store, repo, 1), await _task(store, repo, 2)

    # when: both agents rewrite the same line differently
    write(first.path, {"README.md": "# Demo by one\n"})
    write(second.path, {"README.md": "# Demo by two\n"})
    one, two = await commit_all(first, ALICE, "Task one"), await commit_all(second, ALICE, "Task two")

    # then
    assert first.path != second.path and one and two and one != two
    assert await _show(repo, "aicm/task-1", "README.md") == "# Demo by one\n"
    assert await _show(repo, "aicm/task-2", "README.md") == "# Demo by two\n"
    for branch, sha in (("aicm/task-1", one), ("aicm/task-2", two)):
        assert (await repo.run("rev-parse", f"{sha}^", op="t")).text.strip() == await repo.resolve("main")
        files = await repo.run("diff", "--name-only", "origin/main", branch, op="t")
        assert files.text.split() == ["README.md"]


async def test_commit_all_takes_new_changed_and_deleted_files_and_respects_gitignore(
    store: RepositoryStore, repo: Repository
) -> None:
    # given
    tree = await _task(store, repo, 1)
    write(tree.path, {"new/dir/file.txt": "new\n", "src/app.py": None, "README.md": "changed\n"})
    write(tree.path, {".gitignore": "*.log\n", "debug.log": "noise\n"})

    # when
    sha = await commit_all(tree, ALICE, "Add a feature")

    # then
    who = await repo.run("show", "--no-patch", "--format=%an|%ae|%cn|%s", sha or "", op="t")
    assert who.text.strip() == "Alice Example|alice@example.com|AICode Manager|Add a feature"
    files = await repo.run("diff-tree", "--no-commit-id", "--name-status", "-r", sha or "", op="t")
    assert files.text.splitlines() == [
        "A\t.gitignore",
        "M\tREADME.md",
        "A\tnew/dir/file.txt",
        "D\tsrc/app.py",
    ]
    status = await tree.run("status", "--porcelain", "--ignored", op="t")
    assert status.text == "!! debug.log\n"


async def test_commit_all_without_changes_makes_no_commit(store: RepositoryStore, repo: Repository) -> None:
    tree = await _task(store, repo, 1)
    assert await commit_all(tree, ALICE, "Nothing") is None
    assert await repo.commit_of("refs/heads/aicm/task-1") == await repo.resolve("main")


async def test_commits_the_agent_made_itself_are_kept_even_on_a_branch_it_switched_to(
    store: RepositoryStore, repo: Repository, git: Git
) -> None:
    # given: the agent commits, switches to a branch of its own, commits again and leaves a file
    tree = await _task(store, repo, 1)
    write(tree.path, {"one.txt": "1\n"})
    await sh(git, "add", "one.txt", cwd=tree.path)
    await sh(git, "commit", "--quiet", "-m", "agent commit one", cwd=tree.path)
    await sh(git, "checkout", "--quiet", "-b", "agent-branch", cwd=tree.path)
    write(tree.path, {"two.txt": "2\n"})
    await sh(git, "add", "two.txt", cwd=tree.path)
    await sh(git, "commit", "--quiet", "-m", "agent commit two", cwd=tree.path)
    write(tree.path, {"three.txt": "3\n"})

    # when
    await commit_all(tree, ALICE, "Left over")

    # then
    log = await repo.run("log", "--format=%s", "origin/main..aicm/task-1", op="t")
    assert log.text.split("\n")[:3] == ["Left over", "agent commit two", "agent commit one"]
    head = await tree.run("symbolic-ref", "HEAD", op="t")
    assert head.text.strip() == "refs/heads/aicm/task-1"
    assert (await tree.run("status", "--porcelain", op="t")).text == ""


async def test_an_agent_killed_in_the_middle_of_a_git_command_still_gets_its_files_committed(
    store: RepositoryStore, repo: Repository
) -> None:
    # given: the locks a killed `git add` / `git commit` leaves behind
    tree = await _task(store, repo, 1)
    write(tree.path, {"half.txt": "written before the kill\n"})
    (tree.admin_dir / "index.lock").write_text("")
    (repo.path / "refs" / "heads" / "aicm" / "task-1.lock").write_text("")

    # when
    sha = await commit_all(tree, ALICE, "Cancelled")

    # then
    assert await _show(repo, sha or "", "half.txt") == "written before the kill\n"


async def test_tasks_of_one_project_start_at_once_without_tripping_over_each_other(
    store: RepositoryStore, repo: Repository
) -> None:
    base = await repo.resolve("main")
    trees = await asyncio.gather(
        *(create(repo, store.worktree_path(1, n), task_branch(n), base) for n in range(1, 5)), repo.fetch()
    )
    assert len({tree.path for tree in trees[:4]}) == 4
    assert len(await _registered(repo)) == 5


async def test_a_git_file_the_agent_rewrote_cannot_make_the_server_run_its_commands(
    store: RepositoryStore, repo: Repository, git: Git, tmp_path: Path
) -> None:
    # given: the agent points its worktree's .git at a repository whose config runs a command
    tree = await _task(store, repo, 1)
    evil = tmp_path / "evil"
    await sh(git, "init", "--quiet", str(evil))
    pwned = tmp_path / "pwned"
    with (evil / ".git" / "config").open("a") as config:
        config.write(f"[core]\n\tfsmonitor = touch {pwned}\n[diff]\n\texternal = touch {pwned}\n")
    (tree.path / ".git").write_text(f"gitdir: {evil / '.git'}\n")
    write(tree.path, {"work.txt": "work\n"})

    # when
    sha = await commit_all(tree, ALICE, "Work")

    # then
    assert not pwned.exists()
    assert await _show(repo, sha or "", "work.txt") == "work\n"
    assert await repo.commit_of("refs/heads/aicm/task-1") == sha

    # when: the next run of the task opens its worktree
    await recreate(repo, tree.path, "aicm/task-1")

    # then: the .git file points home again, and plain git in the worktree sees the task branch
    assert (tree.path / ".git").read_text() == f"gitdir: {tree.admin_dir}\n"
    assert (await sh(git, "rev-parse", "HEAD", cwd=tree.path)).strip() == sha


async def test_a_removed_worktree_comes_back_from_its_branch(
    store: RepositoryStore, repo: Repository
) -> None:
    # given
    tree = await _task(store, repo, 1)
    write(tree.path, {"result.txt": "kept\n"})
    sha = await commit_all(tree, ALICE, "Result")

    # when
    await remove(tree)

    # then
    assert not tree.path.exists()
    assert await repo.commit_of("refs/heads/aicm/task-1") == sha
    again = await recreate(repo, tree.path, "aicm/task-1")
    assert (again.path / "result.txt").read_text() == "kept\n"
    assert again.admin_dir.is_dir()
    assert await recreate(repo, tree.path, "aicm/task-1") == again


async def test_recreate_replaces_a_half_made_directory(store: RepositoryStore, repo: Repository) -> None:
    tree = await _task(store, repo, 1)
    await remove(tree)
    write(tree.path, {"junk.txt": "left by a crash\n"})
    again = await recreate(repo, tree.path, "aicm/task-1")
    assert not (again.path / "junk.txt").exists()
    assert (again.path / "README.md").exists()


async def test_another_worker_recreates_a_task_from_the_remote(
    store: RepositoryStore, repo: Repository, upstream: Upstream, tmp_path: Path, git: Git
) -> None:
    # given: worker A ran the task and pushed its branch
    tree = await _task(store, repo, 1)
    write(tree.path, {"a.txt": "from worker A\n"})
    sha = await commit_all(tree, ALICE, "On A")
    await repo.run("push", "--quiet", "origin", "aicm/task-1", op="t")

    # when: worker B (its own disk) fetches and opens the task
    other = await RepositoryStore(tmp_path / "worker-b", git).ensure(1, upstream.url)
    again = await recreate(other, tmp_path / "worker-b" / "tree", "aicm/task-1")

    # then
    assert (again.path / "a.txt").read_text() == "from worker A\n"
    assert await other.commit_of("refs/heads/aicm/task-1") == sha


async def test_a_missing_branch_is_bad_user_input(store: RepositoryStore, repo: Repository) -> None:
    with pytest.raises(BadUserInput) as error:
        await recreate(repo, store.worktree_path(1, 5), "aicm/task-5")
    assert error.value.field == "branch"
    assert not store.worktree_path(1, 5).exists()


async def test_a_failed_create_leaves_no_worktree_and_no_branch(
    store: RepositoryStore, repo: Repository
) -> None:
    # given
    path = store.worktree_path(1, 1)

    # when
    with pytest.raises(GitError):
        await create(repo, path, "aicm/task-1", "0" * 40)

    # then
    assert not path.exists()
    assert await repo.commit_of("refs/heads/aicm/task-1") is None
    assert await _registered(repo) == [str(repo.path)]


async def test_creating_a_branch_that_exists_is_a_conflict(store: RepositoryStore, repo: Repository) -> None:
    await _task(store, repo, 2)
    with pytest.raises(Conflict):
        await create(repo, store.worktree_path(1, 3), "aicm/task-2", await repo.resolve("main"))
    assert not store.worktree_path(1, 3).exists()
