"""The sandbox and the limits against a hostile agent: a real script run through AgentProcess (CONTRACT §9).

Skips, with the reason, only where bubblewrap cannot run (or, for the memory and process limits, where the
server may create no cgroup); ``AICM_REQUIRE_SERVICES=1`` turns those skips into failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aicm.runner.command import scrubbed_env
from aicm.runner.isolation import sqlite_path
from aicm.runner.limits import Limits, RunCgroup, enforcement, limit_from_exit
from aicm.runner.process import AgentProcess, RunOutcome
from aicm.runner.sandbox import SandboxSpec, SandboxUnavailable, detect, wrap
from tests.conftest import REQUIRE_SERVICES

HOSTILE = Path(__file__).parent / "fixtures" / "hostile_agent.py"
PYTHON = os.path.realpath(sys.executable)  # the interpreter itself, not the venv's link to it
LIMIT = 30.0  # seconds: no run may take longer
MiB = 1024 * 1024
SECRET = "jwt-secret-" + uuid.uuid4().hex


def _skip_or_fail(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(reason + " (AICM_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def bwrap() -> None:
    status = detect("auto")
    if not status.active:
        _skip_or_fail(f"bubblewrap cannot run here: {status.reason}")


def need_cgroup(controller: str) -> None:
    group = RunCgroup.create(Limits())
    has = group is not None and controller in group.dirs
    if group is not None:
        group.remove()
    if not has:
        _skip_or_fail(f"no writable {controller} cgroup: {enforcement(Limits())}")


@dataclass
class Layout:
    """A server's files as the sandbox must hide them, around one task's worktree."""

    root: Path
    worktree: Path
    home: Path
    server: Path  # a read-only extra (think: the install directory) holding config, .env and the data dir
    others: dict[str, Path] = field(default_factory=dict)

    def spec(self, *, network: bool = True) -> SandboxSpec:
        return SandboxSpec(
            worktree=self.worktree,
            home=self.home,
            read_only=[Path(sys.base_prefix), self.server],
            hidden=[
                self.server / "data",
                self.server / "aicm.yaml",
                self.server / ".env",
                self.root / "workspaces",
                self.root / "homes",
                Path.home(),
            ],
            network=network,
        )


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    root = tmp_path
    server = root / "server"
    (server / "data").mkdir(parents=True)
    files = {
        "jwt": server / "data" / "jwt_secret",
        "db": server / "data" / "aicm.db",
        "config": server / "aicm.yaml",
        "env": server / ".env",
        "other_worktree": root / "workspaces" / "other-project" / "task-1" / "notes.md",
        "other_home": root / "homes" / "user-2" / ".claude" / ".credentials.json",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SECRET)
    (server / "README").write_text("public")
    worktree = root / "workspaces" / "project" / "task-7"
    home = root / "homes" / "user-1"
    worktree.mkdir(parents=True)
    home.mkdir(parents=True)
    (worktree / "main.py").write_text("print('mine')")
    shutil.copy(HOSTILE, worktree / "hostile_agent.py")
    return Layout(root, worktree, home, server, files)


@dataclass
class Run:
    outcome: RunOutcome
    reports: list[dict]
    lines: int = 0
    longest: int = 0
    stderr: list[str] = field(default_factory=list)

    def by_target(self, action: str) -> dict[str, dict]:
        return {r["target"]: r for r in self.reports if r["action"] == action}


async def run_hostile(
    layout: Layout, *args: str, sandbox: bool = True, limits: Limits | None = None, network: bool = True
) -> Run:
    """Run the hostile script to its end; keeps only the JSON reports and counts, never all the lines."""
    argv = [PYTHON, str(layout.worktree / "hostile_agent.py"), *args]
    if sandbox:
        argv = wrap(argv, layout.spec(network=network))
    result = Run(RunOutcome(None), [])

    async def on_line(stream: str, line: str) -> None:
        result.lines += 1
        result.longest = max(result.longest, len(line))
        if stream == "stderr" and len(result.stderr) < 20:
            result.stderr.append(line[:500])
        elif line.startswith('{"action"'):
            result.reports.append(json.loads(line))

    async with AgentProcess(
        argv, cwd=layout.worktree, env=scrubbed_env(os.environ, {}), limits=limits
    ) as agent:
        result.outcome = await agent.run(on_line, time_limit=LIMIT, grace=1.0)
    return result


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def existing(paths: list[str]) -> list[str]:
    return [path for path in paths if os.path.exists(path)]


def no_survivors(marker: str) -> bool:
    """Whether no process has ``marker`` in its argv; kills those that do, so a failure leaks nothing."""
    survivors = marked_processes(marker)
    for pid in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return not survivors


def marked_processes(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# ------------------------------------------------------------------------------------------ the sandbox


async def test_the_agent_sees_none_of_the_servers_secrets(bwrap: None, layout: Layout) -> None:
    targets = [str(p) for p in layout.others.values()]
    targets += [f"/proc/{os.getpid()}/environ", str(Path.home()), "/etc/shadow"]
    readable = [str(layout.worktree / "main.py"), str(layout.server / "README")]
    run = await run_hostile(layout, "read", *targets, *readable)

    reads = run.by_target("read")
    assert run.outcome.exit_code == 0, run.stderr
    for target in targets:
        assert target in reads, run.stderr
        assert not reads[target]["ok"] or SECRET.encode().hex()[:40] not in reads[target]["detail"], target
        assert SECRET not in reads[target]["detail"]
    for name in ("jwt", "db", "config", "env", "other_worktree", "other_home"):
        assert not reads[str(layout.others[name])]["ok"], name
    # The controls: the worktree is the agent's own, the read-only extra is there (minus what is hidden in
    # it: names covered by an empty tmpfs or /dev/null may show, their contents do not).
    assert all(reads[path]["ok"] for path in readable), reads
    own_environ = await asyncio.to_thread(Path(f"/proc/{os.getpid()}/environ").read_bytes)
    assert own_environ[:100].hex() not in reads[f"/proc/{os.getpid()}/environ"]["detail"]


async def test_the_agent_sees_only_its_own_processes(bwrap: None, layout: Layout) -> None:
    run = await run_hostile(layout, "procs")

    pids = run.by_target("procs")["/proc"]["detail"].split(",")
    assert pids == ["1", "2"]  # bubblewrap's init and the agent: none of the server's processes


async def test_the_agent_writes_only_its_worktree_home_and_private_tmp(bwrap: None, layout: Layout) -> None:
    marker = f"/tmp/aicm-hostile-{uuid.uuid4().hex}"
    outside = [
        str(layout.server / "planted"),
        str(layout.root / "workspaces" / "other-project" / "task-1" / "planted"),
        "/usr/planted",
        "/etc/planted",
        str(Path.home() / "planted"),
    ]
    inside = [str(layout.worktree / "written"), str(layout.home / "written"), marker]
    run = await run_hostile(layout, "write", *outside, *inside)

    writes = run.by_target("write")
    assert not any(writes[path]["ok"] for path in outside), writes
    assert all(writes[path]["ok"] for path in inside), writes
    on_host = existing([*outside, *inside])
    assert on_host == inside[:2]  # in the worktree and the home; the sandbox's /tmp is its own


async def test_without_network_the_agent_cannot_reach_the_servers_port(bwrap: None, layout: Layout) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = str(server.getsockname()[1])
        offline = await run_hostile(layout, "connect", port, network=False)
        online = await run_hostile(layout, "connect", port, network=True)

    assert not offline.by_target("connect")[port]["ok"]
    assert online.by_target("connect")[port]["ok"]  # the control: the same port, reachable with network


async def test_a_setsid_grandchild_dies_with_the_sandboxed_run(bwrap: None, layout: Layout) -> None:
    marker = f"aicm-escape-{uuid.uuid4().hex}"
    run = await run_hostile(layout, "escape", marker)

    assert run.by_target("escape")[marker]["ok"]
    assert run.outcome.exit_code == 0 and run.outcome.limit is None
    assert no_survivors(marker)


async def test_a_setsid_grandchild_dies_with_the_run_in_its_cgroup(layout: Layout) -> None:
    need_cgroup("pids")
    marker = f"aicm-escape-{uuid.uuid4().hex}"
    run = await run_hostile(layout, "escape", marker, sandbox=False, limits=Limits())

    assert run.by_target("escape")[marker]["ok"]
    assert no_survivors(marker)


async def test_cancel_asks_the_sandboxed_agent_to_stop_before_killing_it(bwrap: None, layout: Layout) -> None:
    source = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (os.write(1, b'got SIGTERM\\n'), os._exit(3)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(20)\n"
    )
    argv = wrap([PYTHON, "-c", source], layout.spec())
    cancel = asyncio.Event()
    lines: list[str] = []

    async def on_line(stream: str, line: str) -> None:
        lines.append(line)
        if line == "ready":
            cancel.set()

    async with AgentProcess(argv, cwd=layout.worktree, env={}, sandboxed=True) as agent:
        outcome = await agent.run(on_line, time_limit=LIMIT, cancel_event=cancel, grace=5.0)

    assert lines == ["ready", "got SIGTERM"]
    assert outcome.cancelled and outcome.exit_code == 3


def test_bubblewrap_mode_fails_clearly_when_it_cannot_run() -> None:
    with pytest.raises(SandboxUnavailable, match="not installed"):
        detect("bubblewrap", bwrap="aicm-no-such-bwrap")
    fallback = detect("auto", bwrap="aicm-no-such-bwrap")
    assert not fallback.active and "not installed" in fallback.reason
    assert detect("none").reason == "runner.sandbox is none"


def test_the_sqlite_file_of_a_database_url_is_found_wherever_it_lies(tmp_path: Path) -> None:
    assert sqlite_path(f"sqlite://{tmp_path}/db/aicm.db?journal_mode=wal") == tmp_path / "db" / "aicm.db"
    assert sqlite_path("sqlite://./aicm.db") == Path.cwd() / "aicm.db"
    assert sqlite_path("sqlite://:memory:") is None
    assert sqlite_path("postgres://u@db:5432/aicm") is None


def test_the_deepest_rule_wins(layout: Layout) -> None:
    argv = wrap(["true"], layout.spec())

    def position(*option: str) -> int:
        for i in range(len(argv) - len(option) + 1):
            if tuple(argv[i : i + len(option)]) == option:
                return i
        raise AssertionError(f"{option} not in {argv}")

    workspaces, worktree = str(layout.root / "workspaces"), str(layout.worktree)
    env_file = str(layout.server / ".env")
    # the workspace root is not bound, so nothing hides it; the .env inside a read-only extra is covered
    assert workspaces not in argv
    server = str(layout.server)
    assert position("--ro-bind-try", server, server) < position("--ro-bind", "/dev/null", env_file)
    assert position("--tmpfs", "/tmp") < position("--bind", worktree, worktree)
    assert argv[argv.index("--") + 1 :] == ["true"]


# ------------------------------------------------------------------------------------------- the limits


async def test_a_fork_bomb_is_stopped_by_the_process_limit(bwrap: None, layout: Layout) -> None:
    need_cgroup("pids")
    run = await run_hostile(layout, "forkbomb", limits=Limits(processes=64))

    assert run.outcome.limit == "processes"
    assert run.outcome.exit_code != 0
    assert "forked them all" not in json.dumps(run.reports)


async def test_allocating_past_the_memory_limit_ends_the_run(bwrap: None, layout: Layout) -> None:
    need_cgroup("memory")
    run = await run_hostile(layout, "alloc", "1024", limits=Limits(memory=256 * MiB))

    assert run.outcome.limit == "memory"
    allocated = [int(r["target"]) for r in run.reports if r["action"] == "alloc"]
    assert max(allocated, default=0) < 256


async def test_a_50_mb_line_is_cut_and_2_million_lines_stop_at_the_output_cap(
    bwrap: None, layout: Layout
) -> None:
    before = rss_kib()
    big = await run_hostile(layout, "bigline", "50", limits=Limits(line_bytes=MiB))
    many = await run_hostile(layout, "lines", "2000000", limits=Limits(output_bytes=MiB))
    growth_mib = (rss_kib() - before) / 1024

    assert big.outcome.limit is None and big.outcome.exit_code == 0
    assert MiB <= big.longest < MiB + 100  # the line, cut at line_bytes with a note of what was dropped
    assert big.by_target("bigline")["50"]["ok"]
    assert many.outcome.limit == "output_bytes"
    assert many.outcome.exit_code != 0  # killed, not finished
    assert 50_000 < many.lines < 150_000  # ~1 MiB of "line N" lines was delivered, then nothing
    assert growth_mib < 64, f"the test process grew by {growth_mib:.0f} MiB"


async def test_cpu_time_and_file_size_limits_are_named_by_the_exit_signal(layout: Layout) -> None:
    assert limit_from_exit(-24) == "cpu_time" and limit_from_exit(128 + 24) == "cpu_time"
    assert limit_from_exit(-25) == "file_size" and limit_from_exit(128 + 25) == "file_size"
    assert limit_from_exit(0) is None and limit_from_exit(-9) is None and limit_from_exit(None) is None
    argv = [PYTHON, "-c", "while True: pass"]

    async with AgentProcess(argv, cwd=layout.worktree, env={}, limits=Limits(cpu_time=1)) as agent:
        outcome = await agent.run(lambda stream, line: asyncio.sleep(0), time_limit=LIMIT)

    assert outcome.limit == "cpu_time"


async def test_writing_past_the_file_size_limit_ends_the_sandboxed_run(bwrap: None, layout: Layout) -> None:
    dd = shutil.which("dd")
    assert dd is not None
    argv = wrap([dd, "if=/dev/zero", "of=big", "bs=1M", "count=4"], layout.spec())

    async with AgentProcess(argv, cwd=layout.worktree, env={}, limits=Limits(file_size=MiB)) as agent:
        outcome = await agent.run(lambda stream, line: asyncio.sleep(0), time_limit=LIMIT)

    assert outcome.limit == "file_size"  # dd died of SIGXFSZ, bubblewrap exits with 128 + 25
    assert outcome.exit_code == 128 + signal.SIGXFSZ
