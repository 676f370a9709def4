"""Tool approvals from the terminal: a run waits in one terminal, a second one sees and decides it."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.aicli.conftest import AICLI, PASSWORD, Aicli, Server, start_server
from tests.aicli.terminal import Terminal
from tests.conftest import EMBEDDED, SERVICES


@pytest.fixture(scope="module", params=[EMBEDDED, SERVICES])
def approving_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A server that gives the demo agent Claude Code's flags, so it asks before its edit."""
    with start_server(
        tmp_path_factory.mktemp(f"approvals-{request.param}"), request.param, agent_cli="claude"
    ) as s:
        yield s


def lines_of(stream: IO[str]) -> queue.Queue[str]:
    """The stream's lines as they come, read by a thread (a blocked read cannot hang the test)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def signed_in(server: Server, home: Path) -> Aicli:
    email, _ = server.register()
    cli = Aicli(server, home)
    cli.ok("login", server.url, "--email", email, "--password-stdin", stdin=PASSWORD + "\n")
    return cli


def test_a_waiting_run_is_approved_from_a_second_terminal(approving_server: Server, tmp_path: Path) -> None:
    cli = signed_in(approving_server, tmp_path / "config")
    project = cli.ok("project", "create", f"Approvals {time.time_ns()}").strip()
    # given a second terminal watching the project's approvals, and a run in the first
    watch = subprocess.Popen(
        [AICLI, "approvals", project, "--watch", "--json"], env=cli.env, stdout=subprocess.PIPE, text=True
    )
    try:
        watched = lines_of(watch.stdout)
        run = Terminal([AICLI, "run", project, "Edit with permission", "--follow"], cli.env)
        # when the agent asks, the first terminal says it waits
        request = json.loads(watched.get(timeout=60))
        assert (request["status"], request["toolName"]) == ("PENDING", "Edit")
        run.expect("waiting for approval")
        run.expect("approval needed: Edit {")
        run.expect(f"decide with aicli approve {request['id']}")
        [row] = cli.ok("approvals", project).splitlines()
        assert row.split("\t")[:3] == [request["id"], "PENDING", "Edit"]
        # and the second terminal approves
        assert cli.ok("approve", request["id"], "--reason", "fine by me") == "ALLOWED\n"
        # then the run goes on and succeeds with the edit made
        run.expect("SUCCEEDED")
        assert run.wait() == 0
        assert "Appended a line to AICM_DEMO.md" in run.screen
        assert json.loads(watched.get(timeout=30))["status"] == "ALLOWED"
        # and a second decision is refused
        again = cli("deny", request["id"])
        assert again.returncode == 1 and "CONFLICT" in again.stderr
    finally:
        watch.terminate()
        watch.wait(timeout=10)


def test_a_denied_tool_call_reaches_the_agent_with_its_reason(
    approving_server: Server, tmp_path: Path
) -> None:
    cli = signed_in(approving_server, tmp_path / "config")
    project = cli.ok("project", "create", f"Denials {time.time_ns()}").strip()
    task_id = cli.ok("run", project, "Edit if you may").strip()
    deadline = time.monotonic() + 60
    while not (rows := cli.ok("approvals", project).splitlines()):
        assert time.monotonic() < deadline, "no approval request within 60 s"
        time.sleep(0.3)
    assert cli.ok("deny", rows[0].split("\t")[0], "--reason", "not today") == "DENIED\n"
    result = cli("logs", task_id, "--follow")
    assert "Permission to use Edit was denied: not today" in result.stdout
