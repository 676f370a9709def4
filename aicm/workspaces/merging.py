"""Merge a task's branch into its base branch, and push branches to the project's remote.

A merge is made in a temporary detached worktree (never the task's), so a conflict leaves nothing behind:
the temporary worktree is discarded and no ref has moved. The result becomes the base branch only at the
end: pushed to the remote when the project has one (a push the remote rejects changes nothing here either),
else by a compare-and-swap of the local branch::

    result = await merge(repo, task_branch(7), "main", MergeStrategy.SQUASH, Identity(name, email),
                         message=prompt_first_line, credential=credential)
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from enum import StrEnum

from aicm.errors import BadUserInput, Conflict
from aicm.workspaces.credentials import Credential
from aicm.workspaces.git import GitError, RemoteError, summarize
from aicm.workspaces.identity import DEFAULT_IDENTITY, Identity
from aicm.workspaces.repositories import REMOTE, Repository
from aicm.workspaces.worktrees import Worktree, add_worktree, discard_worktree

__all__ = ["MergeConflict", "MergeResult", "MergeStrategy", "PushRejected", "merge", "push"]


class MergeStrategy(StrEnum):
    MERGE = "MERGE"
    SQUASH = "SQUASH"
    REBASE = "REBASE"


class MergeConflict(Conflict):
    """The branch does not merge cleanly; ``files`` are the conflicting paths. Nothing was changed."""

    def __init__(self, branch: str, into: str, files: list[str]) -> None:
        shown = ", ".join(files[:10]) + (f" and {len(files) - 10} more" if len(files) > 10 else "")
        super().__init__(f"Merging {branch} into {into} conflicts in {shown or 'the history'}", files=files)
        self.files = files


class PushRejected(Conflict):
    """The remote refused the push (it has commits we do not, or a protection rule)."""


@dataclass(frozen=True)
class MergeResult:
    previous: str  # the base branch before
    commit: str  # the base branch now (equal to ``previous`` when the branch was already merged)


async def merge(
    repo: Repository,
    branch: str,
    into: str,
    strategy: MergeStrategy,
    author: Identity,
    *,
    message: str | None = None,
    committer: Identity = DEFAULT_IDENTITY,
    credential: Credential | None = None,
) -> MergeResult:
    """Merge ``branch`` into the branch ``into`` and publish it (push when there is a remote)."""
    async with repo.locked():
        target = await repo.branch_tip(into)
        if target is None:
            raise BadUserInput(f"The base ref {into!r} is not a branch of the repository", field="baseRef")
        tip = await repo.commit_of(f"refs/heads/{branch}")
        if tip is None:
            raise BadUserInput(f"The task's branch {branch!r} no longer exists", field="branch")
        if await _is_ancestor(repo, tip, target):
            return MergeResult(target, target)
        start = tip if strategy is MergeStrategy.REBASE else target
        path = repo.path.parent / f".merge-{secrets.token_hex(6)}"
        scratch = await add_worktree(repo, path, "", "--detach", str(path), start)
        try:
            env = {**author.author_env(), **committer.committer_env()}
            text = message or _default_message(strategy, branch, into)
            result = await _apply(scratch, strategy, branch, into, tip, target, text, env)
        finally:
            await asyncio.shield(discard_worktree(repo, path))
        if result != target:
            await _publish(repo, into, previous=target, commit=result, credential=credential)
        return MergeResult(target, result)


def _default_message(strategy: MergeStrategy, branch: str, into: str) -> str:
    if strategy is MergeStrategy.SQUASH:
        return f"{branch} (squashed)"
    return f"Merge branch '{branch}' into {into}"


async def _apply(
    scratch: Worktree,
    strategy: MergeStrategy,
    branch: str,
    into: str,
    tip: str,
    target: str,
    message: str,
    env: dict[str, str],
) -> str:
    """Make the merged commit in ``scratch`` and return it."""
    if strategy is MergeStrategy.REBASE:
        attempt = await scratch.run(
            "rebase", "--quiet", "--no-autosquash", target, op="rebase", env=env, ok_codes=(0, 1)
        )
    elif strategy is MergeStrategy.SQUASH:
        attempt = await scratch.run("merge", "--squash", "--quiet", tip, op="merge", env=env, ok_codes=(0, 1))
    else:
        attempt = await scratch.run(
            "merge", "--no-ff", "--quiet", "-m", message, tip, op="merge", env=env, ok_codes=(0, 1)
        )
    if attempt.returncode != 0:
        unmerged = await scratch.run("diff", "--name-only", "-z", "--diff-filter=U", op="diff")
        files = sorted({name for name in unmerged.text.split("\0") if name})
        if files or "CONFLICT" in attempt.text + attempt.stderr:
            raise MergeConflict(branch, into, files)
        raise GitError(f"git {strategy.lower()} failed: {summarize(attempt.stderr, ())}", op="merge")
    if strategy is MergeStrategy.SQUASH:
        staged = await scratch.run("diff", "--cached", "--quiet", op="diff", ok_codes=(0, 1))
        if staged.returncode == 0:
            return target  # the branch's changes are already on the base branch
        await scratch.run("commit", "--quiet", "--no-verify", "-m", message, op="commit", env=env)
    return (await scratch.run("rev-parse", "HEAD", op="rev_parse")).text.strip()


async def _is_ancestor(repo: Repository, older: str, newer: str) -> bool:
    result = await repo.run("merge-base", "--is-ancestor", older, newer, op="merge_base", ok_codes=(0, 1))
    return result.returncode == 0


async def _publish(
    repo: Repository, into: str, *, previous: str, commit: str, credential: Credential | None
) -> None:
    local = f"refs/heads/{into}"
    has_local = await repo.commit_of(local) is not None
    if await repo.remote_url() is not None:
        await _push(repo, commit, into, credential)
        if has_local:
            await repo.run("update-ref", local, commit, op="update_ref")
        return
    moved = await repo.run("update-ref", local, commit, previous, op="update_ref", ok_codes=(0, 128))
    if moved.returncode != 0:
        raise Conflict(f"The branch {into!r} moved while merging; try again", field="baseRef")


async def push(repo: Repository, branch: str, credential: Credential | None = None) -> str:
    """Push the local ``branch`` to the remote's branch of the same name; the commit pushed."""
    async with repo.locked():
        commit = await repo.commit_of(f"refs/heads/{branch}")
        if commit is None:
            raise BadUserInput(f"The branch {branch!r} does not exist", field="branch")
        await _push(repo, commit, branch, credential)
        return commit


async def _push(repo: Repository, commit: str, branch: str, credential: Credential | None) -> None:
    if await repo.remote_url() is None:
        raise BadUserInput("The project has no remote repository to push to", field="repositoryUrl")
    result = await repo.run_remote(
        "push",
        "--porcelain",
        REMOTE,
        f"{commit}:refs/heads/{branch}",
        op="push",
        credential=credential,
        ok_codes=(0, 1),
    )
    if result.returncode == 0:
        await repo.run("update-ref", f"refs/remotes/{REMOTE}/{branch}", commit, op="update_ref")
        return
    secrets_ = credential.secrets() if credential else ()
    rejected = [line for line in result.text.splitlines() if line.startswith("!")]
    if rejected:
        reason = rejected[0].split("\t")[-1]
        raise PushRejected(f"The remote rejected the push of {branch}: {summarize(reason, secrets_)}")
    raise RemoteError(f"git push failed: {summarize(result.stderr, secrets_)}", op="push", returncode=1)
