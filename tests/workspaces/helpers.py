"""Real repositories for the workspace tests: a bare origin and a working clone playing "someone else"."""

from __future__ import annotations

from pathlib import Path

from aicm.workspaces.git import Git
from aicm.workspaces.identity import Identity

ALICE = Identity("Alice Example", "alice@example.com")
BOB = Identity("Bob Example", "bob@example.com")
OTHER = {**BOB.author_env(), **BOB.committer_env()}


async def sh(git: Git, *args: str, cwd: Path | None = None) -> str:
    """Run git as a person at a terminal would (identity of "someone else"); stdout."""
    return (await git.run(list(args), op="test", cwd=cwd, env=OTHER)).text


def write(root: Path, files: dict[str, str | bytes | None]) -> None:
    """Write (str/bytes) or delete (None) files under ``root``."""
    for name, content in files.items():
        path = root / name
        if content is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


class Upstream:
    """``origin.git`` (bare) and ``upstream/``, a clone that pushes to it."""

    def __init__(self, git: Git, root: Path, branch: str = "main") -> None:
        self.git = git
        self.bare = root / "origin.git"
        self.work = root / "upstream"
        self.branch = branch

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    async def create(self, files: dict[str, str | bytes | None]) -> str:
        await sh(self.git, "init", "--quiet", "--bare", "-b", self.branch, str(self.bare))
        await sh(self.git, "init", "--quiet", "-b", self.branch, str(self.work))
        await sh(self.git, "remote", "add", "origin", str(self.bare), cwd=self.work)
        return await self.commit(files, "Initial import")

    async def commit(self, files: dict[str, str | bytes | None], message: str = "Upstream change") -> str:
        write(self.work, files)
        await sh(self.git, "add", "--all", cwd=self.work)
        await sh(self.git, "commit", "--quiet", "-m", message, cwd=self.work)
        await sh(self.git, "push", "--quiet", "origin", f"HEAD:refs/heads/{self.branch}", cwd=self.work)
        return await self.head()

    async def head(self, ref: str | None = None) -> str:
        return (await sh(self.git, "--git-dir", str(self.bare), "rev-parse", ref or self.branch)).strip()


def processes_showing(needle: str) -> list[str]:
    """Command lines of the processes whose arguments or environment contain ``needle`` (as ``ps`` or a
    same-user ``/proc`` reader would see them)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if needle.encode() in cmdline or needle.encode() in environ:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found
