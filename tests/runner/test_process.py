"""Agent processes: exec without a shell, line reading, cancel of the whole group, timeouts (CONTRACT §5)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

import pytest

from aicm.config import DEFAULT_RUNNER_COMMAND
from aicm.runner.command import build_argv, scrubbed_env
from aicm.runner.process import AgentNotFound, AgentProcess, RunOutcome, _LineSplitter
from aicm.runner.stream_json import ParsedLine, RunSummary, parse_line

PY = sys.executable
DEMO_TEMPLATE = [PY, "-m", "aicm.runner.demo_agent", *DEFAULT_RUNNER_COMMAND[1:]]
LIMIT = 20.0  # seconds: no single test may wait longer than this for anything


CLAUDE_CONFIG = ""  # set per test: the demo agent keeps its session files there, not in ~/.claude


@pytest.fixture(autouse=True)
def claude_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CLAUDE_CONFIG", str(tmp_path / "claude"))


def agent_env(**extra: str) -> dict[str, str]:
    return scrubbed_env(os.environ, {"AICM_DEMO_DELAY": "0", "CLAUDE_CONFIG_DIR": CLAUDE_CONFIG, **extra})


def program(tmp_path: Path, source: str) -> list[str]:
    """argv running ``source`` as a Python script."""
    script = tmp_path / f"prog_{uuid.uuid4().hex[:8]}.py"
    script.write_text(source, encoding="utf-8")
    return [PY, str(script)]


async def read_all(agent: AgentProcess) -> list[tuple[str, str]]:
    async with asyncio.timeout(LIMIT):
        return [item async for item in agent.lines()]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie nobody reaped yet counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


async def gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid) and time.monotonic() < deadline:  # noqa: ASYNC110 - nothing to await but the clock
        await asyncio.sleep(0.02)
    return not alive(pid)


# --------------------------------------------------------------------------- exec


async def test_prompt_with_shell_metacharacters_reaches_the_program_as_one_argument(tmp_path: Path) -> None:
    # given
    marker = tmp_path / "pwned"
    prompt = f"$(touch {marker}); rm -rf ~ && echo \"q\" 'x' `id` | ; > {{prompt}} {{}} `touch {marker}`"
    out = tmp_path / "seen.json"
    argv = program(
        tmp_path,
        "import json, os, sys\n"
        "with open(sys.argv[1], 'w', encoding='utf-8') as f:\n"
        "    json.dump({'argv': sys.argv[2:], 'cwd': os.getcwd(), 'env': dict(os.environ)}, f)\n",
    )
    cwd = tmp_path / "workspace"
    cwd.mkdir()
    env = scrubbed_env({**os.environ, "JWT_SECRET": "x" * 40}, {"AICM_EXTRA": "yes"})

    # when
    async with AgentProcess(
        build_argv([*argv, str(out), "-p", "{prompt}"], prompt), cwd=cwd, env=env
    ) as agent:
        assert await read_all(agent) == []
        code = await agent.wait()

    # then
    seen = json.loads(out.read_text(encoding="utf-8"))
    assert code == 0
    assert seen["argv"] == ["-p", prompt]
    assert seen["cwd"] == str(cwd)
    assert seen["env"]["AICM_EXTRA"] == "yes"
    assert seen["env"]["PATH"] == os.environ["PATH"]
    assert "JWT_SECRET" not in seen["env"]
    assert not marker.exists()


async def test_missing_executable_raises_agent_not_found(tmp_path: Path) -> None:
    for command in ("aicm-no-such-agent-cli", str(tmp_path / "missing" / "claude")):
        with pytest.raises(AgentNotFound) as info:
            await AgentProcess([command, "-p", "x"], cwd=tmp_path, env=agent_env()).start()
        assert info.value.command == command
        assert command in str(info.value)


async def test_non_executable_file_raises_agent_not_found(tmp_path: Path) -> None:
    script = tmp_path / "claude"
    script.write_text("#!/bin/sh\n")

    with pytest.raises(AgentNotFound, match="cannot be executed"):
        await AgentProcess([str(script)], cwd=tmp_path, env=agent_env()).start()


async def test_missing_working_directory_is_not_agent_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        await AgentProcess([PY, "-c", "pass"], cwd=tmp_path / "nope", env=agent_env()).start()
    assert not isinstance(info.value, AgentNotFound)


# --------------------------------------------------------------------------- reading


async def test_non_zero_exit_and_both_streams(tmp_path: Path) -> None:
    argv = program(
        tmp_path,
        "import sys\n"
        "print('to stdout', flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        "sys.stdout.write('no newline at the end')\n"
        "sys.exit(3)\n",
    )

    async with AgentProcess(argv, cwd=tmp_path, env=agent_env()) as agent:
        lines = await read_all(agent)
        code = await agent.wait()

    assert code == 3
    assert agent.returncode == 3
    assert sorted(lines) == [
        ("stderr", "to stderr"),
        ("stdout", "no newline at the end"),
        ("stdout", "to stdout"),
    ]


async def test_five_thousand_lines_arrive_in_order_quickly(tmp_path: Path) -> None:
    argv = program(
        tmp_path,
        "import sys\n"
        "for n in range(5000):\n"
        "    print(f'out {n}')\n"
        "    if n % 10 == 0:\n"
        "        print(f'err {n}', file=sys.stderr)\n",
    )
    started = time.monotonic()

    async with AgentProcess(argv, cwd=tmp_path, env=agent_env()) as agent:
        lines = await read_all(agent)
        assert await agent.wait() == 0

    assert [line for stream, line in lines if stream == "stdout"] == [f"out {n}" for n in range(5000)]
    assert [line for stream, line in lines if stream == "stderr"] == [f"err {n}" for n in range(0, 5000, 10)]
    assert time.monotonic() - started < 5


async def test_long_lines_are_cut_and_marked(tmp_path: Path) -> None:
    argv = program(
        tmp_path,
        "import sys\n"
        "out = sys.stdout.buffer\n"
        "out.write(b'a' * 5000 + b'\\n')\n"
        "out.write(b'short\\r\\n')\n"
        "out.write(b'c' * 1000 + b'\\n')\n"  # exactly the limit: kept whole
        "out.write(('x' + '\\u00e9' * 600).encode() + b'\\n')\n"  # the cut falls inside a character
        "out.write(b'\\xff\\x00ok\\n')\n"
        "out.write(b'b' * 3000)\n",  # no newline before EOF
    )

    async with AgentProcess(argv, cwd=tmp_path, env=agent_env(), max_line_bytes=1000) as agent:
        lines = [line for _, line in await read_all(agent)]

    assert lines == [
        "a" * 1000 + " …[truncated 4000 bytes]",
        "short",
        "c" * 1000,
        "x" + "\u00e9" * 499 + " …[truncated 202 bytes]",
        "\ufffd\ufffdok",
        "b" * 1000 + " …[truncated 2000 bytes]",
    ]


async def test_a_huge_line_is_never_held_in_memory(tmp_path: Path) -> None:
    size = 32 * 1024 * 1024
    argv = program(
        tmp_path,
        "import sys\n"
        f"chunk = b'z' * 65536\nfor _ in range({size // 65536}):\n    sys.stdout.buffer.write(chunk)\n"
        "sys.stdout.buffer.write(b'\\nafter\\n')\n",
    )
    tracemalloc.start()
    try:
        async with AgentProcess(argv, cwd=tmp_path, env=agent_env(), max_line_bytes=64 * 1024) as agent:
            lines = [line for _, line in await read_all(agent)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert lines == ["z" * 65536 + f" …[truncated {size - 65536} bytes]", "after"]
    assert peak < 4 * 1024 * 1024


async def test_lines_can_be_iterated_once(tmp_path: Path) -> None:
    async with AgentProcess([PY, "-c", "print(1)"], cwd=tmp_path, env=agent_env()) as agent:
        await read_all(agent)
        with pytest.raises(RuntimeError, match="once"):
            await read_all(agent)


async def test_lines_end_when_a_leftover_child_holds_the_pipes(tmp_path: Path) -> None:
    # given: the agent exits at once, but its background child keeps stdout open for 30 s
    argv = program(
        tmp_path,
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        "print(f'child {child.pid}', flush=True)\n",
    )
    started = time.monotonic()

    # when
    async with AgentProcess(argv, cwd=tmp_path, env=agent_env(), drain_timeout=0.3) as agent:
        lines = await read_all(agent)
        async with asyncio.timeout(LIMIT):
            code = await agent.wait()
    child_pid = int(lines[0][1].split()[1])

    # then: reading stopped soon after the exit, and leaving the block killed the leftover
    assert code == 0
    assert time.monotonic() - started < 5
    assert await gone(child_pid)


# --------------------------------------------------------------------------- cancel


async def test_cancel_kills_the_whole_process_group(tmp_path: Path) -> None:
    # given: the demo agent started a child in its group and is sleeping
    argv = build_argv(DEMO_TEMPLATE, "spawn-child sleep:30")
    async with AgentProcess(argv, cwd=tmp_path, env=agent_env()) as agent:
        lines = agent.lines()
        child_pid = None
        async with asyncio.timeout(LIMIT):
            while child_pid is None:
                stream, line = await anext(lines)
                if found := re.search(r"pid (\d+)", parse_line(stream, line).text):
                    child_pid = int(found.group(1))
        assert alive(child_pid)
        started = time.monotonic()

        # when
        await agent.cancel(grace=3)

        # then: the pipes closed (nobody holds them), the agent was ended by SIGTERM, the child is gone too
        async with asyncio.timeout(LIMIT):
            rest = [item async for item in lines]
            code = await agent.wait()
        # cancel() returns once the group is gone; an orphaned child counts until init reaps it (slow here)
        assert time.monotonic() - started < 5
    assert not any("result" in line for _, line in rest)
    assert code is None
    assert await gone(child_pid)


async def test_program_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    argv = program(
        tmp_path,
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n",
    )
    async with AgentProcess(argv, cwd=tmp_path, env=agent_env()) as agent:
        lines = agent.lines()
        async with asyncio.timeout(LIMIT):
            assert await anext(lines) == ("stdout", "ready")
        started = time.monotonic()

        await agent.cancel(grace=0.3)

        async with asyncio.timeout(LIMIT):
            assert await agent.wait() is None
            assert [item async for item in lines] == []
        elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 3
    assert agent.returncode == -9
    assert not alive(agent.pid)


async def test_cancelled_program_exit_code_is_what_it_returned(tmp_path: Path) -> None:
    argv = program(
        tmp_path,
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n",
    )
    async with AgentProcess(argv, cwd=tmp_path, env=agent_env()) as agent:
        lines = agent.lines()
        async with asyncio.timeout(LIMIT):
            await anext(lines)
            await agent.cancel(grace=3)
            assert await agent.wait() == 3


async def test_leaving_the_block_on_an_error_kills_the_agent(tmp_path: Path) -> None:
    agent = AgentProcess([PY, "-c", "import time; time.sleep(30)"], cwd=tmp_path, env=agent_env())

    with pytest.raises(ZeroDivisionError):
        async with agent:
            1 / 0  # noqa: B018

    assert agent.returncode == -9
    assert await gone(agent.pid)


# --------------------------------------------------------------------------- run(): timeout and cancel


async def run_demo(
    tmp_path: Path, prompt: str, *, resume: str | None = None, **run_options: object
) -> tuple[RunOutcome, list[ParsedLine], RunSummary, Path]:
    cwd = tmp_path / "workspace"
    cwd.mkdir(exist_ok=True)
    parsed: list[ParsedLine] = []
    summary = RunSummary()

    async def on_line(stream: str, line: str) -> None:
        parsed.append(parse_line(stream, line))
        summary.feed(parsed[-1])
        if "Waiting" in parsed[-1].text and isinstance(run_options.get("cancel_event"), asyncio.Event):
            run_options["cancel_event"].set()

    argv = build_argv(DEMO_TEMPLATE, prompt, resume_session_id=resume)
    async with AgentProcess(argv, cwd=cwd, env=agent_env()) as agent, asyncio.timeout(LIMIT):
        outcome = await agent.run(on_line, **run_options)  # type: ignore[arg-type]
    return outcome, parsed, summary, cwd


async def test_demo_agent_end_to_end_and_follow_up(tmp_path: Path) -> None:
    # when
    outcome, lines, summary, cwd = await run_demo(tmp_path, "fix the failing test", time_limit=LIMIT)

    # then
    assert outcome == RunOutcome(exit_code=0)
    assert lines[0].kind == "system" and lines[-1].kind == "result"
    assert {"assistant", "user"} <= {line.kind for line in lines}
    assert all(line.stream == "stdout" for line in lines)
    assert lines[0].data is not None and lines[0].data["cwd"] == str(cwd)
    assert lines[0].text.startswith("session started (model ")
    assert any("fix the failing test" in line.text for line in lines if line.kind == "assistant")
    assert any(line.text.startswith("Bash: ") for line in lines)
    assert uuid.UUID(summary.session_id or "")
    assert summary.cost_usd is not None and summary.cost_usd > 0
    assert summary.succeeded(outcome.exit_code)

    # when: a follow-up resumes the conversation
    follow_up, _, resumed, _ = await run_demo(tmp_path, "now the docs", resume=summary.session_id)

    # then
    assert follow_up == RunOutcome(exit_code=0)
    assert resumed.session_id == summary.session_id
    # and each run left a line in the worktree, so the task's branch shows a real diff
    notes = (cwd / "AICM_DEMO.md").read_text(encoding="utf-8").splitlines()
    assert notes[0] == "# Demo agent notes"
    assert notes[-2:] == ["- fix the failing test", "- follow-up: now the docs"]


async def test_demo_agent_fail_stderr_and_many_lines(tmp_path: Path) -> None:
    outcome, lines, summary, _ = await run_demo(tmp_path, "fail stderr lines:2000")

    assert outcome == RunOutcome(exit_code=1)
    assert summary.is_error is True
    assert not summary.succeeded(outcome.exit_code)
    assert [line.text for line in lines if line.stream == "stderr"] == [
        "demo-agent: warning: this line was written to stderr on request"
    ]
    assert sum(line.text.startswith("Working… line") for line in lines) == 2000


async def test_run_past_its_time_limit_is_timed_out(tmp_path: Path) -> None:
    started = time.monotonic()

    outcome, lines, summary, _ = await run_demo(tmp_path, "sleep:30", time_limit=1.0, grace=2)

    assert outcome == RunOutcome(exit_code=None, timed_out=True)
    assert 1.0 <= time.monotonic() - started < 5
    assert lines[0].kind == "system"  # what it printed before the timeout is kept
    assert not summary.has_result


async def test_run_stops_when_cancel_is_requested(tmp_path: Path) -> None:
    started = time.monotonic()

    outcome, lines, _, _ = await run_demo(
        tmp_path, "spawn-child sleep:30", cancel_event=asyncio.Event(), grace=2
    )

    assert outcome == RunOutcome(exit_code=None, cancelled=True)
    assert time.monotonic() - started < 5
    child_pid = next(int(m.group(1)) for line in lines if (m := re.search(r"pid (\d+)", line.text)))
    assert await gone(child_pid)


async def test_run_that_ends_on_its_own_is_neither_timed_out_nor_cancelled(tmp_path: Path) -> None:
    event = asyncio.Event()
    outcome, _, _, _ = await run_demo(tmp_path, "quick", time_limit=LIMIT, cancel_event=event)

    assert outcome == RunOutcome(exit_code=0)


def test_lines_are_cut_the_same_however_the_pipe_delivers_them() -> None:
    # given output with long lines (one cut inside a character, one whose \r is past the limit), \r\n endings,
    # empty lines and a last line without newline
    output = (
        b"a" * 25
        + b"\r\nshort\r\n\n"
        + b"b" * 20
        + b"\r\n"
        + ("x" + "\u00e9" * 15).encode()
        + b"\n"
        + b"c" * 21
        + b"\r\n"
        + b"\xffok\n"
        + b"tail\r"
    )
    expected = [
        ("a" * 20 + " …[truncated 5 bytes]", 27),
        ("short", 7),
        ("", 1),
        (
            "b" * 20 + " …[truncated 0 bytes]",
            22,
        ),  # with its \r the line passes the limit; the \r is not counted
        ("x" + "\u00e9" * 9 + " …[truncated 12 bytes]", 32),  # with the half character held back
        ("c" * 20 + " …[truncated 1 bytes]", 23),
        ("\ufffdok", 4),
        ("tail", 5),
    ]

    def cut(chunk_sizes: list[int]) -> list[tuple[str, int]]:
        lines, start, got = _LineSplitter(20), 0, []
        for size in chunk_sizes:
            got += lines.feed(output[start : start + size])
            start += size
        got += lines.feed(output[start:]) if start < len(output) else []
        last = lines.end()
        return got + ([last] if last else [])

    # then one read, byte by byte, and random chunks all give the same lines
    assert cut([]) == cut([1] * len(output)) == expected
    rng = random.Random(17)
    for _ in range(50):
        assert cut([rng.randint(1, 12) for _ in range(len(output))]) == expected
