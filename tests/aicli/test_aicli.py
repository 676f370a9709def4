"""The real ``aicli`` against a real server, as a script sees it (stdout is not a terminal)."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from pathlib import Path

from tests.aicli.conftest import (
    ACCESS_TOKEN_SECONDS,
    AICLI,
    PASSWORD,
    PLAIN_AGENT,
    Aicli,
    Server,
    start_server,
)
from tests.conftest import EMBEDDED

LOGS = "query($t: ID!) { task(id: $t) { status costUsd logs(first: 100) { seq text } } }"
CHANGES = "query($t: ID!) { task(id: $t) { changes { files { path patch } } } }"


def new_project(cli: Aicli, name: str = "Cli Project") -> str:
    return cli.ok("project", "create", f"{name} {time.time_ns()}").strip()


def test_login_keeps_the_session_private_and_signs_requests(server: Server, tmp_path: Path) -> None:
    # given a user
    email, _ = server.register()
    cli = Aicli(server, tmp_path / "config")
    # when they sign in with a wrong password, then the right one
    wrong = cli("login", server.url, "--email", email, "--password-stdin", stdin="not-it\n")
    right = cli("login", server.url, "--email", email, "--password-stdin", stdin=PASSWORD + "\n")
    # then the first fails clearly, the second stores the refresh token readable by its owner only
    assert wrong.returncode == 1
    assert "Invalid email or password" in wrong.stderr
    assert right.returncode == 0, right.stderr
    directory = tmp_path / "config" / "aicli"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "credentials.json").stat().st_mode) == 0o600
    assert cli.credentials["url"] == server.url and cli.credentials["refresh_token"]
    assert cli.ok("whoami") == f"{email}\t{server.url}\n"
    # and signing in again ends the session it replaces
    replaced = cli.credentials["refresh_token"]
    cli.ok("login", "--email", email, "--password-stdin", stdin=PASSWORD + "\n")
    assert server_refresh(server, replaced)["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert cli.ok("whoami") == f"{email}\t{server.url}\n"


def test_run_follow_prints_exactly_the_tasks_lines_and_exits_by_its_status(
    server: Server, person: tuple[Aicli, str]
) -> None:
    cli, email = person
    project = new_project(cli)
    for prompt, code, status in (("Tidy the docs lines:3", 0, "SUCCEEDED"), ("Break it fail", 1, "FAILED")):
        # when
        result = cli("run", project, prompt, "--follow")
        # then stdout is the task's log, line for line; the outcome and cost are on stderr
        assert result.returncode == code, result.stderr
        task_id = result.stderr.splitlines()[0]
        task = server.as_user(email, LOGS, {"t": task_id})["task"]
        assert task["status"] == status
        assert result.stdout == "".join(line["text"] + "\n" for line in task["logs"])
        assert f"task {task_id} {status}" in result.stderr
        assert f"cost ${task['costUsd']:.4f}" in result.stderr


def test_logs_follow_resumes_across_the_servers_websocket_close_without_gap_or_duplicate(
    server: Server, person: tuple[Aicli, str]
) -> None:
    # given a task that runs past the access token's lifetime (the server closes the socket at its expiry)
    cli, _ = person
    project = new_project(cli)
    task_id = cli.ok("run", project, f"Wait a while sleep:{ACCESS_TOKEN_SECONDS * 2 + 1} lines:20").strip()
    sockets_before = server.websockets_accepted()
    began = time.monotonic()
    # when
    result = cli("logs", task_id, "--follow", "--json")
    # then every line came once, in order, and the follower reconnected with a fresh token
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - began > ACCESS_TOKEN_SECONDS
    *lines, end = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert lines[-1]["kind"] == "result"
    assert end["task"]["status"] == "SUCCEEDED"
    assert server.websockets_accepted() - sockets_before >= 2  # closed by the server, opened again
    assert "reconnecting" not in result.stderr  # a token expiry is routine: reconnect quietly
    # and --after resumes where a script stopped
    after = cli.ok("logs", task_id, "--after", "5", "--json")
    assert [json.loads(line)["seq"] for line in after.splitlines()] == list(range(6, len(lines) + 1))


def test_diff_prints_the_tasks_patches_and_a_stat(server: Server, person: tuple[Aicli, str]) -> None:
    cli, email = person
    task_id = cli.ok("run", new_project(cli), "Note this").strip()
    assert cli("logs", task_id, "--follow").returncode == 0
    files = server.as_user(email, CHANGES, {"t": task_id})["task"]["changes"]["files"]
    # when / then: the plain diff is the patches as they are (git apply takes it)
    assert cli.ok("diff", task_id) == "".join(file["patch"] for file in files)
    assert cli.ok("diff", task_id, "--stat") == " AICM_DEMO.md | 5 +++++\n 1 file changed, 5 insertions(+)\n"


def test_scripts_get_plain_rows_ids_and_json(server: Server, person: tuple[Aicli, str]) -> None:
    cli, _ = person
    project = new_project(cli, "Scripted")
    # a created thing prints its ID alone
    task_id = cli.ok("run", project, "Quick one").strip()
    assert cli("logs", task_id, "--follow").returncode == 0
    # lists are tab-separated rows without a header
    [row] = cli.ok("projects").splitlines()
    assert row.split("\t")[0] == project and row.split("\t")[3] == "owner"
    [task_row] = cli.ok("tasks", project).splitlines()
    assert task_row.split("\t")[:2] == [task_id, "SUCCEEDED"]
    assert cli.ok("tasks", project, "--status", "failed") == ""
    # --json before or after the command
    assert json.loads(cli.ok("--json", "tasks", project))[0]["id"] == task_id
    assert json.loads(cli.ok("projects", "--json"))[0]["id"] == project
    # a project is found by its slug or name as well
    slug = json.loads(cli.ok("projects", "--json"))[0]["slug"]
    assert cli.ok("tasks", slug).splitlines() == [task_row]
    # a follow-up continues the task
    follow_up = cli("follow-up", task_id, "And the tests", "--follow")
    assert follow_up.returncode == 0, follow_up.stderr
    assert "Picking up where we left off" in follow_up.stdout
    # errors are one clear line and exit code 1
    missing = cli("tasks", "no-such-project")
    assert missing.returncode == 1
    assert (
        missing.stderr == "error: no project 'no-such-project' that you can see (aicli projects lists them)\n"
    )


def test_an_expired_access_token_is_refreshed_once_for_concurrent_commands(person: tuple[Aicli, str]) -> None:
    # given an access token that has expired
    cli, email = person
    first = cli.credentials
    time.sleep(ACCESS_TOKEN_SECONDS + 0.5)
    # when three commands start at once
    procs = [
        subprocess.Popen(
            [AICLI, "whoami"], env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    # then all succeed with one new pair, and the session still works afterwards
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    assert all(out.startswith(email) for out, _ in outputs)
    assert cli.credentials["refresh_token"] != first["refresh_token"]
    assert cli.credentials["access_token"] != first["access_token"]
    assert cli.ok("whoami").startswith(email)


def test_a_revoked_session_says_so_and_exits_one(server: Server, person: tuple[Aicli, str]) -> None:
    # given the user ends their other sessions from elsewhere (the web console, another machine)
    cli, email = person
    server.as_user(email, "mutation { revokeAllSessions }")
    # when
    result = cli("projects")
    # then
    assert result.returncode == 1
    assert f"your session on {server.url} has ended" in result.stderr
    assert f"aicli login {server.url}" in result.stderr
    assert result.stdout == ""
    # and later commands say to sign in, without a network round trip to learn it
    again = cli("tasks")
    assert again.returncode == 1 and "not signed in" in again.stderr


def test_logout_revokes_the_session_on_the_server(server: Server, person: tuple[Aicli, str]) -> None:
    cli, _ = person
    refresh = cli.credentials["refresh_token"]
    assert cli.ok("logout") == f"{server.url}\n"
    # the stored refresh token no longer works anywhere
    response = server_refresh(server, refresh)
    assert response["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    result = cli("projects")
    assert result.returncode == 1 and "not signed in: run `aicli login [URL]` first" in result.stderr


def test_login_with_a_refresh_token_on_stdin(server: Server, tmp_path: Path) -> None:
    # given a refresh token from elsewhere (the web console's OAuth sign-in hands one over)
    email, _ = server.register()
    token = server.graphql(
        "mutation($i: LoginInput!) { login(input: $i) { refreshToken } }",
        {"i": {"email": email, "password": PASSWORD}},
    )["login"]["refreshToken"]
    cli = Aicli(server, tmp_path / "config")
    # when / then
    assert cli.ok("login", server.url, "--token-stdin", stdin=token + "\n") == email + "\n"
    assert cli.ok("whoami").startswith(email)


def server_refresh(server: Server, token: str) -> dict:
    import httpx

    query = "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken } }"
    return httpx.post(
        f"{server.url}/graphql", json={"query": query, "variables": {"t": token}}, timeout=10
    ).json()


def git(*args: str, cwd: Path | None = None) -> str:
    env = {
        "GIT_AUTHOR_NAME": "Up Stream",
        "GIT_AUTHOR_EMAIL": "up@example.com",
        "HOME": str(cwd or Path.cwd()),
    }
    env |= {
        "GIT_COMMITTER_NAME": "Up Stream",
        "GIT_COMMITTER_EMAIL": "up@example.com",
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30, check=True
    )
    return result.stdout


def test_push_and_merge_a_tasks_branch_into_a_remote(person: tuple[Aicli, str], tmp_path: Path) -> None:
    # given a project cloned from a repository with a main branch
    cli, _ = person
    origin, work = tmp_path / "origin.git", tmp_path / "work"
    git("init", "--quiet", "--bare", "-b", "main", str(origin))
    git("init", "--quiet", "-b", "main", str(work))
    (work / "README.md").write_text("# Upstream\n")
    git("add", "README.md", cwd=work)
    git("commit", "--quiet", "-m", "Initial import", cwd=work)
    git("push", "--quiet", str(origin), "HEAD:refs/heads/main", cwd=work)
    project = cli.ok("project", "create", f"Remote {time.time_ns()}", "--repo", f"file://{origin}").strip()
    task_id = cli.ok("run", project, "Change something", "--base", "main").strip()
    assert cli("logs", task_id, "--follow").returncode == 0
    # a base the repository lacks is refused, naming the field
    bad = cli("run", project, "Elsewhere", "--base", "no-such-branch")
    assert bad.returncode == 1 and "field baseRef" in bad.stderr
    # when / then: push prints the branch, which the remote now has
    branch = cli.ok("push", task_id).strip()
    assert branch.startswith("aicm/task-")
    assert git("branch", "--list", branch, cwd=origin).strip().endswith(branch)
    # and a squash merge lands the task's file on the remote's main
    assert cli.ok("merge", task_id, "--strategy", "squash").strip() == branch
    assert "AICM_DEMO.md" in git("ls-tree", "--name-only", "main", cwd=origin)


def test_run_follow_exits_one_when_the_task_times_out(tmp_path: Path) -> None:
    """``runner.timeout`` ends the agent: the follower prints TIMED_OUT and exits 1, like a failure."""
    (tmp_path / "server").mkdir()
    with start_server(
        tmp_path / "server", EMBEDDED, timeout=1.0, shutdown_grace=1.0, **PLAIN_AGENT
    ) as server:
        email, _ = server.register()
        cli = Aicli(server, tmp_path / "config")
        cli.ok("login", server.url, "--email", email, "--password-stdin", stdin=PASSWORD + "\n")
        project = new_project(cli)
        # when the agent would sleep well past the server's timeout
        result = cli("run", project, "Wait for it sleep:30", "--follow", timeout=30)
        # then
        assert result.returncode == 1, result.stderr
        task_id = result.stderr.splitlines()[0]
        assert server.as_user(email, LOGS, {"t": task_id})["task"]["status"] == "TIMED_OUT"
        assert f"task {task_id} TIMED_OUT" in result.stderr
