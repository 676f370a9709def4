"""One bare repository per project, named by project id: ``<root>/projects/<id>/repo.git``.

With a URL the repository is a clone in the usual layout (the remote's branches under
``refs/remotes/origin/*``, tags fetched), so task branches (``refs/heads/aicm/task-N``) never collide with
what a fetch brings. Without one it starts with a single empty commit on ``main``. The repository is built
in a temporary directory and renamed into place, so ``repo.git`` existing means it is complete. Worktrees
live next to it (``<root>/projects/<id>/tasks/<number>``) and go with it on ``remove``.

Anything that changes shared state (clone, fetch, worktree add/remove, merge, push) holds the repository's
lock: an ``asyncio.Lock`` in this process and an ``flock`` on ``<root>/projects/<id>/lock`` between
processes::

    store = RepositoryStore(root, Git())
    repo = await store.ensure(project.id, url=project.repository_url, credential=credential)
    await repo.fetch(credential)
    base = await repo.resolve(base_ref or await repo.default_branch() or "main")
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aicm.errors import BadUserInput
from aicm.workspaces.credentials import Credential, git_auth_env
from aicm.workspaces.git import Git, GitError, GitResult
from aicm.workspaces.identity import DEFAULT_IDENTITY, Identity

__all__ = ["Repository", "RepositoryStore"]

REMOTE = "origin"
INITIAL_MESSAGE = "Initial commit"
_SHA = re.compile(r"^[0-9a-fA-F]{4,64}$")
_SYMREF = re.compile(r"^ref: refs/heads/(\S+)\tHEAD$", re.MULTILINE)
LOCK_POLL = 0.05


class Repository:
    """A project's repository on disk; obtained from ``RepositoryStore``."""

    def __init__(
        self,
        path: Path,
        *,
        git: Git,
        lock: asyncio.Lock,
        lock_file: Path,
        lock_timeout: float,
        known_hosts: Path | None = None,
        auth_dir: Path | None = None,
    ) -> None:
        self.path = path
        self.git = git
        self._lock = lock
        self._lock_file = lock_file
        self._lock_timeout = lock_timeout
        self._known_hosts = known_hosts
        self._auth_dir = auth_dir

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Exclusive use of the repository, in this process and between processes on this machine."""
        deadline = time.monotonic() + self._lock_timeout
        try:
            await asyncio.wait_for(self._lock.acquire(), self._lock_timeout)
        except TimeoutError:
            raise GitError("the repository is busy; try again later", op="lock") from None
        try:
            try:
                fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o600)
            except FileNotFoundError:
                raise GitError("the project has no repository", op="lock") from None
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise GitError("the repository is busy; try again later", op="lock") from None
                        await asyncio.sleep(LOCK_POLL)
                yield
            finally:
                os.close(fd)  # releases the flock
        finally:
            self._lock.release()

    async def run(self, *args: str, op: str, **options: Any) -> GitResult:
        """``git --git-dir=<repo> <args>``."""
        return await self.git.run(["--git-dir", str(self.path), *args], op=op, **options)

    async def run_remote(
        self, *args: str, op: str, credential: Credential | None, **options: Any
    ) -> GitResult:
        """A command that talks to the remote, authenticated with ``credential``."""
        with git_auth_env(credential, known_hosts=self._known_hosts, temp_root=self._auth_dir) as env:
            secrets_ = credential.secrets() if credential else ()
            return await self.run(*args, op=op, env=env, secrets=secrets_, remote=True, **options)

    async def remote_url(self) -> str | None:
        result = await self.run("config", "--get", f"remote.{REMOTE}.url", op="config", ok_codes=(0, 1))
        return result.text.strip() or None

    async def fetch(self, credential: Credential | None = None) -> None:
        """Bring the remote's branches and tags up to date (nothing to do without a remote)."""
        async with self.locked():
            await self._fetch(credential)

    async def _fetch(self, credential: Credential | None) -> None:
        if await self.remote_url() is not None:
            await self.run_remote("fetch", "--prune", "--tags", REMOTE, op="fetch", credential=credential)

    async def remote_default_branch(self, credential: Credential | None = None) -> str | None:
        """The remote's HEAD branch (asked over the network), remembered as ``refs/remotes/origin/HEAD``."""
        if await self.remote_url() is None:
            return await self.default_branch()
        result = await self.run_remote(
            "ls-remote", "--symref", REMOTE, "HEAD", op="ls_remote", credential=credential
        )
        match = _SYMREF.search(result.text)
        if match is None:
            return None
        branch = match.group(1)
        await self.run(
            "symbolic-ref",
            f"refs/remotes/{REMOTE}/HEAD",
            f"refs/remotes/{REMOTE}/{branch}",
            op="symbolic_ref",
        )
        return branch

    async def default_branch(self) -> str | None:
        """The default branch as last seen (no network): the remote's HEAD, else this repository's HEAD."""
        for ref, prefix in (
            (f"refs/remotes/{REMOTE}/HEAD", f"refs/remotes/{REMOTE}/"),
            ("HEAD", "refs/heads/"),
        ):
            result = await self.run("symbolic-ref", "--quiet", ref, op="symbolic_ref", ok_codes=(0, 1, 128))
            target = result.text.strip()
            if result.returncode == 0 and target.startswith(prefix):
                return target.removeprefix(prefix)
        return None

    async def commit_of(self, full_ref: str) -> str | None:
        """The commit ``full_ref`` (``refs/heads/x``, a sha…) points at, or None."""
        result = await self.run(
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            f"{full_ref}^{{commit}}",
            op="rev_parse",
            ok_codes=(0, 1, 128),
        )
        return result.text.strip() if result.returncode == 0 else None

    async def branch_tip(self, branch: str) -> str | None:
        """The newest commit of ``branch``: the remote's when there is a remote, else the local branch."""
        candidates = [f"refs/heads/{branch}"]
        if await self.remote_url() is not None:
            candidates.insert(0, f"refs/remotes/{REMOTE}/{branch}")
        for candidate in candidates:
            if sha := await self.commit_of(candidate):
                return sha
        return None

    async def resolve(self, ref: str, *, field: str = "baseRef") -> str:
        """The commit sha of a branch (the remote's first), tag or commit; ``BadUserInput`` when unknown."""
        await self.check_ref_name(ref, field=field)
        if (tip := await self.branch_tip(ref)) is not None:
            return tip
        for candidate in (f"refs/tags/{ref}", ref):
            if sha := await self.commit_of(candidate):
                return sha
        raise BadUserInput(f"Unknown ref {ref!r}: no branch, tag or commit of that name", field=field)

    async def check_ref_name(self, ref: str, *, field: str = "baseRef") -> None:
        """``BadUserInput`` unless ``ref`` is a valid ref name or commit id (never an option)."""
        if not ref or len(ref) > 255 or ref.startswith("-") or any(ord(c) < 32 or ord(c) == 127 for c in ref):
            raise BadUserInput("Invalid ref name", field=field)
        if _SHA.match(ref):
            return
        result = await self.git.run(
            ["check-ref-format", "--allow-onelevel", ref], op="check_ref_format", ok_codes=(0, 1)
        )
        if result.returncode != 0:
            raise BadUserInput(f"Invalid ref name {ref!r}", field=field)


class RepositoryStore:
    """Where project repositories and task worktrees live; one per process (it owns the in-process locks).

    ``known_hosts`` keeps SSH host keys between commands; ``auth_dir`` is where the short-lived credential
    files are made (default: the system's temporary directory).
    """

    def __init__(
        self,
        root: Path,
        git: Git,
        *,
        lock_timeout: float = 600.0,
        known_hosts: Path | None = None,
        auth_dir: Path | None = None,
    ) -> None:
        self.root = root
        self.git = git
        self.lock_timeout = lock_timeout
        self.known_hosts = known_hosts
        self.auth_dir = auth_dir
        self._locks: dict[Path, asyncio.Lock] = {}

    def _repository(self, path: Path, lock: asyncio.Lock, lock_file: Path) -> Repository:
        return Repository(
            path,
            git=self.git,
            lock=lock,
            lock_file=lock_file,
            lock_timeout=self.lock_timeout,
            known_hosts=self.known_hosts,
            auth_dir=self.auth_dir,
        )

    def project_dir(self, project_id: int) -> Path:
        if not isinstance(project_id, int) or isinstance(project_id, bool) or project_id < 0:
            raise ValueError(f"invalid project id {project_id!r}")
        return self.root / "projects" / str(project_id)

    def worktree_path(self, project_id: int, task_number: int) -> Path:
        if not isinstance(task_number, int) or task_number < 0:
            raise ValueError(f"invalid task number {task_number!r}")
        return self.project_dir(project_id) / "tasks" / str(task_number)

    def open(self, project_id: int) -> Repository:
        """The project's repository object (whether or not it exists on disk yet)."""
        directory = self.project_dir(project_id)
        path = directory / "repo.git"
        return self._repository(path, self._locks.setdefault(path, asyncio.Lock()), directory / "lock")

    def exists(self, project_id: int) -> bool:
        return (self.project_dir(project_id) / "repo.git").is_dir()

    async def ensure(
        self,
        project_id: int,
        url: str | None = None,
        credential: Credential | None = None,
        *,
        identity: Identity = DEFAULT_IDENTITY,
        initial_branch: str = "main",
    ) -> Repository:
        """The project's repository, cloned from ``url`` (already validated) or made with one empty commit.

        An existing repository whose remote differs from ``url`` gets the new URL and is fetched.
        """
        repo = self.open(project_id)
        repo.path.parent.mkdir(parents=True, exist_ok=True)
        async with repo.locked():
            if repo.path.is_dir():
                if url is not None and await repo.remote_url() != url:
                    await _set_remote(repo, url)
                    await repo._fetch(credential)
                return repo
            for leftover in repo.path.parent.glob(".repo.git.*"):
                await asyncio.to_thread(shutil.rmtree, leftover, True)
            staging = repo.path.with_name(f".repo.git.{secrets.token_hex(6)}")
            try:
                await self._build(staging, repo, url, credential, identity, initial_branch)
                staging.rename(repo.path)
            finally:
                if staging.exists():
                    await asyncio.to_thread(shutil.rmtree, staging, True)
        return repo

    async def _build(
        self,
        staging: Path,
        repo: Repository,
        url: str | None,
        credential: Credential | None,
        identity: Identity,
        initial_branch: str,
    ) -> None:
        await self.git.run(["init", "--quiet", "--bare", "-b", initial_branch, str(staging)], op="init")
        building = self._repository(staging, asyncio.Lock(), repo.path.parent / "lock")
        if url is None:
            await _initial_commit(building, identity, initial_branch)
            return
        await _set_remote(building, url)
        await building._fetch(credential)
        await building.remote_default_branch(credential)

    async def remove(self, project_id: int) -> None:
        """Delete the project's repository and worktrees; the id is never used again."""
        repo = self.open(project_id)
        directory = repo.path.parent
        if not directory.exists():
            return
        async with repo.locked():
            graveyard = directory.with_name(f".removed-{project_id}-{secrets.token_hex(6)}")
            directory.rename(graveyard)  # the project dir vanishes at once; deletion can take a while
            await asyncio.to_thread(shutil.rmtree, graveyard, True)
        self._locks.pop(repo.path, None)


async def _set_remote(repo: Repository, url: str) -> None:
    current = await repo.remote_url()
    await repo.run("config", f"remote.{REMOTE}.url", url, op="config")
    if current is None:
        await repo.run(
            "config", f"remote.{REMOTE}.fetch", f"+refs/heads/*:refs/remotes/{REMOTE}/*", op="config"
        )


async def _initial_commit(repo: Repository, identity: Identity, branch: str) -> None:
    tree = (await repo.run("hash-object", "-t", "tree", "-w", "--stdin", op="hash_object")).text.strip()
    env = {**identity.author_env(), **identity.committer_env()}
    commit = await repo.run("commit-tree", tree, "-m", INITIAL_MESSAGE, op="commit", env=env)
    await repo.run("update-ref", f"refs/heads/{branch}", commit.text.strip(), "", op="update_ref")
