from __future__ import annotations

from datetime import datetime

import httpx


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
