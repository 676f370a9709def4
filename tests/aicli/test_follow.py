"""The follower's no-gap, no-duplicate rule, driven in-process against the real server's stored lines."""

from __future__ import annotations

from typing import Any

from aicm.aicli.api import Api
from aicm.aicli.follow import LogFollower
from aicm.aicli.store import CredentialStore
from tests.aicli.conftest import Aicli, Server
from tests.servers import free_port

LOGS = "query($t: ID!) { task(id: $t) { logs(first: 100) { seq at stream kind text data } } }"


async def test_a_hole_is_filled_over_http_and_a_repeat_is_skipped(
    server: Server, person: tuple[Aicli, str]
) -> None:
    # given an ended task with more than 10 lines
    cli, email = person
    project = cli.ok("project", "create", "Follow unit").strip()
    task_id = cli.ok("run", project, "Several lines:8").strip()
    assert cli("logs", task_id, "--follow").returncode == 0
    stored = server.as_user(email, LOGS, {"t": task_id})["task"]["logs"]
    assert len(stored) > 10
    store = CredentialStore(cli.home / "aicli")
    printed: list[dict[str, Any]] = []
    async with Api(store, store.load()) as api:
        follower = LogFollower(api, task_id, after_seq=2, on_line=printed.append)
        # when a message brings line 7 right after line 2, then lines 5 to 9 again (as after a reconnect)
        await follower._take([stored[6]])
        await follower._take(stored[4:9])
    # then lines 3..9 were handed over once each, in order
    assert [line["seq"] for line in printed] == list(range(3, 10))
    assert printed == stored[2:9]


def test_an_unreachable_server_is_one_clear_line(tmp_path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    cli = Aicli(Server(url), tmp_path / "config")
    result = cli("login", url, "--email", "nobody@example.com", "--password-stdin", stdin="x\n")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot reach {url}/graphql")
    assert len(result.stderr.splitlines()) == 1
