"""The git side of projects and tasks (CONTRACT §8), wired to the settings and the database.

``aicm/workspaces/`` knows git and nothing else; this module knows which project a repository belongs to, its
(encrypted) credential, which branch a task works on and what to store on the task when a run ends. One
``Workspaces`` per process (the API uses it for baseRef checks, push and merge; the executor for runs)::

    tree = await workspaces.prepare(task)        # the agent's cwd: tree.path
    fields = await workspaces.save_work(task, tree)  # commit, changes, commits, push; stored on the task
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aicm import models
from aicm.config import Settings
from aicm.crypto import DecryptionError, SecretBox, load_or_create_key
from aicm.errors import AppError, BadUserInput
from aicm.metrics import record_git_operation
from aicm.workspaces import merging, worktrees
from aicm.workspaces.changes import changes as compute_changes
from aicm.workspaces.changes import commits as list_commits
from aicm.workspaces.credentials import Credential
from aicm.workspaces.git import Git
from aicm.workspaces.identity import DEFAULT_IDENTITY, Identity
from aicm.workspaces.repositories import REMOTE, Repository, RepositoryStore
from aicm.workspaces.urls import validate_repository_url
from aicm.workspaces.worktrees import BRANCH_PREFIX, Worktree

log = logging.getLogger("aicm.runner")

__all__ = ["CREDENTIAL_KINDS", "Workspaces", "encryption_key"]

CREDENTIAL_KINDS = ("token", "ssh_key")
MAX_MESSAGE = 200


def encryption_key(settings: Settings) -> str:
    """``security.encryption_key``, else (outside production) a key generated into the data directory."""
    if settings.security.encryption_key:
        return settings.security.encryption_key
    return load_or_create_key(Path(settings.app.data_dir) / "encryption_key")


def _now() -> datetime:
    return datetime.now(UTC)


def _associated_data(project_id: int) -> str:
    return f"project:{project_id}:repository"


def commit_message(prompt: str) -> str:
    """The prompt's first non-empty line, shortened."""
    line = next((line.strip() for line in prompt.splitlines() if line.strip()), "")
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 1] + "…"


def identity_of(user: models.User | None) -> Identity:
    """The task creator as commit author (AICode Manager when the user is gone or their name is unusable)."""
    if user is None:
        return DEFAULT_IDENTITY
    try:
        return Identity(user.name or user.email, user.email)
    except BadUserInput:
        return DEFAULT_IDENTITY


def branch_number(branch: str) -> int:
    """``aicm/task-12`` -> 12: the task whose worktree holds that branch."""
    return int(branch.removeprefix(BRANCH_PREFIX))


class Workspaces:
    def __init__(self, settings: Settings) -> None:
        runner = settings.runner
        self.root = Path(runner.workspace_root).expanduser().resolve()
        self.git = Git(timeout=runner.git_timeout, on_operation=record_git_operation)
        self.store = RepositoryStore(
            self.root, self.git, known_hosts=self.root / "known_hosts", auth_dir=self.root / ".auth"
        )
        self.box = SecretBox(encryption_key(settings))
        self.max_patch_bytes = runner.max_patch_bytes
        self.retention = runner.worktree_retention
        self.allow_local = settings.local_repositories_allowed

    # --- projects ------------------------------------------------------------------------------------

    def validate_url(self, url: str) -> str:
        """The repository URL to store ("" for none); ``BadUserInput`` (field repositoryUrl) otherwise."""
        if not url.strip():
            return ""
        url = validate_repository_url(url, allow_local=self.allow_local, forbidden_roots=[self.root])
        local = url.removeprefix("file://") if url.startswith(("/", "file://")) else None
        if local is not None and not Path(unquote(local)).is_dir():
            raise BadUserInput("Local repository path is not a directory", field="repositoryUrl")
        return url

    def seal(self, project_id: int, credential: Credential) -> tuple[str, str]:
        """(kind, encrypted secret) to store on the project."""
        if credential.token is not None:
            return "token", self.box.encrypt(credential.token, associated_data=_associated_data(project_id))
        assert credential.ssh_private_key is not None
        sealed = self.box.encrypt(credential.ssh_private_key, associated_data=_associated_data(project_id))
        return "ssh_key", sealed

    def credential(self, project: models.Project) -> Credential | None:
        if not project.credential_secret:
            return None
        try:
            secret = self.box.decrypt(project.credential_secret, associated_data=_associated_data(project.id))
        except DecryptionError:
            raise BadUserInput(
                "The project's credential cannot be decrypted (was security.encryption_key changed?); "
                "set it again",
                field="credential",
            ) from None
        if project.credential_kind == "ssh_key":
            return Credential(ssh_private_key=secret)
        return Credential(token=secret)

    async def repository(self, project: models.Project, *, fetch: bool = True) -> Repository:
        """The project's repository on this machine (cloned or made on first use), fetched."""
        credential = self.credential(project)
        existed = self.store.exists(project.id)
        repo = await self.store.ensure(project.id, url=project.repository_url or None, credential=credential)
        if existed and fetch:
            await repo.fetch(credential)
        if not project.default_branch:
            project.default_branch = await repo.default_branch() or "main"
            await models.Project.filter(id=project.id).update(default_branch=project.default_branch)
        return repo

    async def check_base_ref(self, project: models.Project, base_ref: str) -> None:
        """``BadUserInput`` (field baseRef) for a ref the repository lacks (checked at run if not cloned)."""
        if not self.store.exists(project.id):
            return
        repo = await self.repository(project, fetch=False)
        try:
            await repo.resolve(base_ref)
        except BadUserInput:
            if not project.repository_url:
                raise
            await repo.fetch(self.credential(project))  # it may be newer than our last fetch
            await repo.resolve(base_ref)

    async def check_branch(self, project: models.Project, branch: str) -> None:
        """``BadUserInput`` (field defaultBranch) for an invalid name, or one the cloned repository lacks."""
        repo = self.store.open(project.id)
        await repo.check_ref_name(branch, field="defaultBranch")
        if self.store.exists(project.id) and await repo.branch_tip(branch) is None:
            raise BadUserInput(f"The repository has no branch {branch!r}", field="defaultBranch")

    async def remove(self, project_id: int) -> None:
        await self.store.remove(project_id)

    # --- a task's run --------------------------------------------------------------------------------

    async def prepare(self, task: models.Task) -> Worktree:
        """The worktree the agent runs in: a new branch from the task's base, or (a follow-up) its parent's
        branch checked out again. Stores branch, baseRef and baseCommit on the task."""
        project: models.Project = task.project
        repo = await self.repository(project)
        parent = await models.Task.get_or_none(id=task.parent_id) if task.parent_id else None
        if parent is not None and parent.branch:
            task.branch, task.base_ref, task.base_commit = parent.branch, parent.base_ref, parent.base_commit
            await self._store(task, branch=task.branch, base_ref=task.base_ref, base_commit=task.base_commit)
            path = self.store.worktree_path(project.id, branch_number(task.branch))
            return await worktrees.recreate(repo, path, task.branch)
        base_ref = task.base_ref or project.default_branch or "main"
        base_commit = await repo.resolve(base_ref)
        branch = worktrees.task_branch(task.id)
        tree = await worktrees.create(
            repo, self.store.worktree_path(project.id, task.id), branch, base_commit
        )
        task.branch, task.base_ref, task.base_commit = branch, base_ref, base_commit
        await self._store(task, branch=branch, base_ref=base_ref, base_commit=base_commit)
        return tree

    async def save_work(self, task: models.Task, tree: Worktree) -> None:
        """After the agent's processes are gone: commit what it left, store head, commits and changes on
        every task of the branch, and push the branch when the project has a remote."""
        assert task.base_commit is not None
        creator = await models.User.get_or_none(id=task.created_by_id) if task.created_by_id else None  # type: ignore[attr-defined]
        await worktrees.commit_all(tree, identity_of(creator), commit_message(task.prompt))
        repo = tree.repository
        head = await repo.commit_of(f"refs/heads/{tree.branch}")
        assert head is not None
        found = await compute_changes(repo, task.base_commit, head, max_patch_bytes=self.max_patch_bytes)
        history = await list_commits(repo, task.base_commit, head)
        fields: dict[str, Any] = {
            "head_commit": head,
            "changes": found.to_json(),
            "changed_paths": sorted(found.paths()),
            "commits": [commit.to_dict() for commit in history],
        }
        if await repo.remote_url() is not None:
            await merging.push(repo, tree.branch, self.credential(task.project))
            fields["pushed_at"] = _now()
        await models.Task.filter(project_id=task.project.id, branch=tree.branch).update(**fields)

    async def salvage(self, task: models.Task) -> bool:
        """A task whose worker was lost: save what its worktree holds, when it is on this machine."""
        if not task.branch or task.base_commit is None:
            return False
        path = self.store.worktree_path(task.project.id, branch_number(task.branch))
        if not path.is_dir() or not self.store.exists(task.project.id):
            return False
        repo = self.store.open(task.project.id)
        await self.save_work(task, await worktrees.recreate(repo, path, task.branch))
        return True

    async def sweep(self) -> int:
        """Remove worktrees whose branch's tasks all ended more than ``runner.worktree_retention`` ago."""
        cutoff = _now() - timedelta(seconds=self.retention)
        removed = 0
        for tasks_dir in sorted((self.root / "projects").glob("*/tasks")):
            if not tasks_dir.parent.name.isdigit():
                continue
            project_id = int(tasks_dir.parent.name)
            for path in sorted(tasks_dir.iterdir()):
                if not path.name.isdigit() or not await self._expired(project_id, path.name, cutoff):
                    continue
                repo = self.store.open(project_id)
                async with repo.locked():
                    await worktrees.discard_worktree(repo, path)
                removed += 1
        return removed

    @staticmethod
    async def _expired(project_id: int, number: str, cutoff: datetime) -> bool:
        tasks = models.Task.filter(project_id=project_id, branch=worktrees.task_branch(int(number)))
        rows = await tasks.values_list("status", "finished_at")
        if not rows:
            return False
        return all(status in models.FINISHED and ended and ended < cutoff for status, ended in rows)

    @staticmethod
    async def _store(task: models.Task, **fields: Any) -> None:
        await models.Task.filter(id=task.id).update(**fields)

    # --- push and merge ------------------------------------------------------------------------------

    async def push(self, task: models.Task) -> datetime:
        project: models.Project = task.project
        if not task.branch:
            raise BadUserInput("The task has no branch yet", field="id")
        if not project.repository_url:
            raise BadUserInput("The project has no remote repository to push to", field="repositoryUrl")
        repo = await self.repository(project)
        await _sync_branch(repo, task.branch)
        await merging.push(repo, task.branch, self.credential(project))
        pushed = _now()
        await models.Task.filter(project_id=project.id, branch=task.branch).update(pushed_at=pushed)
        return pushed

    async def merge(self, task: models.Task, strategy: merging.MergeStrategy, author: Identity) -> datetime:
        """Merge the task's branch into its base branch (and push that); ``MergeConflict`` changes nothing."""
        project: models.Project = task.project
        if not task.branch or not task.base_ref:
            raise BadUserInput("The task has no branch yet", field="id")
        repo = await self.repository(project)
        await _sync_branch(repo, task.branch)
        await merging.merge(
            repo,
            task.branch,
            task.base_ref,
            strategy,
            author,
            message=commit_message(task.prompt) if strategy is merging.MergeStrategy.SQUASH else None,
            credential=self.credential(project),
        )
        merged = _now()
        await models.Task.filter(project_id=project.id, branch=task.branch).update(merged_at=merged)
        return merged


async def _sync_branch(repo: Repository, branch: str) -> None:
    """Make the local task branch from the remote's when this machine never had it (another worker ran it)."""
    if await repo.commit_of(f"refs/heads/{branch}") is not None:
        return
    remote = await repo.commit_of(f"refs/remotes/{REMOTE}/{branch}")
    if remote is None:
        raise BadUserInput(f"The task's branch {branch!r} no longer exists", field="branch")
    await repo.run("update-ref", f"refs/heads/{branch}", remote, "", op="update_ref")


def describe(exc: Exception) -> str:
    """A git failure as the user sees it (git's message, credentials already stripped)."""
    return exc.message if isinstance(exc, AppError) else "internal error"
