"""A run's CLI session files, stored with its task and restored before a follow-up's ``--resume``.

``keep_session`` runs after every run (its processes are gone): the files of the session the run reported
go into the task's ``TaskSession`` row (``aicm.runner.sessions`` packs them, size-capped). ``restore_session``
runs before a follow-up starts: its parent's row is unpacked into this run's config directory, named for this
run's cwd. A failure either way is logged and the task goes on: without the files, the CLI says it found no
conversation, which ``Task.error`` then shows.
"""

from __future__ import annotations

import asyncio
import logging
import tarfile
from pathlib import Path

from aicm import models
from aicm.runner.sessions import TooLarge, collect, restore

__all__ = ["keep_session", "restore_session"]

log = logging.getLogger("aicm.runner")


async def keep_session(
    task: models.Task, session_id: str | None, cwd: str | Path, sessions: tuple[Path, Path] | None
) -> None:
    """Store the files of ``session_id`` (the run's, from its output) with ``task``."""
    if not session_id or sessions is None:
        return
    config_dir, trusted = sessions
    try:
        archive = await asyncio.to_thread(collect, config_dir, cwd, session_id, trusted=trusted)
    except (TooLarge, OSError) as exc:
        log.warning(
            "the agent's session files were not kept: %s",
            exc,
            extra={"event": "task_session_not_kept", "task_id": task.id},
        )
        return
    if archive is None:
        return
    try:
        stored = {"session_id": session_id, "archive": archive.data, "size": archive.size}
        await models.TaskSession.update_or_create(defaults=stored, task_id=task.id)
    except Exception:  # the run's end must still be recorded, and its work saved
        log.exception(
            "storing the agent's session files failed",
            extra={"event": "task_session_not_kept", "task_id": task.id},
        )
        return
    log.info(
        "kept the agent's session files",
        extra={
            "event": "task_session_kept",
            "task_id": task.id,
            "files": archive.files,
            "bytes": archive.size,
            "stored_bytes": len(archive.data),
        },
    )


async def restore_session(task: models.Task, cwd: str | Path, sessions: tuple[Path, Path] | None) -> None:
    """Before a follow-up: its parent's session files, into this run's config directory for ``cwd``."""
    if not task.parent_id or sessions is None:
        return
    stored = await models.TaskSession.get_or_none(task_id=task.parent_id)
    if stored is None:
        return
    config_dir, trusted = sessions
    try:
        written = await asyncio.to_thread(restore, config_dir, cwd, bytes(stored.archive), trusted=trusted)
    except (OSError, tarfile.TarError) as exc:
        log.warning(
            "the parent's session files could not be restored: %s",
            exc,
            extra={"event": "task_session_not_restored", "task_id": task.id, "parent_id": task.parent_id},
        )
        return
    log.info(
        "restored the parent's session files",
        extra={"event": "task_session_restored", "task_id": task.id, "files": written},
    )
