"""``/metrics``: every metric moves with real traffic, labels stay bounded, the guards work, and the numbers add
up across ``serve --workers 2``. The Grafana dashboard and the alert rules only use metrics served here."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import multiprocess
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from aicm import models
from aicm.app import build_app
from aicm.auth.permissions import DEVELOPER
from aicm.ratelimit import RateLimits
from aicm.schema.extensions.metrics import OperationNames
from aicm.schema.relay import decode_id, encode_id
from aicm.subscriptions.in_process import InProcessBroker
from aicm.subscriptions.redis_broker import RedisBroker
from aicm.subscriptions.subscription import FellBehind
from tests.conftest import EMBEDDED, REQUIRE_SERVICES, make_settings, require_services
from tests.factories import PASSWORD, add_member, make_project, make_user, token_for
from tests.graphql import assert_ok, execute
from tests.servers import TEST_JWT_SECRET, clean_env, free_port, serve
from tests.subscriptions.conftest import OwnedRedis
from tests.ws import GraphQLWS

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "aicode-manager.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

LOGIN = "mutation Login($email: String!, $password: String!) { login(input: {email: $email, password: $password}) { accessToken } }"
ME = "query Me { me { id } }"
EVENTS = "subscription Events($id: ID!) { projectEvents(projectId: $id) { type } }"
RENAME = "mutation Rename($id: ID!, $name: String!) { updateProject(id: $id, input: {name: $name}) { id } }"
CREATE_TASK = (
    "mutation($p: ID!, $prompt: String!) { createTask(input: {projectId: $p, prompt: $prompt}) { id } }"
)
CANCEL_TASK = "mutation($id: ID!) { cancelTask(id: $id) { status } }"


class Scrape:
    """One parsed /metrics answer."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.samples = [sample for family in self.families for sample in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0 when there are none)."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.samples)

    def names(self) -> set[str]:
        """Every series name a query may use, including those of labelled metrics with no sample yet."""
        names = {s.name for s in self.samples}
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
            "summary": ("_count", "_sum"),
        }
        for family in self.families:
            names.add(family.name)
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        return names


async def scrape(client: httpx.AsyncClient) -> Scrape:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


async def login(client: httpx.AsyncClient, email: str, password: str) -> dict[str, Any]:
    return await execute(client, LOGIN, {"email": email, "password": password})


# --- every metric moves ----------------------------------------------------------------------------


async def test_traffic_moves_the_request_auth_session_database_and_graphql_metrics(
    client: httpx.AsyncClient,
) -> None:
    # given
    user = await make_user()
    before = await scrape(client)
    # when: a failed and a good sign-in, then a named query with the token
    await login(client, user.email, "not-the-password")
    token = assert_ok(await login(client, user.email, PASSWORD))["login"]["accessToken"]
    assert_ok(await execute(client, ME, token=token))
    after = await scrape(client)

    # then
    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    graphql_ok = {"method": "POST", "path": "/graphql", "status": "200"}
    assert moved("http_requests_total", **graphql_ok) >= 3
    assert moved("http_request_duration_seconds_count", **graphql_ok) >= 3
    assert moved("http_request_duration_seconds_bucket", le="+Inf", **graphql_ok) >= 3
    assert moved("auth_attempts_total", method="password", outcome="failure") == 1
    assert moved("auth_attempts_total", method="password", outcome="success") == 1
    assert after.value("active_sessions_total") >= 1
    assert after.value("database_connections_active") >= 1
    assert after.value("database_connections_max") >= after.value("database_connections_active")
    assert after.value("database_connections_in_use") >= 0
    assert 0 <= after.value("database_ping_duration_seconds") < 1
    assert after.value("workspace_disk_total_bytes") >= after.value("workspace_disk_free_bytes") > 0
    assert moved("graphql_operations_total", operation="Login", type="mutation", outcome="error") == 1
    assert moved("graphql_operations_total", operation="Login", type="mutation", outcome="success") == 1
    assert moved("graphql_operations_total", operation="Me", type="query", outcome="success") == 1
    assert moved("graphql_operation_duration_seconds_count", operation="Me", type="query") == 1


async def test_metrics_follow_the_session_store(app: Starlette, client: httpx.AsyncClient) -> None:
    # given
    user = await make_user()
    before = (await scrape(client)).value("active_sessions_total")
    # when
    await token_for(app, user)
    await token_for(app, user)
    # then: read at scrape time, not counted in process
    assert (await scrape(client)).value("active_sessions_total") == before + 2


async def test_paths_are_route_templates_and_unknown_paths_share_one_label(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    await client.get("/graphql", params={"query": "{ __typename }"})
    await client.get("/no/such/page-1")
    await client.get("/no/such/page-2")
    after = await scrape(client)
    assert after.value("http_requests_total", method="GET", path="/graphql", status="200") == (
        before.value("http_requests_total", method="GET", path="/graphql", status="200") + 1
    )
    assert after.value("http_requests_total", path="__unknown__", status="404") == (
        before.value("http_requests_total", path="__unknown__", status="404") + 2
    )
    assert "page-1" not in after.text
    assert all(
        set(s.labels) == {"method", "path", "status"}
        for s in after.samples
        if s.name == "http_requests_total"
    )


async def test_operation_labels_are_bounded(client: httpx.AsyncClient) -> None:
    # given
    long_name = "Q" + "x" * 80
    before = await scrape(client)
    # when: anonymous, a name too long, a name the document lacks, a broken document, a GET mutation
    await execute(client, "{ __typename }")
    await execute(client, f"query {long_name} {{ __typename }}")
    await client.post("/graphql", json={"query": "query A { __typename }", "operationName": "Invented123"})
    await execute(client, "query Broken { nope }")
    await client.get("/graphql", params={"query": "mutation Out { logout }"})
    after = await scrape(client)

    # then
    def moved(**labels: str) -> float:
        return after.value("graphql_operations_total", **labels) - before.value(
            "graphql_operations_total", **labels
        )

    assert moved(operation="anonymous", type="query", outcome="success") == 1
    assert moved(operation="other", type="query", outcome="success") == 1
    assert moved(operation="other", type="unknown", outcome="error") == 1
    assert moved(operation="Broken", type="query", outcome="error") == 1
    assert moved(operation="Out", type="mutation", outcome="error") == 1
    assert long_name not in after.text and "Invented123" not in after.text


def test_operation_names_stop_growing_at_the_limit() -> None:
    names = OperationNames(limit=3)
    labels = [names.label(f"Op{i}") for i in range(10)]
    assert labels[:3] == ["Op0", "Op1", "Op2"] and set(labels[3:]) == {"other"}
    assert names.label("Op1") == "Op1"
    assert names.label(None) == "anonymous" and names.label("") == "anonymous"
    assert names.label("bad-name") == "other" and names.label("1abc") == "other"


async def test_subscriptions_websockets_and_delivered_events_are_counted(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    # given
    owner = await make_user()
    project = await make_project(owner, "Watched")
    token = await token_for(app, owner)
    before = await scrape(client)
    # when: a subscriber is open and an event reaches it
    ws = await (await GraphQLWS.open(server_url, token)).acked()
    try:
        await ws.subscribe("1", EVENTS, {"id": encode_id("Project", project.id)})
        await asyncio.sleep(0.3)
        during = await scrape(client)
        assert_ok(
            await execute(
                client, RENAME, {"id": encode_id("Project", project.id), "name": "Renamed"}, token=token
            )
        )
        message = await ws.receive(5)
        assert message["type"] == "next", message
        delivered = await scrape(client)
    finally:
        await ws.close()
    # then
    assert during.value("websocket_connections_active") == before.value("websocket_connections_active") + 1
    assert during.value("graphql_subscriptions_active") == before.value("graphql_subscriptions_active") + 1
    assert delivered.value("subscription_events_delivered_total") >= (
        before.value("subscription_events_delivered_total") + 1
    )
    # and once the socket is gone, the gauges come back and the subscription is counted as an operation
    deadline = time.monotonic() + 5
    while True:
        after = await scrape(client)
        if after.value("websocket_connections_active") == before.value("websocket_connections_active"):
            break
        assert time.monotonic() < deadline, "websocket_connections_active did not come back down"
        await asyncio.sleep(0.05)
    assert after.value("graphql_subscriptions_active") == before.value("graphql_subscriptions_active")
    assert after.value("graphql_operations_total", operation="Events", type="subscription") == (
        before.value("graphql_operations_total", operation="Events", type="subscription") + 1
    )


async def _task_status(task_id: int, wanted: set[str], wait: float = 20.0) -> str:
    deadline = time.monotonic() + wait
    while True:
        task = await models.Task.get(id=task_id)
        if str(task.status) in wanted:
            return str(task.status)
        assert time.monotonic() < deadline, f"task {task_id} still {task.status}"
        await asyncio.sleep(0.05)


async def test_tasks_are_counted_running_and_by_final_status(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    # given
    owner, dev = await make_user(), await make_user()
    project = await make_project(owner, "Counted")
    await add_member(project, dev, DEVELOPER)
    token = await token_for(app, dev)
    before = await scrape(client)

    async def start(prompt: str) -> tuple[str, int]:
        data = assert_ok(
            await execute(
                client, CREATE_TASK, {"p": encode_id("Project", project.id), "prompt": prompt}, token=token
            )
        )
        gid = data["createTask"]["id"]
        return gid, decode_id(gid, "Task")

    # when: one task is cancelled while it runs, another succeeds
    slow_gid, slow_id = await start("sleep:30 metrics")
    await _task_status(slow_id, {"RUNNING"})
    running = await scrape(client)
    assert_ok(await execute(client, CANCEL_TASK, {"id": slow_gid}, token=token))
    await _task_status(slow_id, {"CANCELLED"})
    _, quick_id = await start("count the lines")
    assert await _task_status(quick_id, {"SUCCEEDED", "FAILED"}) == "SUCCEEDED"
    after = await scrape(client)
    # then
    assert running.value("tasks_running") >= before.value("tasks_running") + 1
    assert after.value("tasks_running") == before.value("tasks_running")
    assert (
        after.value("tasks_total", status="CANCELLED") == before.value("tasks_total", status="CANCELLED") + 1
    )
    assert (
        after.value("tasks_total", status="SUCCEEDED") == before.value("tasks_total", status="SUCCEEDED") + 1
    )
    stored = await models.TaskLog.filter(task_id=quick_id).count()
    assert after.value("task_log_lines_total") >= before.value("task_log_lines_total") + stored > 0


async def test_a_subscriber_falling_behind_counts_its_dropped_events(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    async with InProcessBroker() as broker, broker.subscribe(["metrics:drop"], max_queue=2) as sub:
        for n in range(3):
            await broker.publish("metrics:drop", {"n": n})
        with pytest.raises(FellBehind):
            async for _ in sub:
                pass
    after = await scrape(client)
    assert (
        after.value("subscription_events_dropped_total")
        == before.value("subscription_events_dropped_total") + 3
    )


@pytest.fixture
async def owned_redis() -> Any:
    if shutil.which("redis-server") is None:
        if REQUIRE_SERVICES:
            pytest.fail("redis-server is not on PATH (AICM_REQUIRE_SERVICES=1)")
        pytest.skip("redis-server is not on PATH")
    server = OwnedRedis(free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_broker_reconnects_are_counted(client: httpx.AsyncClient, owned_redis: OwnedRedis) -> None:
    before = await scrape(client)
    broker = RedisBroker(owned_redis.url, backoff_initial=0.05, backoff_max=0.2, ping_interval=0.5)
    async with broker, broker.subscribe(["metrics:reconnect"]):
        assert broker.connected
        await owned_redis.stop()
        await owned_redis.start()
        deadline = time.monotonic() + 10
        while broker.stats.reconnects < 1:
            assert time.monotonic() < deadline, "the broker did not reconnect"
            await asyncio.sleep(0.05)
    after = await scrape(client)
    assert after.value("broker_reconnects_total") == before.value("broker_reconnects_total") + 1


async def test_rate_limited_requests_are_counted(app: Starlette, tight: RateLimits) -> None:
    # a client address of its own, so no other test is ever limited by this one
    transport = httpx.ASGITransport(app=app, client=("198.51.100.77", 40001))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        before = await scrape(http)
        statuses = [
            (await http.post("/graphql", json={"query": "{ __typename }"})).status_code
            for _ in range(tight.config.burst_size + 1)
        ]
        assert statuses[-1] == 429, statuses
        after = await scrape(http)
    assert after.value("rate_limit_exceeded_total") >= before.value("rate_limit_exceeded_total") + 1
    assert after.value("http_requests_total", path="/graphql", status="429") >= (
        before.value("http_requests_total", path="/graphql", status="429") + 1
    )


# --- the configuration: enabled, path, guards ------------------------------------------------------


def _client_of(tmp_path: Path, ip: str = "127.0.0.1", **metrics: Any) -> httpx.AsyncClient:
    """A client for a fresh app (lifespan not run) whose monitoring.metrics has the given fields."""
    settings = make_settings(tmp_path, EMBEDDED)
    for key, value in metrics.items():
        setattr(settings.monitoring.metrics, key, value)
    transport = httpx.ASGITransport(app=build_app(settings), client=(ip, 40002))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_metrics_can_be_switched_off(tmp_path: Path) -> None:
    async with _client_of(tmp_path, enabled=False) as http:
        assert (await http.get("/metrics")).status_code == 404


async def test_metrics_are_served_on_the_configured_path(tmp_path: Path) -> None:
    async with _client_of(tmp_path, path="/internal/prometheus") as http:
        assert (await http.get("/metrics")).status_code == 404
        response = await http.get("/internal/prometheus")
        assert response.status_code == 200 and "http_requests_total" in response.text


async def test_a_bearer_token_guards_metrics(tmp_path: Path) -> None:
    token = "scrape-token-0123456789abcdef"
    async with _client_of(tmp_path, bearer_token=token) as http:
        missing = await http.get("/metrics")
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope-nope-nope-nope"})
        basic = await http.get("/metrics", headers={"Authorization": f"Basic {token}"})
        right = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert missing.status_code == wrong.status_code == basic.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200 and "http_requests_total" in right.text


async def test_an_ip_allow_list_guards_metrics(tmp_path: Path) -> None:
    allowed = ["10.0.0.0/8", "::1"]
    async with _client_of(tmp_path, "10.1.2.3", allowed_ips=allowed) as inside:
        assert (await inside.get("/metrics")).status_code == 200
    async with _client_of(tmp_path, "192.0.2.10", allowed_ips=allowed) as outside:
        assert (await outside.get("/metrics")).status_code == 403
    async with _client_of(tmp_path, "10.1.2.3", allowed_ips=allowed, bearer_token="x" * 20) as both:
        assert (await both.get("/metrics")).status_code == 401  # both guards apply when both are set
        assert (
            await both.get("/metrics", headers={"Authorization": "Bearer " + "x" * 20})
        ).status_code == 200


# --- serve --workers 2 -----------------------------------------------------------------------------


def _workers_with_graphql_requests(directory: Path) -> set[str]:
    """Worker pids whose own counter file has POST /graphql requests."""
    pids = set()
    for path in directory.glob("counter_*.db"):
        for metric in multiprocess.MultiProcessCollector.merge([str(path)], accumulate=False):
            if any(
                s.name == "http_requests_total" and s.labels.get("path") == "/graphql" and s.value > 0
                for s in metric.samples
            ):
                pids.add(path.stem.split("_", 1)[1])
    return pids


async def test_counters_add_up_across_workers(tmp_path: Path) -> None:
    # given two workers on PostgreSQL and Redis, sharing a multiprocess directory the test can look into
    database_url, redis_url = require_services()
    prom = tmp_path / "prom"
    env = clean_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        JWT_SECRET=TEST_JWT_SECRET,
        APP_ENV="test",
        PROMETHEUS_MULTIPROC_DIR=str(prom),
    )
    with serve(tmp_path, env, "--workers", "2") as base:
        # when: concurrent requests on fresh connections, until both workers have served some
        sent = 0
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as http:
            for _ in range(20):
                batch = [
                    http.post("/graphql", json={"query": "query Ping { __typename }"}) for _ in range(20)
                ]
                assert all(r.status_code == 200 for r in await asyncio.gather(*batch))
                sent += 20
                if len(_workers_with_graphql_requests(prom)) >= 2:
                    break
            assert len(_workers_with_graphql_requests(prom)) >= 2, "one worker served everything"
            pool_max = (await http.get("/health/detailed")).json()["database"]["pool"]["max"]
            # then every scrape, whichever worker answers it, shows the sum over both workers
            for _ in range(4):
                metrics = Scrape((await http.get("/metrics")).text)
                assert (
                    metrics.value("http_requests_total", method="POST", path="/graphql", status="200") == sent
                )
                assert (
                    metrics.value(
                        "graphql_operations_total", operation="Ping", type="query", outcome="success"
                    )
                    == sent
                )
                assert metrics.value("http_request_duration_seconds_count", path="/graphql") == sent
                assert metrics.value("process_resident_memory_bytes") > 0
            # and each live worker's pool is in the livesum gauges
            deadline = time.monotonic() + 15
            while Scrape((await http.get("/metrics")).text).value("database_connections_max") != 2 * pool_max:
                assert time.monotonic() < deadline, "database_connections_max is not the sum of both workers"
                await asyncio.sleep(0.5)
    # the operator's directory is kept, emptied at the next start
    assert prom.is_dir()


# --- the Grafana dashboard and the alert rules -----------------------------------------------------

_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "inf", "nan", "le",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression reads: identifiers that are not functions, keywords, label names in
    ``{…}`` or ``by (…)`` lists, strings, durations or Grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    names = set()
    for match in re.finditer(r"(?<![\w$.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group(0)
        rest = expr[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def _rows(dashboard: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Row title -> its panels (those after it when it is expanded, inside it when collapsed)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] | None = None
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], list(panel.get("panels", [])))
        else:
            assert current is not None, f"panel {panel['title']!r} is outside the guide's rows"
            current.append(panel)
    return rows


GUIDE_PANELS = [
    "System status",
    "Application metrics",
    "Authentication",
    "Database performance",
    "Security events",
]


async def test_the_dashboard_has_the_guides_five_panels_over_served_metrics(
    client: httpx.AsyncClient,
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    rows = _rows(dashboard)
    assert [title.split(" (")[0] for title in rows] == GUIDE_PANELS
    served = (await scrape(client)).names()
    for title, charts in rows.items():
        assert charts, f"row {title!r} has no panels"
        for chart in charts:
            exprs = [t["expr"] for t in chart.get("targets", [])]
            assert exprs, f"panel {chart['title']!r} has no query"
            for expr in exprs:
                names = promql_metric_names(expr)
                assert names, expr
                assert names <= served, f"{chart['title']!r}: {sorted(names - served)} not in /metrics"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


async def test_the_alert_rules_cover_the_issue_and_use_served_metrics(client: httpx.AsyncClient) -> None:
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    wanted = {
        "AICMHighErrorRate": "http_requests_total",
        "AICMHighLatencyP99": "http_request_duration_seconds_bucket",
        "AICMAuthFailureSpike": "auth_attempts_total",
        "AICMRateLimitSpike": "rate_limit_exceeded_total",
        "AICMDatabasePoolSaturated": "database_connections_in_use",
        "AICMBrokerReconnecting": "broker_reconnects_total",
    }
    served = (await scrape(client)).names()
    for alert, metric in wanted.items():
        assert alert in rules, f"missing alert {alert}"
        assert metric in promql_metric_names(rules[alert]["expr"]), rules[alert]["expr"]
    for rule in rules.values():
        assert promql_metric_names(rule["expr"]) <= served, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is not installed (Debian: apt-get install prometheus)"
        if REQUIRE_SERVICES:
            pytest.fail(message + " (AICM_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    return promtool


def test_the_alert_rules_pass_promtool() -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


RULE_TESTS = """
rule_files: [{alerts}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'http_requests_total{{method="POST",path="/graphql",status="200",job="aicm"}}'
        values: '0+100x20'
      - series: 'http_requests_total{{method="POST",path="/graphql",status="500",job="aicm"}}'
        values: '0+20x20'
      - series: 'auth_attempts_total{{method="password",outcome="failure",job="aicm"}}'
        values: '0+300x20'
      - series: 'rate_limit_exceeded_total{{scope="ip",job="aicm"}}'
        values: '0+600x20'
      - series: 'database_connections_in_use{{job="aicm"}}'
        values: '24x20'
      - series: 'database_connections_max{{job="aicm"}}'
        values: '25x20'
      - series: 'broker_reconnects_total{{job="aicm"}}'
        values: '0+1x20'
      - series: 'http_request_duration_seconds_bucket{{path="/graphql",le="0.5",job="aicm"}}'
        values: '0+10x20'
      - series: 'http_request_duration_seconds_bucket{{path="/graphql",le="5.0",job="aicm"}}'
        values: '0+100x20'
      - series: 'http_request_duration_seconds_bucket{{path="/graphql",le="+Inf",job="aicm"}}'
        values: '0+100x20'
    alert_rule_test:
      - {{eval_time: 15m, alertname: AICMHighErrorRate, exp_alerts: [{{exp_labels: {{severity: critical, job: aicm}}}}]}}
      - {{eval_time: 15m, alertname: AICMHighLatencyP99, exp_alerts: [{{exp_labels: {{severity: warning, job: aicm}}}}]}}
      - {{eval_time: 15m, alertname: AICMAuthFailureSpike, exp_alerts: [{{exp_labels: {{severity: warning, job: aicm}}}}]}}
      - {{eval_time: 15m, alertname: AICMRateLimitSpike, exp_alerts: [{{exp_labels: {{severity: warning, job: aicm}}}}]}}
      - {{eval_time: 15m, alertname: AICMDatabasePoolSaturated, exp_alerts: [{{exp_labels: {{severity: warning, job: aicm}}}}]}}
      - {{eval_time: 15m, alertname: AICMBrokerReconnecting, exp_alerts: [{{exp_labels: {{severity: warning, job: aicm}}}}]}}
  - interval: 1m
    input_series:
      - series: 'http_requests_total{{method="POST",path="/graphql",status="200",job="aicm"}}'
        values: '0+100x20'
      - series: 'auth_attempts_total{{method="password",outcome="success",job="aicm"}}'
        values: '0+10x20'
      - series: 'database_connections_in_use{{job="aicm"}}'
        values: '2x20'
      - series: 'database_connections_max{{job="aicm"}}'
        values: '25x20'
      - series: 'http_request_duration_seconds_bucket{{path="/graphql",le="0.5",job="aicm"}}'
        values: '0+100x20'
      - series: 'http_request_duration_seconds_bucket{{path="/graphql",le="+Inf",job="aicm"}}'
        values: '0+100x20'
    alert_rule_test:
      - {{eval_time: 15m, alertname: AICMHighErrorRate, exp_alerts: []}}
      - {{eval_time: 15m, alertname: AICMHighLatencyP99, exp_alerts: []}}
      - {{eval_time: 15m, alertname: AICMAuthFailureSpike, exp_alerts: []}}
      - {{eval_time: 15m, alertname: AICMDatabasePoolSaturated, exp_alerts: []}}
      - {{eval_time: 15m, alertname: AICMBrokerReconnecting, exp_alerts: []}}
"""


def test_the_alert_rules_fire_on_trouble_and_stay_quiet_otherwise(tmp_path: Path) -> None:
    promtool = _promtool()
    # promtool compares annotations too: test the expressions, labels and durations on a copy without them
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    bare = tmp_path / "alerts.yml"
    bare.write_text(yaml.safe_dump(rules))
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(RULE_TESTS.format(alerts=json.dumps(str(bare))))
    result = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promql_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, path) (rate(http_request_duration_seconds_bucket{path!~"/metrics"}'
        "[$__rate_interval]))) > 1 and on (instance) sum without (status) (up_ness) / ignoring(x) max(tasks_running)"
    )
    assert promql_metric_names(expr) == {"http_request_duration_seconds_bucket", "up_ness", "tasks_running"}
