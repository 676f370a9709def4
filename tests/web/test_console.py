"""The web console in Chromium against a real server with the demo agent (CONTRACT §12)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.web.conftest import ADMIN, VIEWER, Page, Server

TASK_STATUS = "[data-testid=task-status]"


def sign_in(page: Page, server: Server, email: str, password: str) -> None:
    page.page.goto(f"{server.base}/")
    page.page.get_by_label("Email").fill(email)
    page.page.get_by_label("Password").fill(password)
    page.page.get_by_role("button", name="Sign in").click()
    page.page.get_by_role("heading", name="Projects", exact=True).wait_for()


def seqs(page: Page) -> list[int]:
    return [
        int(s) for s in page.page.eval_on_selector_all("[data-seq]", "els => els.map(e => e.dataset.seq)")
    ]


def wait_status(page: Page, *statuses: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = page.page.locator(f"h1 ~ .card {TASK_STATUS}").first.inner_text()
        if status in statuses:
            return status
        page.page.wait_for_timeout(200)
    raise AssertionError(f"task status stayed {status}, expected {statuses}")


def storage(page: Page) -> str:
    return page.page.evaluate("() => JSON.stringify({...localStorage, ...sessionStorage})")


def make_project(server: Server, name: str) -> str:
    return server.data(
        "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }", {"i": {"name": name}}
    )["createProject"]["id"]


def test_sign_in_create_a_project_run_a_task_live_see_its_diff_and_merge(page: Page, server: Server) -> None:
    p = page.page
    p.goto(f"{server.base}/")
    page.shot("sign-in")
    sign_in(page, server, *ADMIN)
    page.shot("projects")
    # create a project
    p.get_by_label("Name").fill("Console demo")
    p.get_by_label("Description").fill("made in the browser")
    p.get_by_role("button", name="Create project").click()
    p.get_by_role("heading", name="Console demo").wait_for()
    page.shot("project")
    # start a task: its log lines appear while it runs
    p.get_by_label("Prompt").fill("Write the notes sleep:2")
    p.get_by_role("button", name="Start task").click()
    p.get_by_role("heading", name="Task", exact=True).wait_for()
    p.locator("[data-kind=assistant]").first.wait_for()
    assert wait_status(page, "RUNNING", "SUCCEEDED") == "RUNNING", (
        "the log appeared only after the task ended"
    )
    page.shot("task-running")
    p.get_by_text("Tool call: Bash").first.click()  # folded, with its input
    p.get_by_text('"command": "ls -A"').wait_for()
    wait_status(page, "SUCCEEDED")
    p.locator("[data-kind=result]").wait_for()
    assert re.search(r"cost \$0\.\d+", p.locator("[data-kind=result]").inner_text())
    assert p.get_by_test_id("task-cost").inner_text().startswith("$0.")
    assert seqs(page) == list(range(1, len(seqs(page)) + 1))
    # the diff, per file
    diff = p.locator("details.file[data-path='AICM_DEMO.md']")
    diff.wait_for()
    assert "Write the notes" in diff.locator(".d2h-file-diff").inner_text()
    page.shot("task-diff")
    # merge
    p.get_by_role("button", name="Merge").click()
    p.get_by_text(re.compile("^merged ")).wait_for()
    assert p.get_by_role("button", name="Merge").count() == 0
    page.shot("task-merged")
    # the project's task list shows it, live status and cost
    p.get_by_role("link", name="Console demo").click()
    row = p.locator("tr[data-task]").first
    row.get_by_text("SUCCEEDED").wait_for()
    assert "$0." in row.inner_text() and "aicm/task-" in row.inner_text()
    page.shot("project-tasks")
    p.get_by_role("navigation").get_by_role("link", name="Approvals").click()
    p.get_by_role("heading", name="Approvals").wait_for()
    page.shot("approvals")
    p.get_by_role("link", name="Sessions").click()
    p.get_by_text("(this one)").wait_for()
    page.shot("sessions")
    # the access token never reaches storage, and nothing is kept in the URL
    assert "eyJ" not in storage(page) and "token" not in p.url


def test_the_log_resumes_after_a_reload_without_gap_or_duplicate(page: Page, server: Server) -> None:
    project = make_project(server, "Reload")
    task = server.data(
        "mutation($i: CreateTaskInput!) { createTask(input: $i) { id } }",
        {"i": {"projectId": project, "prompt": "Long one lines:20 sleep:3"}},
    )["createTask"]["id"]
    sign_in(page, server, *ADMIN)
    page.page.goto(f"{server.base}/#/t/{task}")
    page.page.locator("[data-seq='3']").wait_for()
    assert wait_status(page, "RUNNING", "SUCCEEDED") == "RUNNING"
    page.page.reload()  # signed in again from the refresh cookie; the log starts over from the stored lines
    page.page.locator("[data-seq='1']").wait_for()
    wait_status(page, "SUCCEEDED")
    page.page.locator("[data-kind=result]").wait_for()
    stored = server.data("query($id: ID!) { task(id: $id) { logs(first: 100) { seq } } }", {"id": task})
    expected = [line["seq"] for line in stored["task"]["logs"]]
    assert seqs(page) == expected == list(range(1, len(expected) + 1))
    page.shot("task-after-reload")
    # a follow-up continues on the same branch, as a new task
    page.page.get_by_label(re.compile("Prompt \\(continues")).fill("And one more line")
    page.page.get_by_role("button", name="Send follow-up").click()
    page.page.get_by_role("link", name="an earlier task").wait_for()
    wait_status(page, "SUCCEEDED")
    branch = server.data("query($id: ID!) { task(id: $id) { branch } }", {"id": task})["task"]["branch"]
    assert branch in page.page.locator("h1 ~ .card").first.inner_text()
    page.shot("task-follow-up")


def test_cancel_a_running_task(page: Page, server: Server) -> None:
    project = make_project(server, "Cancel me")
    sign_in(page, server, *ADMIN)
    page.page.goto(f"{server.base}/#/p/{project}")
    page.page.get_by_label("Prompt").fill("Too slow sleep:30")
    page.page.get_by_role("button", name="Start task").click()
    page.page.locator("[data-kind=assistant]").first.wait_for()
    page.page.get_by_role("button", name="Cancel task").click()
    wait_status(page, "CANCELLED", timeout=30)
    assert page.page.get_by_role("button", name="Cancel task").count() == 0


def test_a_viewer_sees_no_task_controls_and_the_server_refuses_them(page: Page, server: Server) -> None:
    project = make_project(server, "Read only")
    roles = server.data("{ roles(scope: PROJECT) { id name } }")["roles"]
    viewer_id = server.data("{ me { id } }", as_="viewer")["me"]["id"]
    server.data(
        "mutation($p: ID!, $u: ID!, $r: ID!) { addProjectMember(projectId: $p, userId: $u, roleId: $r) { addedAt } }",
        {"p": project, "u": viewer_id, "r": next(r["id"] for r in roles if r["name"] == "viewer")},
    )
    running = server.data(
        "mutation($i: CreateTaskInput!) { createTask(input: $i) { id } }",
        {"i": {"projectId": project, "prompt": "Slow sleep:8"}},
    )["createTask"]["id"]
    sign_in(page, server, *VIEWER)
    page.page.get_by_role("link", name="Read only").click()
    page.page.get_by_role("heading", name="Members").wait_for()
    assert page.page.get_by_role("button", name="Start task").count() == 0
    assert page.page.get_by_label("Prompt").count() == 0
    assert page.page.get_by_role("button", name="Add member").count() == 0
    assert page.page.get_by_role("heading", name="Settings").count() == 0
    page.shot("project-as-viewer")
    page.page.goto(f"{server.base}/#/t/{running}")
    page.page.locator("[data-kind=assistant]").first.wait_for()
    for name in ("Cancel task", "Merge", "Push branch", "Send follow-up"):
        assert page.page.get_by_role("button", name=name).count() == 0, name
    page.shot("task-as-viewer")
    # the server refuses them anyway
    refused = [
        server.gql(
            "mutation($i: CreateTaskInput!) { createTask(input: $i) { id } }",
            {"i": {"projectId": project, "prompt": "no"}},
            as_="viewer",
        ),
        server.gql("mutation($id: ID!) { cancelTask(id: $id) { id } }", {"id": running}, as_="viewer"),
        server.gql(
            "mutation($id: ID!) { mergeTask(id: $id, input: {}) { id } }", {"id": running}, as_="viewer"
        ),
    ]
    assert [body["errors"][0]["extensions"]["code"] for body in refused] == ["FORBIDDEN"] * 3, refused
    server.data("mutation($id: ID!) { cancelTask(id: $id) { id } }", {"id": running})


def test_graphiql_loads_offline_runs_a_query_and_keeps_no_token(page: Page, server: Server) -> None:
    p = page.page
    p.goto(f"{server.base}/graphql")
    p.locator(".graphiql-container").wait_for()
    p.locator(".graphiql-editor-tools").get_by_text("Headers", exact=True).click()
    token = server.tokens["admin"]
    p.locator(".graphiql-editor-tool .CodeMirror:visible").last.click()
    p.keyboard.type(json.dumps({"Authorization": f"Bearer {token}"}))
    editor = p.locator(".graphiql-query-editor .CodeMirror").first
    editor.click()
    p.keyboard.press("Control+A")
    p.keyboard.press("Delete")
    p.keyboard.type("{ me { email } }")
    p.locator(".graphiql-execute-button").click()
    p.locator(".result-window").get_by_text(ADMIN[0]).wait_for()
    page.shot("graphiql")
    p.wait_for_timeout(1000)  # GraphiQL writes its tabs and history shortly after a run
    saved = storage(page)
    assert "{ me { email } }" in saved or "me" in saved  # history is kept ...
    assert token not in saved and "Bearer" not in saved  # ... without the headers
    p.reload()
    p.locator(".graphiql-container").wait_for()
    assert token not in storage(page)


def test_static_assets_are_cached_and_pages_run_no_inline_script(server: Server) -> None:
    import httpx

    page = httpx.get(f"{server.base}/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert "<script>" not in page.text and "aicm-config" in page.text
    asset = re.search(r'src="(/assets/index-[^"]+\.js)"', page.text)
    assert asset
    response = httpx.get(f"{server.base}{asset.group(1)}")
    assert response.status_code == 200 and "immutable" in response.headers["cache-control"]
    assert response.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert httpx.get(f"{server.base}/assets/..%2Fconfig.yaml").status_code == 404
    assert httpx.get(f"{server.base}/assets/nope-12345678.js").status_code == 404


def test_expired_tokens_are_refreshed_and_the_socket_reconnects_without_a_gap(
    page: Page, short_lived_server: Server
) -> None:
    server = short_lived_server
    refreshes: list[str] = []
    page.page.on(
        "request", lambda r: refreshes.append(r.url) if "mutation Refresh" in (r.post_data or "") else None
    )
    sign_in(page, server, *ADMIN)
    server.sign_in("admin", *ADMIN)  # the fixture's token is long expired
    project = make_project(server, "Short tokens")
    task = server.data(
        "mutation($i: CreateTaskInput!) { createTask(input: $i) { id } }",
        {"i": {"projectId": project, "prompt": "Outlive the token sleep:10"}},
    )["createTask"]["id"]
    page.page.goto(f"{server.base}/#/t/{task}")
    page.page.locator("[data-seq='2']").wait_for()
    # the socket is closed (4403) when its token expires, every 4 s: the log and the status still arrive
    wait_status(page, "SUCCEEDED", timeout=60)
    page.page.locator("[data-kind=result]").wait_for()
    server.sign_in("admin", *ADMIN)
    stored = server.data("query($id: ID!) { task(id: $id) { logs(first: 100) { seq } } }", {"id": task})
    assert seqs(page) == [line["seq"] for line in stored["task"]["logs"]]
    assert len(refreshes) >= 2, refreshes
    # and plain requests go on after the expiry
    page.page.get_by_role("link", name="Sessions").click()
    page.page.get_by_text("(this one)").wait_for()
    assert "eyJ" not in storage(page)


def wait_task(server: Server, task: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = server.data("query($id: ID!) { task(id: $id) { status costUsd } }", {"id": task})["task"]
        if found["status"] in {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}:
            return found
        time.sleep(0.2)
    raise AssertionError(f"task {task} did not finish")


def test_budget_and_write_only_agent_keys(page: Page, server: Server) -> None:
    project = make_project(server, "Budgeted")
    task = server.data(
        "mutation($i: CreateTaskInput!) { createTask(input: $i) { id } }",
        {"i": {"projectId": project, "prompt": "Spend cost:0.05"}},
    )["createTask"]["id"]
    assert wait_task(server, task)["costUsd"] > 0
    p = page.page
    sign_in(page, server, *ADMIN)
    p.goto(f"{server.base}/#/p/{project}")
    p.get_by_role("heading", name="Agent budget and key").wait_for()
    assert "$0.05" in p.get_by_test_id("month-cost").inner_text()
    # a budget the month already reached: new tasks are refused, and the page says why
    p.get_by_label("Monthly budget in USD").fill("0.01")
    p.get_by_role("button", name="Save budget").click()
    p.get_by_role("status").get_by_text("Budget saved").wait_for()
    p.get_by_label("Prompt").fill("One more")
    p.get_by_role("button", name="Start task").click()
    p.get_by_role("alert").get_by_text("FORBIDDEN").wait_for()
    # the project's agent key: write-only
    secret = "sk-ant-web-test-0123456789"
    p.get_by_label(re.compile("Project Anthropic API key")).fill(secret)
    p.get_by_role("button", name="Save API key").click()
    p.get_by_text(re.compile(r"Project Anthropic API key \(write-only; one is set\)")).wait_for()
    assert p.get_by_label(re.compile("Project Anthropic API key")).input_value() == ""
    page.shot("project-settings")
    # one's own key, on the sessions page
    p.get_by_role("link", name="Sessions").click()
    p.get_by_label(re.compile("Anthropic API key")).fill(secret)
    p.get_by_role("button", name="Save API key").click()
    p.get_by_text("one is set").wait_for()
    assert secret not in p.content() and secret not in storage(page)
    assert server.data("{ viewer { hasAgentCredential } }")["viewer"]["hasAgentCredential"] is True


def test_approve_a_pending_tool_call_and_the_task_goes_on(page: Page, approvals_server: Server) -> None:
    server = approvals_server
    p = page.page
    sign_in(page, server, *ADMIN)
    p.get_by_label("Name").fill("Gatekeeping")
    p.get_by_role("button", name="Create project").click()
    p.get_by_role("heading", name="Gatekeeping").wait_for()
    p.get_by_label("Prompt").fill("Edit with approval")
    p.get_by_role("button", name="Start task").click()
    p.get_by_role("heading", name="Task", exact=True).wait_for()
    # the agent asks before its edit: the task waits, the request shows with its input
    wait_status(page, "WAITING_FOR_APPROVAL")
    card = p.locator("section", has=p.get_by_role("heading", name="Tool approvals"))
    card.get_by_text("Edit", exact=True).wait_for()
    assert "AICM_DEMO.md" in card.inner_text()
    page.shot("task-approval")
    task_url = p.url
    # the inbox lists it too
    p.get_by_role("navigation").get_by_role("link", name="Approvals").click()
    p.locator("li[data-approval]").get_by_text("Edit", exact=True).wait_for()
    page.shot("approvals-inbox")
    # a viewer may not decide it
    found = server.data('{ projects(search: "Gatekeeping") { edges { node { id } } } }')
    project = found["projects"]["edges"][0]["node"]["id"]
    pending = server.data(
        "query($p: ID!) { approvalRequests(projectId: $p, status: PENDING) { edges { node { id } } } }",
        {"p": project},
    )["approvalRequests"]["edges"]
    refused = server.gql(
        "mutation($id: ID!) { decideApproval(id: $id, input: {allow: true}) { id } }",
        {"id": pending[0]["node"]["id"]},
        as_="viewer",
    )
    assert refused["errors"][0]["extensions"]["code"] in {"FORBIDDEN", "NOT_FOUND"}, refused
    # allow: the task goes on and makes its edit
    p.goto(task_url)
    card.get_by_role("button", name="Allow").click()
    wait_status(page, "SUCCEEDED")
    card.get_by_text("ALLOWED by admin").wait_for()
    p.locator("details.file[data-path='AICM_DEMO.md']").wait_for()
    page.shot("task-approved")


def test_keyboard_only_sign_in_and_a_phone_sized_layout(page: Page, server: Server) -> None:
    p = page.page
    p.set_viewport_size({"width": 390, "height": 844})
    p.goto(f"{server.base}/")
    p.get_by_label("Email").wait_for()
    # every control is reached with Tab and labelled; Enter submits
    p.keyboard.press("Tab")  # the brand link
    p.keyboard.press("Tab")
    assert p.evaluate("document.activeElement.id") == "email"
    p.keyboard.type(ADMIN[0])
    p.keyboard.press("Tab")
    assert p.evaluate("document.activeElement.id") == "password"
    p.keyboard.type(ADMIN[1])
    p.keyboard.press("Enter")
    p.get_by_role("heading", name="Projects", exact=True).wait_for()
    unlabelled = p.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
             .filter(e => !e.labels?.length && !e.getAttribute('aria-label')).map(e => e.outerHTML)"""
    )
    assert unlabelled == []
    # nothing wider than the phone's screen
    assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.shot("projects-phone")
    project = make_project(server, "Phone")
    p.goto(f"{server.base}/#/p/{project}")
    p.get_by_role("heading", name="Members").wait_for()
    assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.shot("project-phone")


def test_push_a_task_branch_to_the_projects_remote(page: Page, server: Server, tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    seed = tmp_path / "seed"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
    (seed / "README.md").write_text("seed\n")
    subprocess.run([*git, "-C", str(seed), "add", "."], check=True)
    subprocess.run([*git, "-C", str(seed), "commit", "-qm", "seed"], check=True)
    subprocess.run(["git", "-C", str(seed), "push", "-q", str(remote), "main"], check=True)
    p = page.page
    sign_in(page, server, *ADMIN)
    p.get_by_label("Name").fill("Pushed")
    p.get_by_label(re.compile("Repository URL")).fill(str(remote))
    p.get_by_role("button", name="Create project").click()
    p.get_by_role("heading", name="Pushed").wait_for()
    p.get_by_label("Prompt").fill("Change for the remote")
    p.get_by_role("button", name="Start task").click()
    wait_status(page, "SUCCEEDED")
    p.get_by_role("button", name="Push branch").click()
    p.get_by_text(re.compile("^pushed ")).wait_for()
    p.wait_for_timeout(300)
    assert p.get_by_role("alert").count() == 0
    branches = subprocess.run(
        ["git", "-C", str(remote), "branch", "--list", "aicm/*"], capture_output=True, text=True, check=True
    ).stdout
    assert "aicm/task-" in branches
