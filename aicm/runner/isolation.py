"""What one agent run may see and use: its sandbox and its limits, from the settings (CONTRACT §9).

``RunIsolation`` detects the sandbox once (``detect``, at executor start) and then turns each run's argv into
the sandboxed one (``build_run``). Inside the sandbox the run sees the system read-only, its cwd read-write,
its user's agent home ``<data_dir>/agent-homes/<user id>`` (mode 0700, kept between that user's runs: ``HOME``
and ``CLAUDE_CONFIG_DIR``), the server's interpreter and the ``aicm`` package read-only (so ``{python}``
agents such as the demo one run wherever the server is installed), and ``runner.sandbox_paths``. Hidden even
where a bound directory holds them: the data directory (database, ``jwt_secret``, the other agent homes), the
config file and ``.env`` files, the SQLite database and JWT key files wherever the settings put them,
``runner.workspace_root`` but for this run's cwd, and the server's own home. Git works in the worktree: the
executor binds the project's repository read-only and the worktree's own administrative directory
read-write (``build_run``'s ``read_only``/``read_write``), so other tasks' branches cannot be rewritten.

Without the sandbox (``none``) the argv is unchanged; the limits apply either way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import aicm
from aicm.config import LimitsConfig, Settings
from aicm.runner.limits import LIMIT_NAMES, Limits, enforcement
from aicm.runner.process import AgentNotFound
from aicm.runner.sandbox import SYSTEM_DIRS, SandboxSpec, SandboxStatus, SandboxUnavailable, detect, wrap
from aicm.runner.sessions import config_dir_of
from aicm.workspaces.worktrees import Worktree

__all__ = [
    "RunIsolation",
    "current_status",
    "cut_note",
    "details",
    "git_paths",
    "limit_error",
    "limits_of",
    "sandbox_problem",
    "sqlite_path",
]

log = logging.getLogger("aicm.runner")

AGENT_HOMES = "agent-homes"
_CUT = re.compile(r" …\[truncated (\d+) bytes\]$")  # what AgentProcess appends to a line it cut
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")
_SIZE_LIMITS = ("memory", "file_size", "output_bytes", "line_bytes")


def sqlite_path(dsn: str) -> Path | None:
    """The file of a ``sqlite://`` database URL (relative to the cwd, as Tortoise opens it); None for other
    databases and ``:memory:``."""
    if not dsn.startswith("sqlite://"):
        return None
    path = dsn.removeprefix("sqlite://").split("?", 1)[0]
    return None if path in ("", ":memory:") else _absolute(path)


def git_paths(tree: Worktree) -> dict[str, list[Path]]:
    """``build_run``'s extra paths for a run in ``tree``: the project's repository (objects, refs, other
    worktrees' state) read-only, this worktree's administrative directory (index, HEAD) read-write. So
    ``git status``/``diff``/``log`` work in the sandbox, and no other task's branch can be rewritten."""
    return {"read_only": [tree.repository.path], "read_write": [tree.admin_dir]}


def limits_of(config: LimitsConfig) -> Limits:
    """``runner.limits`` as the runner's ``Limits`` (CPU time in whole seconds, rounded up)."""
    cpu = config.cpu_time
    return Limits(
        memory=config.memory,
        processes=config.processes,
        file_size=config.file_size,
        cpu_time=None if cpu is None else max(1, math.ceil(cpu)),
        output_bytes=config.output_bytes,
        line_bytes=config.line_bytes,
    )


def _size(value: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= factor:
            return f"{value / factor:g} {unit}"
    return f"{value} bytes"


def _seconds(value: int) -> str:
    for unit, factor in (("h", 3600), ("m", 60)):
        if value % factor == 0:
            return f"{value // factor}{unit}"
    return f"{value}s"


def describe(name: str, limits: Limits) -> str:
    """A limit's value as people write it: ``4 GiB``, ``256``, ``2h``."""
    value = getattr(limits, name)
    if value is None:
        return "off"
    if name in _SIZE_LIMITS:
        return _size(value)
    return _seconds(value) if name == "cpu_time" else str(value)


def limit_error(name: str, limits: Limits) -> str:
    """``Task.error`` for a run that passed ``runner.limits.<name>``."""
    return f"Limit exceeded: runner.limits.{name} ({describe(name, limits)})"


def cut_note(line: str, limits: Limits) -> str | None:
    """The ``system`` line that goes after a line the reader cut at ``line_bytes``, else None."""
    match = _CUT.search(line)
    if match is None:
        return None
    return (
        f"A line longer than runner.limits.line_bytes ({describe('line_bytes', limits)}) was cut: "
        f"{match.group(1)} bytes were dropped"
    )


def _under(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _absolute(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


class RunIsolation:
    """The sandbox and limits of the runs of one executor."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = limits_of(settings.runner.limits)
        self.data_dir = _absolute(settings.app.data_dir)
        self.homes = self.data_dir / AGENT_HOMES
        self._status: SandboxStatus | None = None

    @property
    def status(self) -> SandboxStatus:
        """What isolation runs get; detected on first use (bubblewrap is tried once per process)."""
        if self._status is None:
            self._status = detect(self.settings.runner.sandbox, "bwrap")  # type: ignore[arg-type]
        return self._status

    async def detect(self) -> SandboxStatus:
        """Detect off the event loop and say so in the log; raises SandboxUnavailable for an explicit
        ``bubblewrap`` that cannot run."""
        try:
            status = await asyncio.to_thread(lambda: self.status)
        except SandboxUnavailable as exc:
            log.error(str(exc), extra={"event": "sandbox_unavailable", "reason": str(exc)})
            raise
        fields = {"mode": status.mode, "requested": status.requested, "reason": status.reason}
        fields["network"] = self.settings.runner.network
        fields["limits"] = enforcement(self.limits)
        if status.active:
            log.info("agent runs are sandboxed with bubblewrap", extra={"event": "sandbox_ready", **fields})
        else:
            message = f"agent runs are NOT sandboxed: {status.reason}"
            if not self.settings.runner.network:
                message += " (runner.network: false cannot be enforced without it)"
            log.warning(message, extra={"event": "sandbox_disabled", **fields})
        return status

    def agent_home(self, user_id: int | None) -> Path:
        """``<data_dir>/agent-homes/<user id>``, created mode 0700 (the creator was deleted: ``none``)."""
        self.homes.mkdir(mode=0o700, parents=True, exist_ok=True)
        home = self.homes / (str(user_id) if user_id is not None else "none")
        home.mkdir(mode=0o700, exist_ok=True)
        os.chmod(home, 0o700)
        return home

    def session_dir(self, user_id: int | None, env: Mapping[str, str]) -> tuple[Path, Path] | None:
        """(the CLI's config directory for a run of ``user_id`` with ``env``, the part of it the agent cannot
        replace), where its session files are (``aicm.runner.sessions``); None when it has none.

        Sandboxed: ``<agent home>/.claude`` (the agent may write anything below its home). Else what the
        environment says (``CLAUDE_CONFIG_DIR``, else ``$HOME/.claude``), trusted as the server's own."""
        if self.status.active:
            home = self.agent_home(user_id)
            return home / ".claude", home
        found = config_dir_of(env)
        return None if found is None else (found, found)

    def build_run(
        self,
        argv: Sequence[str],
        cwd: str | Path,
        user_id: int | None,
        *,
        read_only: Sequence[Path] = (),
        read_write: Sequence[Path] = (),
    ) -> tuple[list[str], Limits, bool]:
        """(the argv to start, its limits, whether it is sandboxed) for one run in ``cwd`` for ``user_id``.

        ``read_only``/``read_write``: further directories this run reads or writes besides its cwd (a git
        worktree's common directory, its own administrative directory). Raises AgentNotFound when the
        program is not there to run."""
        if not self.status.active:
            return list(argv), self.limits, False
        runner = self.settings.runner
        if shutil.which(argv[0], path=runner.env.get("PATH", os.environ.get("PATH"))) is None:
            raise AgentNotFound(argv[0])  # inside, only bubblewrap's exit code would say so
        extra = runner.sandbox_paths
        spec = SandboxSpec(
            worktree=_absolute(cwd),
            home=self.agent_home(user_id),
            read_only=[*self._program_paths(argv), *map(_absolute, [*read_only, *extra.read_only])],
            read_write=[*map(_absolute, read_write), *map(_absolute, extra.read_write)],
            hidden=self._hidden(),
            network=runner.network,
            bwrap=self.status.bwrap or "bwrap",
        )
        return wrap(argv, spec), self.limits, True

    def _hidden(self) -> list[Path]:
        config = self.settings.config_path
        hidden = [
            self.data_dir,
            _absolute(self.settings.runner.workspace_root),
            Path.home(),
            _absolute(".env"),
        ]
        if config is not None:
            hidden += [_absolute(config), _absolute(config).parent / ".env"]
        hidden += self._server_files()
        hidden += map(_absolute, self.settings.runner.sandbox_paths.hidden)
        return list(dict.fromkeys(hidden))

    def _server_files(self) -> list[Path]:
        """Secrets the settings name that may lie outside the data directory: the SQLite database (and its
        journal files) and the JWT key files."""
        files: list[Path] = []
        database = sqlite_path(self.settings.database.dsn)
        if database is not None:
            files += [database.with_name(database.name + suffix) for suffix in ("", *SQLITE_SIDE_FILES)]
        jwt = self.settings.jwt
        files += [_absolute(name) for name in (jwt.private_key_file, jwt.public_key_file) if name]
        return files

    @staticmethod
    def _program_paths(argv: Sequence[str]) -> list[Path]:
        """What the agent program needs to start that the system directories may not hold: the server's
        interpreter (its venv and base prefix) and the ``aicm`` package, and the program's own directory."""
        paths = [Path(sys.prefix), Path(sys.base_prefix), Path(aicm.__file__).resolve().parent]
        program = shutil.which(argv[0])
        if program is not None:
            paths += [Path(program).parent, Path(os.path.realpath(program)).parent]
        system = [Path(name) for name in SYSTEM_DIRS]
        keep = [path for path in paths if not any(_under(path, root) for root in system)]
        return list(dict.fromkeys(keep))


async def current_status(settings: Settings) -> SandboxStatus:
    """What isolation this process's runs get, for health: detected off the event loop (once, then cached);
    an explicit ``bubblewrap`` that cannot run reads as none, with the reason."""
    mode = settings.runner.sandbox
    try:
        return await asyncio.to_thread(detect, mode, "bwrap")  # type: ignore[arg-type]
    except SandboxUnavailable as exc:
        return SandboxStatus("none", mode, str(exc))  # type: ignore[arg-type]


def details(settings: Settings, status: SandboxStatus) -> dict[str, object]:
    """``/health/detailed``'s ``sandbox`` entry: the mode and why, the network, each limit and how it is
    enforced on this machine."""
    limits = limits_of(settings.runner.limits)
    return {
        "mode": status.mode,
        "requested": status.requested,
        "reason": status.reason,
        "network": settings.runner.network,
        "limits": {
            "values": {name: getattr(limits, name) for name in LIMIT_NAMES},
            "enforcement": enforcement(limits),
        },
    }


def sandbox_problem(settings: Settings) -> str | None:
    """For ``--config-check``: why runs would not get the sandbox the settings promise, else None.

    ``bubblewrap`` that cannot run is always a problem; ``auto`` falling back to none is one in production
    (write ``runner.sandbox: none`` to run unsandboxed on purpose)."""
    mode = settings.runner.sandbox
    try:
        status = detect(mode, "bwrap")  # type: ignore[arg-type]
    except SandboxUnavailable as exc:
        return f"runner.sandbox: {exc}"
    if settings.is_production and mode == "auto" and not status.active:
        return (
            f"runner.sandbox: auto falls back to none here ({status.reason}); install bubblewrap, "
            "or set runner.sandbox: none to run agents unsandboxed on purpose"
        )
    return None
