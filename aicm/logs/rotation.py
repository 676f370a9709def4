"""The rotating log file of ``logging.file``: by size, with a count and an age limit on backups."""

from __future__ import annotations

import glob
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import IO

MEGABYTE = 1024 * 1024


class SizeAndAgeRotatingHandler(RotatingFileHandler):
    """Rotates at ``max_bytes``, keeps at most ``backup_count`` numbered backups (``app.log.1`` newest)
    and, at start and on every rollover, deletes backups older than ``max_age_days`` (0 = no age limit).
    Creates the parent directory. With ``backup_count`` 0 a full file is truncated instead.

    >>> handler = SizeAndAgeRotatingHandler("/tmp/aicm/app.log", max_bytes=100 * MEGABYTE, backup_count=10,
    ...                                     max_age_days=30)  # doctest: +SKIP
    """

    def __init__(
        self,
        filename: str | Path,
        *,
        max_bytes: int,
        backup_count: int,
        max_age_days: float,
        encoding: str = "utf-8",
    ) -> None:
        Path(filename).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(filename, mode="a", maxBytes=max_bytes, backupCount=backup_count, encoding=encoding)
        self.max_age_seconds = max_age_days * 86_400
        self.prune()

    def doRollover(self) -> None:
        if self.backupCount > 0:
            super().doRollover()
        else:
            if self.stream:
                self.stream.close()
            self.stream = self._open_truncated()
        self.prune()

    def _open_truncated(self) -> IO[str]:
        return open(self.baseFilename, "w", encoding=self.encoding)  # the handler owns and closes it

    def backups(self) -> dict[int, Path]:
        """Numbered backups on disk: ``{1: app.log.1, 2: app.log.2, …}``."""
        base = Path(self.baseFilename)
        found = {}
        for path in base.parent.glob(f"{glob.escape(base.name)}.*"):
            suffix = path.name[len(base.name) + 1 :]
            if suffix.isdigit():
                found[int(suffix)] = path
        return found

    def prune(self, now: float | None = None) -> None:
        """Delete backups beyond ``backup_count`` and backups last written more than ``max_age_days`` ago."""
        cutoff = (now if now is not None else time.time()) - self.max_age_seconds
        for number, path in self.backups().items():
            try:
                too_many = self.backupCount > 0 and number > self.backupCount
                too_old = self.max_age_seconds > 0 and path.stat().st_mtime < cutoff
                if too_many or too_old:
                    path.unlink()
            except FileNotFoundError:
                continue
