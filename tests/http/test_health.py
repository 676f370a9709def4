from __future__ import annotations

from datetime import datetime

import httpx

from aicm.runner.sandbox import detect


async def test_health_reports_every_service(client: httpx.AsyncClient, backend) -> None:
    # when
    response = await client.get("/health")
    # then
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    expected_redis = "healthy" if backend.uses_services else "embedded"
    assert body["services"] == {
        "database": "healthy",
        "redis": expected_redis,
        "auth": "healthy",
        "runner": "embedded",  # this process runs the tasks (runner.embedded: true)
        "sandbox": detect("auto").mode,  # "bubblewrap" wherever it can run (runner.sandbox: auto)
    }


async def test_detailed_health_adds_latency_version_uptime_pool_and_broker(
    client: httpx.AsyncClient, backend
):
    response = await client.get("/health/detailed")
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == "1.0.0"
    assert body["uptime_seconds"] >= 0
    assert body["latency_ms"]["database"] >= 0
    assert body["broker"] == ("redis" if backend.uses_services else "embedded")
    assert body["database"]["pool"]["size"] >= 1


async def test_detailed_health_says_what_isolation_agent_runs_get(client: httpx.AsyncClient) -> None:
    status = detect("auto")
    body = (await client.get("/health/detailed")).json()
    sandbox = body["sandbox"]
    assert body["services"]["sandbox"] == sandbox["mode"] == status.mode
    assert (sandbox["requested"], sandbox["reason"], sandbox["network"]) == ("auto", status.reason, True)
    assert sandbox["limits"]["values"] == {
        "memory": 4 * 1024**3,
        "processes": 256,
        "file_size": 1024**3,
        "cpu_time": 7200,
        "output_bytes": 64 * 1024**2,
        "line_bytes": 1024**2,
    }
    assert set(sandbox["limits"]["enforcement"]) == set(sandbox["limits"]["values"])
    assert sandbox["limits"]["enforcement"]["output_bytes"] == "reader"


async def test_an_unsandboxed_server_stays_healthy_and_says_so(app, client: httpx.AsyncClient) -> None:
    runner = app.state.runtime.settings.runner
    runner.sandbox = "none"
    try:
        response = await client.get("/health/detailed")
    finally:
        runner.sandbox = "auto"
    body = response.json()
    assert (response.status_code, body["status"], body["services"]["sandbox"]) == (200, "healthy", "none")
    assert body["sandbox"]["reason"] == "runner.sandbox is none"
