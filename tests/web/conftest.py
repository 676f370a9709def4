"""A real ``aicli-api serve`` (embedded backend, the demo agent) and Debian's Chromium driven by Playwright.

Skipped, with the reason, when Playwright or ``/usr/bin/chromium`` is missing; ``AICM_REQUIRE_SERVICES=1``
(CI) turns the skip into a failure. Every request to a host other than 127.0.0.1 is aborted and recorded, so
a page that needs the network fails its test. Screenshots go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import DEMO_AGENT
from tests.servers import CLI, TEST_JWT_SECRET, clean_env, serve

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = os.environ.get("AICM_CHROMIUM", "/usr/bin/chromium")
ADMIN = ("admin@example.com", "admin-password-123")
VIEWER = ("viewer@example.com", "viewer-password-123")


def _unavailable(reason: str) -> None:
    if os.environ.get("AICM_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (AICM_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@dataclass
class Server:
    base: str
    tokens: dict[str, str] = field(default_factory=dict)

    def gql(
        self, query: str, variables: dict[str, Any] | None = None, *, as_: str = "admin"
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[as_]}"} if as_ in self.tokens else {}
        response = httpx.post(
            f"{self.base}/graphql",
            json={"query": query, "variables": variables or {}},
            headers=headers,
            timeout=30,
        )
        return response.json()

    def data(
        self, query: str, variables: dict[str, Any] | None = None, *, as_: str = "admin"
    ) -> dict[str, Any]:
        body = self.gql(query, variables, as_=as_)
        assert not body.get("errors"), body
        return body["data"]

    def sign_in(self, name: str, email: str, password: str) -> None:
        body = self.gql(
            "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            {"i": {"email": email, "password": password}},
            as_="",
        )
        assert body.get("data"), body
        self.tokens[name] = body["data"]["login"]["accessToken"]


@contextlib.contextmanager
def running_server(tmp: Path, extra_config: str = "", *, agent_cli: str = "generic") -> Iterator[Server]:
    """``aicli-api serve`` with the demo agent, the refresh cookie on, an admin and a plain user.

    ``agent_cli: generic`` runs the demo agent without Claude's flags, so it asks for no tool approval;
    ``claude`` gives it the permission prompt tool (where the server has tool approvals, CONTRACT §10).
    """
    config = tmp / "config.yaml"
    command = ", ".join(f'"{part}"' for part in DEMO_AGENT)
    config.write_text(
        "security:\n  refresh_cookie: {enabled: true, secure: false}\n"
        f"runner:\n  command: [{command}]\n  sandbox: none\n  agent_cli: {agent_cli}\n"
        # CLAUDE_CONFIG_DIR: where the unsandboxed demo agent keeps its session files (not ~/.claude)
        f"  env: {{AICM_DEMO_DELAY: '0.15', CLAUDE_CONFIG_DIR: '{tmp / 'claude'}'}}\n"
        "oauth:\n  github: {client_id: web-test-client, client_secret: web-test-secret}\n" + extra_config
    )
    env = clean_env(APP_ENV="test", DATABASE_URL=f"sqlite://{tmp / 'aicm.db'}", JWT_SECRET=TEST_JWT_SECRET)
    subprocess.run(
        [*CLI, "migrate", "--config", str(config)], cwd=tmp, env=env, check=True, capture_output=True
    )
    subprocess.run(
        [*CLI, "create-admin", "--config", str(config), "--email", ADMIN[0], "--password", ADMIN[1]],
        cwd=tmp,
        env=env,
        check=True,
        capture_output=True,
    )
    with serve(tmp, env, "--config", str(config)) as base:
        server = Server(base)
        server.gql(
            "mutation($i: RegisterInput!) { register(input: $i) { accessToken } }",
            {"i": {"email": VIEWER[0], "password": VIEWER[1], "name": "Vera Viewer"}},
            as_="",
        )
        server.sign_in("admin", *ADMIN)
        server.sign_in("viewer", *VIEWER)
        yield server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("web")) as server:
        yield server


@pytest.fixture(scope="session")
def short_lived_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Access tokens that expire after 4 s: the console must refresh them and reconnect its socket."""
    with running_server(
        tmp_path_factory.mktemp("web-short"), "jwt:\n  access_token_duration: 4s\n"
    ) as server:
        yield server


@pytest.fixture(scope="session")
def approvals_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The demo agent asks before its edit: tool approvals (skipped where the server has none yet)."""
    with running_server(tmp_path_factory.mktemp("web-approvals"), agent_cli="claude") as server:
        found = server.data('{ __type(name: "ApprovalRequest") { name } }')
        if found["__type"] is None:
            pytest.skip("this server has no tool approvals (CONTRACT §10: ApprovalRequest)")
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API keeps its event loop running while it is open, which would stop
    the async tests of other modules from running theirs."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@dataclass
class Page:
    """A Playwright page in a fresh browser context, cut off from every host but the server."""

    page: Any
    blocked: list[str]
    errors: list[str]

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(20_000)
    blocked: list[str] = []

    def only_loopback(route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield Page(page, blocked, errors)
    context.close()
    assert not blocked, f"requests to other hosts: {blocked}"
    assert not errors, f"page errors: {errors}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed browser test leaves a screenshot of where it stopped (``FAILED-<test>.png``)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    page = getattr(item, "funcargs", {}).get("page")
    if report.when == "call" and report.failed and isinstance(page, Page):
        page.shot(f"FAILED-{item.name}")
