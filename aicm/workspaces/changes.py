"""What a task's branch changed (CONTRACT §8 ``TaskChanges``), its commits, and which tasks overlap.

Changes are measured from the merge base of the branch and its base ref, so commits that land on the base
branch after the task started never show up as the task's. Patches are read in one ``git diff`` whose output
is cut at ``max_patch_bytes`` (the total for all files: a huge change costs no more memory or storage than
that): a file whose patch does not fit gets the part that does (cut at a line end), later files get none,
and ``truncated`` is set. Counts and statuses are always complete.

The result is computed once when a run ends and stored as JSON (``to_json`` / ``from_json``)::

    stored = (await changes(repo, base_commit, head_commit, max_patch_bytes=256 * 1024)).to_json()
    TaskChanges.from_json(stored).files_changed
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from aicm.errors import BadUserInput
from aicm.workspaces.repositories import Repository

__all__ = [
    "Commit",
    "FileChange",
    "FileStatus",
    "TaskChanges",
    "changes",
    "commits",
    "merge_base",
    "overlaps",
]

DEFAULT_MAX_PATCH_BYTES = 256 * 1024
MAX_COMMITS = 1000
DIFF_OPTIONS = ("-M", "--no-color", "--no-ext-diff", "--no-textconv")
_PATCH_START = b"diff --git "
K = TypeVar("K", bound=Hashable)


class FileStatus(StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"
    RENAMED = "RENAMED"


_STATUS = {"A": FileStatus.ADDED, "D": FileStatus.DELETED, "R": FileStatus.RENAMED}


@dataclass(frozen=True)
class FileChange:
    path: str
    status: FileStatus
    additions: int
    deletions: int
    binary: bool
    patch: str | None
    old_path: str | None = None


@dataclass(frozen=True)
class TaskChanges:
    files_changed: int
    additions: int
    deletions: int
    truncated: bool
    files: list[FileChange] = field(default_factory=list)

    def paths(self) -> set[str]:
        """Every path the change touches (both names of a rename)."""
        return {p for f in self.files for p in (f.path, f.old_path) if p is not None}

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TaskChanges:
        data = json.loads(text)
        files = [FileChange(**{**f, "status": FileStatus(f["status"])}) for f in data.pop("files")]
        return cls(**data, files=files)


@dataclass(frozen=True)
class Commit:
    sha: str
    message: str
    author_name: str
    author_email: str
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at.isoformat()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Commit:
        return cls(**{**data, "at": datetime.fromisoformat(data["at"])})


async def merge_base(repo: Repository, base: str, head: str) -> str:
    """The newest commit both ``base`` and ``head`` descend from; ``BadUserInput`` when they share none."""
    result = await repo.run("merge-base", "--end-of-options", base, head, op="merge_base", ok_codes=(0, 1))
    if result.returncode != 0:
        raise BadUserInput("The branch and its base ref have no common history", field="baseRef")
    return result.text.strip()


async def changes(
    repo: Repository, base: str, head: str, *, max_patch_bytes: int = DEFAULT_MAX_PATCH_BYTES
) -> TaskChanges:
    """Files changed on ``head`` since its merge base with ``base``: commit ids or refs as git names them
    (``Repository.resolve`` turns a user's ``baseRef`` into one)."""
    if max_patch_bytes < 1:
        raise ValueError("max_patch_bytes must be positive")
    start = await merge_base(repo, base, head)
    statuses = await repo.run("diff", *DIFF_OPTIONS, "--name-status", "-z", start, head, op="diff")
    numstat = await repo.run("diff", *DIFF_OPTIONS, "--numstat", "-z", start, head, op="diff")
    patch = await repo.run(
        "diff",
        *DIFF_OPTIONS,
        "--patch",
        start,
        head,
        op="diff",
        max_output_bytes=max_patch_bytes,
        truncate_output=True,
    )
    entries = _parse_name_status(statuses.text)
    counts = _parse_numstat(numstat.text)
    patches, cut = _split_patches(patch.stdout, max_patch_bytes, complete=not patch.truncated)
    files = []
    for index, (status, path, old_path) in enumerate(entries):
        additions, deletions = counts.get(path, (0, 0))
        binary = additions is None
        files.append(
            FileChange(
                path=path,
                old_path=old_path,
                status=status,
                additions=additions or 0,
                deletions=deletions or 0,
                binary=binary,
                patch=patches[index] if index < len(patches) else None,
            )
        )
    return TaskChanges(
        files_changed=len(files),
        additions=sum(f.additions for f in files),
        deletions=sum(f.deletions for f in files),
        truncated=cut or len(patches) < len(files),
        files=files,
    )


def _parse_name_status(text: str) -> list[tuple[FileStatus, str, str | None]]:
    tokens = iter(text.split("\0"))
    entries = []
    for code in tokens:
        if not code:
            continue
        if code[0] in "RC":
            old_path, path = next(tokens), next(tokens)
            entries.append((FileStatus.RENAMED if code[0] == "R" else FileStatus.ADDED, path, old_path))
        else:
            entries.append((_STATUS.get(code[0], FileStatus.MODIFIED), next(tokens), None))
    return entries


def _parse_numstat(text: str) -> dict[str, tuple[int | None, int | None]]:
    """``{path: (additions, deletions)}``, ``(None, None)`` for binary files (keyed by the new path)."""
    tokens = iter(text.split("\0"))
    counts: dict[str, tuple[int | None, int | None]] = {}
    for record in tokens:
        if not record:
            continue
        added, deleted, path = record.split("\t", 2)
        if not path:  # a rename: the old and new paths follow as their own fields
            next(tokens)
            path = next(tokens)
        counts[path] = (None, None) if added == "-" else (int(added), int(deleted))
    return counts


def _split_patches(output: bytes, budget: int, *, complete: bool) -> tuple[list[str], bool]:
    """One patch per file in diff order, within ``budget`` bytes in all; True when something was cut.

    ``complete`` is False when git was stopped at the budget, so the last patch read is only a part."""
    starts = [0] if output.startswith(_PATCH_START) else []
    position = output.find(b"\n" + _PATCH_START)
    while position != -1:
        starts.append(position + 1)
        position = output.find(b"\n" + _PATCH_START, position + 1)
    patches: list[str] = []
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(output)
        chunk = output[start:end]
        if len(chunk) > budget or (not complete and end == len(output)):
            cut = chunk[:budget]
            line_end = cut.rfind(b"\n")
            patches.append((cut[: line_end + 1] if line_end >= 0 else cut).decode("utf-8", "ignore"))
            return patches, True
        patches.append(chunk.decode("utf-8", "replace"))
        budget -= len(chunk)
    return patches, False


async def commits(repo: Repository, base: str, head: str, *, limit: int = MAX_COMMITS) -> list[Commit]:
    """The commits on ``head`` that ``base`` does not have, oldest first (at most ``limit``)."""
    result = await repo.run(
        "log",
        "-z",
        "--no-color",
        f"--max-count={limit}",
        "--reverse",
        "--format=%H%x1f%an%x1f%ae%x1f%aI%x1f%B",
        "--end-of-options",
        f"{base}..{head}",
        op="log",
    )
    found = []
    for record in result.text.split("\0"):
        if not record.strip():
            continue
        sha, name, email, at, message = record.split("\x1f", 4)
        found.append(Commit(sha.strip(), message.strip(), name, email, datetime.fromisoformat(at)))
    return found


def overlaps(paths_by_task: Mapping[K, Iterable[str]]) -> dict[K, list[K]]:
    """For each task, the other tasks whose changed paths intersect its own (in the mapping's order)."""
    owners: dict[str, list[K]] = {}
    for task, paths in paths_by_task.items():
        for path in set(paths):
            owners.setdefault(path, []).append(task)
    order = {task: index for index, task in enumerate(paths_by_task)}
    found: dict[K, set[K]] = {task: set() for task in paths_by_task}
    for tasks in owners.values():
        for task in tasks:
            found[task].update(other for other in tasks if other != task)
    return {task: sorted(others, key=order.__getitem__) for task, others in found.items()}
