"""Git workspaces (CONTRACT §8): a repository per project, a worktree and branch per task, their changes,
merges and pushes. Everything goes through the ``git`` binary (``git.py``); no config or database here."""

from aicm.workspaces.changes import Commit, FileChange, FileStatus, TaskChanges, changes, commits, overlaps
from aicm.workspaces.credentials import Credential
from aicm.workspaces.git import Git, GitError, RemoteError
from aicm.workspaces.identity import DEFAULT_IDENTITY, Identity
from aicm.workspaces.merging import MergeConflict, MergeResult, MergeStrategy, PushRejected, merge, push
from aicm.workspaces.repositories import Repository, RepositoryStore
from aicm.workspaces.urls import validate_repository_url
from aicm.workspaces.worktrees import Worktree, commit_all, task_branch

__all__ = [
    "DEFAULT_IDENTITY",
    "Commit",
    "Credential",
    "FileChange",
    "FileStatus",
    "Git",
    "GitError",
    "Identity",
    "MergeConflict",
    "MergeResult",
    "MergeStrategy",
    "PushRejected",
    "RemoteError",
    "Repository",
    "RepositoryStore",
    "TaskChanges",
    "Worktree",
    "changes",
    "commit_all",
    "commits",
    "merge",
    "overlaps",
    "push",
    "task_branch",
    "validate_repository_url",
]
