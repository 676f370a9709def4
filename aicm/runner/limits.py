"""Resource limits for one agent run (CONTRACT §9, ``runner.limits``).

Each limit is enforced by the strongest means this machine offers, and ``enforcement()`` says which:

- ``memory``: a per-run cgroup (``memory.max`` on cgroup v2, ``memory.limit_in_bytes`` on v1) when the server
  may create one, else ``RLIMIT_DATA``. Not ``RLIMIT_AS``: Node/V8 (the Claude CLI) reserves tens of GiB of
  address space up front and would fail to start under any sane address-space cap, while ``RLIMIT_DATA``
  counts only the private writable memory it really uses.
- ``processes``: a per-run ``pids`` cgroup, else ``RLIMIT_NPROC``. ``RLIMIT_NPROC`` counts every process of
  the real uid and is ignored for root altogether, so a server running as root without a writable cgroup
  cannot stop a fork bomb; ``enforcement()`` then says ``"not enforced"``.
- ``file_size`` (``RLIMIT_FSIZE``, SIGXFSZ) and ``cpu_time`` (``RLIMIT_CPU`` per process: SIGXCPU, then
  SIGKILL a few seconds later) are rlimits, inherited by everything the agent starts.
- ``output_bytes`` and ``line_bytes`` are enforced by the reader in ``aicm.runner.process``.

A run that passes a limit is ended; ``RunCgroup.limit_hit`` and ``limit_from_exit`` tell which one it was.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = [
    "LIMIT_NAMES",
    "Limits",
    "RunCgroup",
    "enforcement",
    "limit_from_exit",
    "preexec",
]

GiB = 1024**3
MiB = 1024**2
LIMIT_NAMES = ("memory", "processes", "file_size", "cpu_time", "output_bytes", "line_bytes")
_CPU_KILL_AFTER = 5  # seconds of CPU between SIGXCPU (catchable) and SIGKILL
_KILL_ROUNDS = 50  # bounded passes of "SIGKILL every member" while a v1 cgroup empties
_CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-run limits; None switches one off. Sizes in bytes, ``cpu_time`` in seconds."""

    memory: int | None = 4 * GiB
    processes: int | None = 256
    file_size: int | None = 1 * GiB
    cpu_time: int | None = 2 * 3600
    output_bytes: int | None = 64 * MiB
    line_bytes: int = 1 * MiB

    def __post_init__(self) -> None:
        for name in LIMIT_NAMES:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"runner.limits.{name} must be at least 1")


# ------------------------------------------------------------------------------------------------ cgroups


@dataclass(frozen=True, slots=True)
class _Hierarchy:
    version: int  # 1 or 2
    parents: dict[str, Path]  # controller ("memory", "pids") -> the server's own cgroup directory for it


def _mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, filesystem type, super options) of every mount."""
    mounts = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) >= 5 and len(rfields) >= 3:
                mounts.append((fields[4], rfields[0], rfields[2]))
    return mounts


def _own_cgroups() -> dict[str, str]:
    """The server's cgroup path per v1 controller, and under "" its v2 path."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def _find_hierarchy() -> _Hierarchy | None:
    own = _own_cgroups()
    mounts = _mountinfo()
    v1: dict[str, Path] = {}
    for point, fstype, options in mounts:
        if fstype != "cgroup":
            continue
        for controller in ("memory", "pids"):
            if controller in options.split(",") and controller in own:
                parent = Path(point) / own[controller].lstrip("/")
                if _writable_dir(parent):
                    v1[controller] = parent
    for point, fstype, _ in mounts:
        if fstype != "cgroup2" or "" not in own:
            continue
        parent = Path(point) / own[""].lstrip("/")
        try:
            enabled = (parent / "cgroup.subtree_control").read_text().split()
        except OSError:
            continue
        v2 = {c: parent for c in ("memory", "pids") if c in enabled}
        if v2 and _writable_dir(parent) and len(v2) >= len(v1):  # delegated to us, with controllers enabled
            return _Hierarchy(2, v2)
    return _Hierarchy(1, v1) if v1 else None


@cache
def _hierarchy() -> _Hierarchy | None:
    return _find_hierarchy()


class RunCgroup:
    """A cgroup of its own for one run: memory and process caps, a kill that reaches every member.

    ``create`` returns None when this machine gives the server no writable cgroup. The agent joins it from
    ``preexec`` before it runs a single instruction of its own, so nothing it forks escapes.
    """

    def __init__(self, version: int, dirs: dict[str, Path]) -> None:
        self.version = version
        self.dirs = dirs  # controller -> this run's directory (on v2 the same one for both)

    @classmethod
    def create(cls, limits: Limits) -> RunCgroup | None:
        hierarchy = _hierarchy()
        if hierarchy is None:
            return None
        wanted = {"memory": limits.memory, "pids": limits.processes}
        name = f"aicm-run-{uuid.uuid4().hex[:12]}"
        dirs: dict[str, Path] = {}
        group = cls(hierarchy.version, dirs)
        try:
            for controller, value in wanted.items():
                parent = hierarchy.parents.get(controller)
                if value is None or parent is None:
                    continue
                path = parent / name
                path.mkdir(exist_ok=True)
                dirs[controller] = path
                group._set(controller, value)
        except OSError:
            group.remove()
            return None
        return group if dirs else None

    def _set(self, controller: str, value: int) -> None:
        path = self.dirs[controller]
        if controller == "pids":
            (path / "pids.max").write_text(str(value))
        elif self.version == 2:
            (path / "memory.max").write_text(str(value))
            with contextlib.suppress(OSError):  # no swap accounting: nothing to cap
                (path / "memory.swap.max").write_text("0")
        else:
            (path / "memory.limit_in_bytes").write_text(str(value))
            with contextlib.suppress(OSError):
                (path / "memory.memsw.limit_in_bytes").write_text(str(value))

    @property
    def procs_files(self) -> list[Path]:
        return [path / "cgroup.procs" for path in dict.fromkeys(self.dirs.values())]

    def pids(self) -> set[int]:
        members: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(OSError):
                members.update(int(pid) for pid in procs.read_text().split())
        return members

    def kill(self) -> None:
        """SIGKILL every member, including those forked while this runs (bounded)."""
        if self.version == 2:
            for path in dict.fromkeys(self.dirs.values()):
                with contextlib.suppress(OSError):
                    (path / "cgroup.kill").write_text("1")
                    return
        for _ in range(_KILL_ROUNDS):
            members = self.pids()
            if not members:
                return
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def limit_hit(self) -> str | None:
        """``"memory"`` after an OOM kill in the group, ``"processes"`` after a refused fork, else None."""
        memory = self.dirs.get("memory")
        if memory is not None:
            events = "memory.events" if self.version == 2 else "memory.oom_control"
            if _counter(memory / events, "oom_kill") > 0:
                return "memory"
        pids = self.dirs.get("pids")
        if pids is not None and _counter(pids / "pids.events", "max") > 0:
            return "processes"
        return None

    def remove(self) -> None:
        """Delete the directories (a cgroup goes once empty; call after ``kill``)."""
        for path in dict.fromkeys(self.dirs.values()):
            with contextlib.suppress(OSError):
                path.rmdir()


def _counter(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


# ----------------------------------------------------------------------------------------------- rlimits


def preexec(limits: Limits, cgroup: RunCgroup | None) -> Callable[[], None]:
    """The function the forked child runs before exec: join the cgroup, set the rlimits.

    Everything is computed here, in the parent; the child only writes a few bytes and calls setrlimit.
    """
    joins = [os.fsencode(path) for path in (cgroup.procs_files if cgroup else [])]
    covered = set(cgroup.dirs) if cgroup else set()
    rlimits: list[tuple[int, tuple[int, int]]] = [(resource.RLIMIT_CORE, (0, 0))]
    if limits.file_size is not None:
        rlimits.append((resource.RLIMIT_FSIZE, (limits.file_size, limits.file_size)))
    if limits.cpu_time is not None:
        rlimits.append((resource.RLIMIT_CPU, (limits.cpu_time, limits.cpu_time + _CPU_KILL_AFTER)))
    if limits.memory is not None and "memory" not in covered:
        rlimits.append((resource.RLIMIT_DATA, (limits.memory, limits.memory)))
    if limits.processes is not None and "pids" not in covered:
        rlimits.append((resource.RLIMIT_NPROC, (limits.processes, limits.processes)))

    def apply() -> None:
        for path in joins:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # "0" is the writing process itself
            finally:
                os.close(fd)
        for which, value in rlimits:
            resource.setrlimit(which, value)

    return apply


def limit_from_exit(returncode: int | None) -> str | None:
    """The rlimit a raw exit status points at: killed by SIGXCPU / SIGXFSZ, or bubblewrap's 128+signal."""
    if returncode is None:
        return None
    sig = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    return {int(signal.SIGXCPU): "cpu_time", int(signal.SIGXFSZ): "file_size"}.get(sig)


def enforcement(limits: Limits) -> dict[str, str]:
    """How each limit is enforced on this machine, for ``/health/detailed`` and the start-up log."""
    hierarchy = _hierarchy()
    parents = hierarchy.parents if hierarchy else {}
    cgroup = f"cgroup v{hierarchy.version}" if hierarchy else ""
    root = os.geteuid() == 0
    processes = f"{cgroup} pids" if "pids" in parents else "not enforced (root)" if root else "rlimit nproc"
    status = {
        "memory": f"{cgroup} memory" if "memory" in parents else "rlimit data",
        "processes": processes,
        "file_size": "rlimit fsize",
        "cpu_time": "rlimit cpu",
        "output_bytes": "reader",
        "line_bytes": "reader",
    }
    return {name: ("off" if getattr(limits, name) is None else how) for name, how in status.items()}
