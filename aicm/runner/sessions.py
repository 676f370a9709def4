"""The agent CLI's session files go with the task, so a follow-up's ``--resume`` works on any worker.

Claude Code keeps a conversation at ``$CLAUDE_CONFIG_DIR/projects/<cwd>/<session id>.jsonl`` (``<cwd>``: the
working directory with every character but ASCII letters and digits replaced by ``-``), plus, for some
versions, a ``<session id>/`` directory beside it (subagent transcripts). ``--resume <id>`` looks for it under
the directory of the *current* cwd, in the config directory of the run.

After every run, ``collect`` packs that run's files (a gzip'd tar, at most ``MAX_ARCHIVE_BYTES``) and the
executor stores them as a ``TaskSession`` row of the task. Before a follow-up's ``--resume``, ``restore``
unpacks the parent's row into the follow-up's config directory under the follow-up's own cwd name. So the
follow-up finds the conversation wherever it runs: on another worker, with an empty agent home, or in a
worktree at another path.

The config directory is the run's agent home (``<data_dir>/agent-homes/<user id>/.claude``), which the agent
can write: every path is opened below it one component at a time with ``O_NOFOLLOW``, so a symlink it planted
can neither make the server read a file of its own into the database nor write a restored file elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import stat
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "MAX_ARCHIVE_BYTES",
    "MAX_FILES_BYTES",
    "SessionArchive",
    "TooLarge",
    "collect",
    "config_dir_of",
    "project_dir_name",
    "restore",
]

MAX_ARCHIVE_BYTES = 8 * 1024 * 1024  # compressed, what one task stores
MAX_FILES_BYTES = 64 * 1024 * 1024  # uncompressed, what is read to make it
MAX_FILES = 1000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")  # a session id or a file name, never "." or ".."
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TooLarge(ValueError):
    """The session files are over the caps: they are not stored (the follow-up starts without them)."""


@dataclass(frozen=True, slots=True)
class SessionArchive:
    data: bytes  # tar.gz
    size: int  # bytes of the files before compression
    files: int


def project_dir_name(cwd: str | Path) -> str:
    """The name Claude Code gives the directory of ``cwd``'s sessions: ``/w/tasks/7`` -> ``-w-tasks-7``."""
    return re.sub(r"[^A-Za-z0-9]", "-", str(cwd))


def config_dir_of(env: Mapping[str, str]) -> Path | None:
    """Where the CLI run with ``env`` keeps its files: ``CLAUDE_CONFIG_DIR``, else ``$HOME/.claude``."""
    if env.get("CLAUDE_CONFIG_DIR"):
        return Path(env["CLAUDE_CONFIG_DIR"])
    if env.get("HOME"):
        return Path(env["HOME"], ".claude")
    return None


def _valid(name: str) -> bool:
    return _NAME.fullmatch(name) is not None and name not in (".", "..")


@contextlib.contextmanager
def _opened_dir(config_dir: Path, trusted: Path, *, create: bool = False) -> Iterator[int]:
    """A descriptor of ``config_dir``: ``trusted`` (one of its ancestors, or itself) opened as usual, each
    component below it without following symlinks (and made, mode 0700, when ``create``)."""
    fd = os.open(trusted, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in config_dir.relative_to(trusted).parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
            child = os.open(part, _OPEN_DIR, dir_fd=fd)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _entries(fd: int, names: Iterable[str], prefix: str, depth: int) -> Iterator[tuple[str, int]]:
    """(name, open fd) of the regular files among ``names`` in directory ``fd``, and of those in its
    directories down to ``depth``; symlinks and everything else are skipped."""
    for name in sorted(names):
        if not _valid(name):
            continue
        mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
        if stat.S_ISREG(mode):
            # O_NONBLOCK: a FIFO swapped in since the stat (by a concurrent run of the user) cannot block us
            file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
            try:
                if stat.S_ISREG(os.fstat(file_fd).st_mode):
                    yield prefix + name, file_fd
            finally:
                os.close(file_fd)
        elif stat.S_ISDIR(mode) and depth > 0:
            child = os.open(name, _OPEN_DIR, dir_fd=fd)
            try:
                yield from _entries(child, os.listdir(child), f"{prefix}{name}/", depth - 1)
            finally:
                os.close(child)


def collect(
    config_dir: Path, cwd: str | Path, session_id: str, *, trusted: Path | None = None
) -> SessionArchive | None:
    """The files of session ``session_id`` of a run in ``cwd``, packed; None when the run left none.

    ``trusted``: the part of ``config_dir`` the agent cannot have changed (its agent home; default all of
    it): below it no symlink is followed. Raises TooLarge past ``MAX_FILES_BYTES`` or ``MAX_ARCHIVE_BYTES``.
    """
    if not _valid(session_id):
        return None
    buffer = io.BytesIO()
    size = files = 0
    try:
        with (
            _opened_dir(_sessions_dir(config_dir, cwd), trusted or config_dir) as project,
            tarfile.open(fileobj=buffer, mode="w:gz") as tar,
        ):
            names = set(os.listdir(project)) & {f"{session_id}.jsonl", session_id}
            for name, fd in _entries(project, names, "", depth=3):
                size, files = _add(tar, name, fd, size, files)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None  # no such directory (or a symlink where one should be): nothing of ours to keep
        raise
    if not files:
        return None
    data = buffer.getvalue()
    if len(data) > MAX_ARCHIVE_BYTES:
        raise TooLarge(f"the session files are {len(data)} bytes compressed, over {MAX_ARCHIVE_BYTES}")
    return SessionArchive(data, size, files)


def _add(tar: tarfile.TarFile, name: str, fd: int, size: int, files: int) -> tuple[int, int]:
    length = os.fstat(fd).st_size
    size, files = size + length, files + 1
    if size > MAX_FILES_BYTES or files > MAX_FILES:
        raise TooLarge(f"the session files are over {MAX_FILES_BYTES} bytes or {MAX_FILES} files")
    info = tarfile.TarInfo(name)
    info.size, info.mode = length, 0o600
    with os.fdopen(os.dup(fd), "rb") as source:
        tar.addfile(info, source)
    return size, files


def _sessions_dir(config_dir: Path, cwd: str | Path) -> Path:
    return config_dir / "projects" / project_dir_name(cwd)


def restore(config_dir: Path, cwd: str | Path, data: bytes, *, trusted: Path | None = None) -> int:
    """Unpack an archive from ``collect`` into the CLI's directory for ``cwd``; the number of files written.

    ``trusted`` as for ``collect``. Only regular files with plain names are taken; an existing file is
    replaced (a symlink in its place is removed, never followed)."""
    written = 0
    budget = MAX_FILES_BYTES
    (trusted or config_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    with (
        tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar,
        _opened_dir(_sessions_dir(config_dir, cwd), trusted or config_dir, create=True) as project,
    ):
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or not all(map(_valid, parts)) or len(parts) > 4 or written >= MAX_FILES:
                continue
            budget -= member.size
            source = tar.extractfile(member)
            if budget < 0 or source is None:
                break
            _write(project, parts, source)
            written += 1
    return written


def _write(project: int, parts: list[str], source: IO[bytes]) -> None:
    fd = os.dup(project)
    try:
        for part in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700, dir_fd=fd)
            child = os.open(part, _OPEN_DIR, dir_fd=fd)
            os.close(fd)
            fd = child
        name = parts[-1]
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                os.unlink(name, dir_fd=fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(name, flags, 0o600, dir_fd=fd)
        with os.fdopen(out, "wb") as target:
            while chunk := source.read(1 << 16):
                target.write(chunk)
    finally:
        os.close(fd)
