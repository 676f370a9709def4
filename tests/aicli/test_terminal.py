"""``aicli`` as a person sees it, in a pseudo-terminal: prompts, rich output, progress, Ctrl-C, colours."""

from __future__ import annotations

import time

from tests.aicli.conftest import AICLI, PASSWORD, Aicli, Server
from tests.aicli.terminal import Terminal


def test_a_person_signs_in_runs_a_task_cancels_it_with_ctrl_c_and_reads_its_diff(
    server: Server, tmp_path
) -> None:
    email, _ = server.register()
    cli = Aicli(server, tmp_path / "config")
    env = cli.env | {"COLUMNS": "120", "LINES": "40"}

    # login asks for the email, then the password without echo
    login = Terminal([AICLI, "login", server.url], env)
    login.expect("Email:")
    login.type(email + "\r")
    login.expect("Password:")
    login.type(PASSWORD + "\r")
    login.expect(f"✓ signed in to {server.url} as {email}")
    assert login.wait() == 0
    assert PASSWORD not in login.screen

    # a run shows the agent's lines and a progress line; Ctrl-C asks, and "c" cancels on the server
    project = cli.ok("project", "create", f"Terminal {time.time_ns()}").strip()
    run = Terminal([AICLI, "run", project, "Take your time sleep:60", "--follow"], env)
    run.expect("started task")
    run.expect("Waiting 60 s before finishing…")
    run.expect("running for")
    run.type("\x03")
    run.expect("[c]ancel/[D]etach")
    run.type("c\r")
    run.expect("cancelling the task")
    run.expect("CANCELLED", timeout=30)
    assert run.wait() == 130
    screen = run.screen
    task_id = screen.split("started task ", 1)[1].split()[0]
    assert "Bash: ls -A" in screen
    assert f"✗ task {task_id} CANCELLED" in screen
    assert "cost" in screen

    # the task list is a table with a header; the diff is coloured
    tasks = Terminal([AICLI, "tasks", project], env)
    assert tasks.wait() == 0
    assert "STATUS" in tasks.screen and task_id in tasks.screen and "CANCELLED" in tasks.screen
    diff = Terminal([AICLI, "diff", task_id], env)
    assert diff.wait() == 0
    assert "+- Take your time sleep:60" in diff.screen
    assert "\x1b[32m+- Take your time" in diff.raw  # green

    # Ctrl-C then "d" only detaches: the task goes on, and following it again works
    detached = Terminal([AICLI, "run", project, "Long one sleep:60", "--follow"], env)
    detached.expect("Waiting 60 s")
    detached.type("\x03")
    detached.expect("[c]ancel/[D]etach")
    detached.type("d\r")
    detached.expect("detached; the task goes on")
    assert detached.wait() == 130
    task_id = detached.screen.split("started task ", 1)[1].split()[0]
    [row] = cli.ok("tasks", project, "--status", "running").splitlines()
    assert row.startswith(task_id)
    assert cli("cancel", task_id).returncode == 0
    assert cli("logs", task_id, "--follow").returncode == 130
