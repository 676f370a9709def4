"""A task's git worktree on its own branch ``aicm/task-<number>``.

Git commands on a worktree name its administrative directory (``<repo>/worktrees/<name>``) and the work tree
explicitly instead of trusting the ``.git`` file inside it: the agent can write that file, and pointing it at
a repository of its own (with, say, a ``core.fsmonitor`` command in its config) must not make the server run
anything. A worktree that fails half-way is removed again; removing a worktree keeps its branch, and
``recreate`` checks the branch out again (taking it from the remote when this machine never had it)::

    tree = await create(repo, store.worktree_path(project.id, task.number), task_branch(task.number), base)
    ...  # the agent runs in tree.path
    await commit_all(tree, Identity(user.name, user.email), prompt.splitlines()[0])
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aicm.errors import BadUserInput, Conflict
from aicm.workspaces.git import GitError, GitResult
from aicm.workspaces.identity import DEFAULT_IDENTITY, Identity
from aicm.workspaces.repositories import REMOTE, Repository

__all__ = [
    "Worktree",
    "add_worktree",
    "commit_all",
    "create",
    "discard_worktree",
    "prune",
    "recreate",
    "remove",
    "task_branch",
]

BRANCH_PREFIX = "aicm/task-"
DEFAULT_MESSAGE = "Changes by AICode Manager"
# What an interrupted merge, cherry-pick or rebase leaves in a worktree's administrative directory.
OPERATION_STATE = (
    "MERGE_HEAD",
    "MERGE_MSG",
    "MERGE_MODE",
    "CHERRY_PICK_HEAD",
    "REVERT_HEAD",
    "rebase-merge",
    "rebase-apply",
    "AUTO_MERGE",
)


def task_branch(number: int) -> str:
    return f"{BRANCH_PREFIX}{number}"


@dataclass(frozen=True)
class Worktree:
    repository: Repository
    path: Path
    branch: str
    admin_dir: Path

    async def run(self, *args: str, op: str, **options: Any) -> GitResult:
        return await self.repository.git.run(
            ["--git-dir", str(self.admin_dir), "--work-tree", str(self.path), *args],
            op=op,
            cwd=self.path,
            **options,
        )


def _admin_dir(repo: Repository, path: Path) -> Path | None:
    """The administrative directory git keeps for the worktree at ``path`` (read from the repository side)."""
    wanted = (path / ".git").resolve()
    for gitdir in (repo.path / "worktrees").glob("*/gitdir"):
        with contextlib.suppress(OSError):
            if Path(gitdir.read_text().strip()).resolve() == wanted:
                return gitdir.parent
    return None


async def discard_worktree(repo: Repository, path: Path) -> None:
    """Remove whatever is left of a worktree at ``path`` (registered or not); the branch stays.

    The caller holds the repository's lock (as for ``add_worktree``)."""
    if _admin_dir(repo, path) is not None:
        await repo.run(
            "worktree", "remove", "--force", "--force", str(path), op="worktree", ok_codes=(0, 128)
        )
    await asyncio.to_thread(shutil.rmtree, path, True)
    await repo.run("worktree", "prune", op="worktree")


async def add_worktree(repo: Repository, path: Path, branch: str, *args: str) -> Worktree:
    """``git worktree add <args>`` for ``path``; on any failure nothing of it is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        await repo.run("worktree", "add", "--quiet", *args, op="worktree")
        admin = _admin_dir(repo, path)
        if admin is None:
            raise GitError(f"git did not register the worktree at {path}", op="worktree")
    except BaseException:
        await asyncio.shield(discard_worktree(repo, path))
        raise
    return Worktree(repo, path, branch, admin)


async def create(repo: Repository, path: Path, branch: str, base_commit: str) -> Worktree:
    """A new worktree at ``path`` on a new ``branch`` made from ``base_commit``; nothing left on failure."""
    async with repo.locked():
        if await repo.commit_of(f"refs/heads/{branch}") is not None:
            raise Conflict(f"Branch {branch!r} already exists", field="branch")
        try:
            return await add_worktree(repo, path, branch, "-b", branch, str(path), base_commit)
        except BaseException:
            await asyncio.shield(repo.run("branch", "-D", branch, op="branch", ok_codes=(0, 1)))
            raise


async def recreate(repo: Repository, path: Path, branch: str) -> Worktree:
    """The worktree of ``branch`` at ``path``: the existing one, or checked out again from the branch.

    An existing worktree gets its ``.git`` file rewritten (the agent may have changed or deleted it). When
    the remote has the branch further ahead (another worker ran a follow-up and pushed), the local branch is
    moved forward before checking it out again.
    """
    async with repo.locked():
        admin = _admin_dir(repo, path)
        if admin is not None and _reattach(path, admin):
            return Worktree(repo, path, branch, admin)
        await discard_worktree(repo, path)
        await _sync_branch(repo, branch)
        return await add_worktree(repo, path, branch, str(path), branch)


def _reattach(path: Path, admin: Path) -> bool:
    """Point the worktree's ``.git`` file at ``admin`` again; False when the directory is gone."""
    if not path.is_dir():
        return False
    (path / ".git").write_text(f"gitdir: {admin}\n")
    return True


async def _sync_branch(repo: Repository, branch: str) -> None:
    local = await repo.commit_of(f"refs/heads/{branch}")
    remote = await repo.commit_of(f"refs/remotes/{REMOTE}/{branch}")
    if local is None and remote is None:
        raise BadUserInput(f"The task's branch {branch!r} no longer exists", field="branch")
    if remote is None or remote == local:
        return
    if local is None or await _is_ancestor(repo, local, remote):
        await repo.run("update-ref", f"refs/heads/{branch}", remote, local or "", op="update_ref")


async def _is_ancestor(repo: Repository, older: str, newer: str) -> bool:
    result = await repo.run("merge-base", "--is-ancestor", older, newer, op="merge_base", ok_codes=(0, 1))
    return result.returncode == 0


async def remove(worktree: Worktree) -> None:
    """Delete the worktree's directory; its branch (and so every commit) stays."""
    async with worktree.repository.locked():
        await discard_worktree(worktree.repository, worktree.path)


async def prune(repo: Repository) -> None:
    """Forget worktrees whose directories are gone."""
    async with repo.locked():
        await repo.run("worktree", "prune", op="worktree")


async def commit_all(
    worktree: Worktree, author: Identity, message: str, *, committer: Identity = DEFAULT_IDENTITY
) -> str | None:
    """Commit everything the agent left in the worktree (new, changed and deleted files; ``.gitignore`` is
    respected) on the task's branch. Returns the new commit, or None when there was nothing to commit.

    Commits the agent made itself are kept: when it left HEAD detached or on another branch that descends
    from the task branch, the task branch moves there. HEAD ends attached to the task branch, with no
    merge or rebase in progress. No hook runs (``commit-tree`` runs none; hooks are off anyway). Call it
    only once the agent's processes are gone.
    """
    repo = worktree.repository
    ref = f"refs/heads/{worktree.branch}"
    # The agent's processes have ended, so a lock one of its git commands left behind (killed mid-way on
    # cancel or timeout) is stale and would make every command below fail.
    for lock in (
        worktree.admin_dir / "index.lock",
        worktree.admin_dir / "HEAD.lock",
        repo.path / f"{ref}.lock",
    ):
        lock.unlink(missing_ok=True)
    tip = await repo.commit_of(ref)
    if tip is None:
        raise BadUserInput(f"The task's branch {worktree.branch!r} no longer exists", field="branch")
    await worktree.run("add", "--all", op="add")
    tree = (await worktree.run("write-tree", op="write_tree")).text.strip()
    head = await worktree.run("rev-parse", "--verify", "--quiet", "HEAD", op="rev_parse", ok_codes=(0, 1))
    parent = tip
    head_sha = head.text.strip()
    if head_sha and head_sha != tip and await _is_ancestor(repo, tip, head_sha):
        parent = head_sha
    commit = None
    parent_tree = (await repo.run("rev-parse", f"{parent}^{{tree}}", op="rev_parse")).text.strip()
    if tree != parent_tree:
        env = {**author.author_env(), **committer.committer_env()}
        result = await repo.run(
            "commit-tree", tree, "-p", parent, "-m", message or DEFAULT_MESSAGE, op="commit", env=env
        )
        commit = result.text.strip()
    target = commit or parent
    if target != tip:
        await repo.run("update-ref", ref, target, tip, op="update_ref")
    for name in OPERATION_STATE:
        state = worktree.admin_dir / name
        if state.is_dir():
            shutil.rmtree(state, ignore_errors=True)
        else:
            state.unlink(missing_ok=True)
    await worktree.run("symbolic-ref", "HEAD", ref, op="symbolic_ref")
    return commit
