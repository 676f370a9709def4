"""The bubblewrap sandbox an agent runs in (CONTRACT §9, ``runner.sandbox``).

``wrap(argv, spec)`` turns an agent command line into a ``bwrap`` one. The sandbox starts from an empty root
and binds in only what a program needs: the system directories (``/usr``, ``/etc``, ``/opt`` and the
``/bin``-style links) read-only, the task's worktree and the user's agent home read-write at their own paths,
a private ``/tmp``, a fresh ``/dev`` and the ``/proc`` of a new PID namespace. Whatever is not bound does not
exist inside: the server's data directory, the workspace root, ``/root``, ``/home`` and ``/work`` need no
hiding when they are not under a bound directory. ``hidden`` paths are covered anyway (an empty read-only
tmpfs over a directory, ``/dev/null`` over a file) for the cases where they are: a config file under
``/etc``, or the workspace root around the worktree.

Mounts are applied from the shallowest path to the deepest, so the deepest rule wins: the worktree shows
through a hidden workspace root, a hidden ``.env`` inside a read-only extra stays hidden.

Ending the run: bubblewrap's init is pid 1 of the namespace and dies with bubblewrap (``--die-with-parent``);
when pid 1 dies the kernel kills every process of the namespace, ``setsid`` and double forks included. So
SIGKILL to the bwrap process (what ``AgentProcess.kill`` sends to its group) ends everything the agent
started. bubblewrap does not forward SIGTERM: it dies of it, and the agent is killed at once rather than
asked to stop.

Environment: bubblewrap passes its own environment through (``AgentProcess`` gives it the scrubbed one;
secrets stay out of argv and so out of ``ps``); ``wrap`` sets only ``HOME``, ``CLAUDE_CONFIG_DIR`` and
``TMPDIR``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

__all__ = [
    "SYSTEM_HIDDEN",
    "SandboxSpec",
    "SandboxStatus",
    "SandboxUnavailable",
    "detect",
    "wrap",
]

SandboxMode = Literal["auto", "bubblewrap", "none"]

SYSTEM_DIRS = ("/usr", "/etc", "/opt", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Under /etc but not for agents: password hashes and host keys (root inside may read root-owned files).
SYSTEM_HIDDEN = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/ssh", "/etc/sudoers.d")
_PROBE_TIMEOUT = 15.0


class SandboxUnavailable(RuntimeError):
    """``runner.sandbox: bubblewrap`` was asked for and bubblewrap cannot run here."""


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """What one run may see. Paths are absolute; ``hidden`` lists what it must not see even when under a
    bound directory (the server's data dir, config and ``.env`` files, the workspace root, other agent homes,
    the server's home)."""

    worktree: Path
    home: Path
    read_only: Sequence[Path] = ()
    read_write: Sequence[Path] = ()
    hidden: Sequence[Path] = ()
    network: bool = True
    bwrap: str = "bwrap"
    system_dirs: Sequence[str] = field(default=SYSTEM_DIRS)

    def __post_init__(self) -> None:
        for path in (self.worktree, self.home, *self.read_only, *self.read_write, *self.hidden):
            if not Path(path).is_absolute():
                raise ValueError(f"sandbox paths must be absolute: {path}")


@dataclass(frozen=True, slots=True)
class SandboxStatus:
    """What isolation is in force: ``mode`` is "bubblewrap" or "none"; ``reason`` says why."""

    mode: Literal["bubblewrap", "none"]
    requested: SandboxMode
    reason: str
    bwrap: str | None = None

    @property
    def active(self) -> bool:
        return self.mode == "bubblewrap"


def _depth(path: str) -> int:
    return len(Path(path).parts)


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def wrap(argv: Sequence[str], spec: SandboxSpec) -> list[str]:
    """The ``bwrap`` command line that runs ``argv`` inside ``spec``."""
    mounts: list[tuple[str, list[str]]] = [  # (path, options), sorted by depth below
        ("/dev", ["--dev", "/dev"]),
        ("/proc", ["--proc", "/proc"]),
        ("/tmp", ["--tmpfs", "/tmp"]),
        ("/var/tmp", ["--tmpfs", "/var/tmp"]),
    ]
    bound: list[str] = []
    for name in spec.system_dirs:
        path = Path(name)
        if path.is_symlink():  # merged /usr: /bin -> usr/bin
            mounts.append((name, ["--symlink", os.readlink(path), name]))
        elif path.is_dir():
            mounts.append((name, ["--ro-bind", name, name]))
            bound.append(name)
    resolv = Path("/etc/resolv.conf")
    target = str(resolv.resolve())  # e.g. /run/systemd/resolve/stub-resolv.conf
    if resolv.is_symlink() and not any(_under(target, b) for b in bound):
        mounts.append((target, ["--ro-bind-try", target, target]))
    for path in map(str, spec.read_only):
        mounts.append((path, ["--ro-bind-try", path, path]))
        bound.append(path)
    for path in map(str, (*spec.read_write, spec.worktree, spec.home)):
        mounts.append((path, ["--bind", path, path]))
        bound.append(path)
    covers: list[str] = []  # hidden directories: an empty tmpfs, made read-only once all is mounted
    for path in map(str, (*SYSTEM_HIDDEN, *spec.hidden)):
        if not any(_under(path, b) for b in bound) or not os.path.lexists(path):
            continue  # not visible anyway
        cover = ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
        mounts.append((path, cover))
        if os.path.isdir(path):
            covers.append(path)
    mounts.sort(key=lambda mount: _depth(mount[0]))  # stable: the deepest rule is applied last and wins

    home = str(spec.home)
    args = [spec.bwrap, "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not spec.network:
        args.append("--unshare-net")
    for _, options in mounts:
        args += options
    for path in sorted(covers, key=_depth, reverse=True):  # a write there fails instead of vanishing
        args += ["--remount-ro", path]  # not recursive: a bound directory below one stays writable
    args += ["--remount-ro", "/"]  # the directories bubblewrap made for the mount points stay read-only
    args += ["--setenv", "HOME", home, "--setenv", "CLAUDE_CONFIG_DIR", f"{home}/.claude"]
    args += ["--setenv", "TMPDIR", "/tmp", "--chdir", str(spec.worktree), "--", *argv]
    return args


def _probe(bwrap: str) -> str | None:
    """None when bubblewrap runs a program with every option ``wrap`` uses, else why not."""
    with tempfile.TemporaryDirectory(prefix="aicm-sandbox-probe-") as tmp:
        worktree, home = Path(tmp, "worktree"), Path(tmp, "home")
        worktree.mkdir()
        home.mkdir()
        spec = SandboxSpec(worktree=worktree, home=home, network=False, bwrap=bwrap)
        try:
            done = subprocess.run(
                wrap(["true"], spec),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_PROBE_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap could not run: {exc}"
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        return f"bubblewrap failed: {message[-1] if message else f'exit {done.returncode}'}"
    return None


@cache
def detect(mode: SandboxMode = "auto", bwrap: str = "bwrap") -> SandboxStatus:
    """Which sandbox runs will get; tries bubblewrap once per process (cached).

    ``"bubblewrap"`` raises SandboxUnavailable when it cannot run; ``"auto"`` falls back to none and says why.
    """
    if mode not in ("auto", "bubblewrap", "none"):
        raise ValueError(f"runner.sandbox must be auto, bubblewrap or none, not {mode!r}")
    if mode == "none":
        return SandboxStatus("none", mode, "runner.sandbox is none")
    path = shutil.which(bwrap)
    reason = f"{bwrap} is not installed (Debian package bubblewrap)" if path is None else _probe(path)
    if reason is None:
        return SandboxStatus("bubblewrap", mode, "bubblewrap works", bwrap=path)
    if mode == "bubblewrap":
        raise SandboxUnavailable(f"runner.sandbox is bubblewrap but {reason}")
    return SandboxStatus("none", mode, reason)
