"""Logs end to end over a real ``aicli-api serve`` (CONTRACT §6): every line on stdout and in the rotating
file is JSON, request lines carry the contract's fields and the request id, ``LOG_LEVEL`` wins over the file,
the file rotates by size and prunes by age, and no password, token or secret is written anywhere."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import require_services
from tests.servers import TEST_JWT_SECRET, clean_env, serve

PASSWORD = "Observability-passphrase-42!"
WRONG_PASSWORD = "Not-the-passphrase-99?"
REGISTER = 'mutation($email: String!, $password: String!) { register(input: {email: $email, password: $password, name: "Log Tester"}) { accessToken } }'
LOGIN = "mutation Login($email: String!, $password: String!) { login(input: {email: $email, password: $password}) { accessToken refreshToken } }"
REFRESH = "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken refreshToken } }"
ME = "query Me { me { id } }"
REQUEST_FIELDS = {
    "timestamp",
    "level",
    "event",
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "ip",
    "user_id",
}
MEGABYTE = 1024 * 1024
OLD_MARKER = "a backup from long ago"


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` as JSON; fails on the first line that is not a JSON object."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name}:{number} is not JSON: {line[:300]!r}") from None
        assert isinstance(record, dict), f"{path.name}:{number}: {line[:300]!r}"
        assert {"timestamp", "level", "event"} <= record.keys(), f"{path.name}:{number}: {line[:300]!r}"
        records.append(record)
    return records


def gql(http: httpx.Client, query: str, variables: dict[str, Any], **headers: str) -> httpx.Response:
    response = http.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
    assert response.status_code == 200, response.text
    return response


def test_a_real_server_logs_json_with_the_contract_fields_rotates_and_never_leaks(tmp_path: Path) -> None:
    # given a config with a rotating file of 1 MB, two backups, 30 days; an old backup already there
    logs = tmp_path / "logs"
    logs.mkdir()
    old_backup = logs / "app.log.2"
    old_backup.write_text(json.dumps({"timestamp": "x", "level": "info", "event": OLD_MARKER}) + "\n")
    forty_days_ago = time.time() - 40 * 86_400
    os.utime(old_backup, (forty_days_ago, forty_days_ago))
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
logging:
  level: "warning"
  format: "json"
  output: "stdout"
  file:
    enabled: true
    path: "{logs / "app.log"}"
    max_size: 1
    max_backups: 2
    max_age: 30
"""
    )
    env = clean_env(
        APP_ENV="test",
        LOG_LEVEL="info",  # wins over the file's "warning": info request lines must appear
        DATABASE_URL=f"sqlite://{tmp_path / 'aicm.db'}",
        JWT_SECRET=TEST_JWT_SECRET,
    )
    email = "logs@example.com"
    with (
        serve(tmp_path, env, "--config", str(config)) as base,
        httpx.Client(base_url=base, timeout=10) as http,
    ):
        # when: sign-up, a failed and a good login, a refresh, authenticated requests, tokens in a query string
        gql(http, REGISTER, {"email": email, "password": PASSWORD})
        gql(http, LOGIN, {"email": email, "password": WRONG_PASSWORD})
        inline = f'mutation {{ login(input: {{email: "{email}", password: "{WRONG_PASSWORD}"}}) {{ accessToken }} }}'
        gql(http, inline, {})
        pair = gql(http, LOGIN, {"email": email, "password": PASSWORD}).json()["data"]["login"]
        rotated = gql(http, REFRESH, {"t": pair["refreshToken"]}).json()["data"]["refreshToken"]
        access = rotated["accessToken"]
        me = gql(http, ME, {}, Authorization=f"Bearer {access}", **{"X-Request-ID": "e2e-me-1"})
        generated = http.get("/health")
        http.get("/graphql", params={"query": "{ me { id } }", "access_token": access, "password": PASSWORD})
        # and enough long-path requests to pass 1 MB once
        long_path = "/" + "p" * 6000
        for _ in range(230):
            http.get(long_path)
    user_id = me.json()["data"]["me"]["id"]
    secrets = [
        PASSWORD,
        WRONG_PASSWORD,
        access,
        pair["accessToken"],
        pair["refreshToken"],
        rotated["refreshToken"],
    ]
    secrets.append(TEST_JWT_SECRET)

    # then: the request id was echoed (kept when sane, generated otherwise)
    assert me.headers["x-request-id"] == "e2e-me-1"
    assert generated.headers["x-request-id"]
    # every stdout line is JSON (the helper sends stderr there too)
    (stdout,) = tmp_path.glob("server-*.log")
    out = json_lines(stdout)
    # uvicorn's own lines are among them, in the same format
    assert any(r.get("logger", "").startswith("uvicorn") for r in out)
    # request lines carry the contract's fields; LOG_LEVEL=info let the info ones through
    requests = [r for r in out if r["event"] == "http_request"]
    assert requests and all(r.keys() >= REQUEST_FIELDS for r in requests)
    assert any(r["level"] == "info" for r in requests)
    (me_line,) = [r for r in requests if r["request_id"] == "e2e-me-1"]
    assert (me_line["method"], me_line["path"], me_line["status"], me_line["user_id"]) == (
        "POST",
        "/graphql",
        200,
        user_id,
    )
    assert me_line["ip"] == "127.0.0.1" and me_line["duration_ms"] >= 0
    assert any(r["request_id"] == generated.headers["x-request-id"] for r in requests)
    assert not any("?" in r["path"] for r in requests)
    events = {r["event"] for r in out}
    assert {"auth_failed", "auth_succeeded"} <= events
    # the file rotated at 1 MB, kept at most two backups and dropped the one older than 30 days
    files = sorted(logs.iterdir())
    assert [f.name for f in files if f.name != "app.log"] and all(
        f.name in ("app.log", "app.log.1", "app.log.2") for f in files
    ), files
    longest = max(len(line.encode()) for f in files for line in f.read_text().splitlines())
    assert all(f.stat().st_size <= MEGABYTE + longest for f in files)
    in_files = [r for f in files for r in json_lines(f)]
    assert not any(r["event"] == OLD_MARKER for r in in_files)
    assert any(r["event"] == "http_request" and r["request_id"] == "e2e-me-1" for r in in_files)
    assert len([r for r in in_files if r["event"] == "http_request"]) == len(requests)
    # no password, token or secret anywhere
    for path in [stdout, *files]:
        text = path.read_text()
        for secret in secrets:
            assert secret not in text, f"{path.name} contains a secret"


def test_with_two_workers_each_request_is_logged_once(tmp_path: Path) -> None:
    # given serve --workers 2 (Redis shares sessions and events between them)
    _, redis_url = require_services()
    env = clean_env(
        APP_ENV="test",
        REDIS_URL=redis_url,
        DATABASE_URL=f"sqlite://{tmp_path / 'aicm.db'}",
        JWT_SECRET=TEST_JWT_SECRET,
    )
    ids = [f"twice-{n}" for n in range(6)]
    with serve(tmp_path, env, "--workers", "2") as base, httpx.Client(base_url=base, timeout=10) as http:
        # when
        for request_id in ids:
            assert http.get("/health", headers={"X-Request-ID": request_id}).status_code == 200
        time.sleep(0.5)  # the workers' stdout reaches the log file
    # then one http_request line each, and no uvicorn access line at all
    records = json_lines(next(tmp_path.glob("server-*.log")))
    assert not [r for r in records if r["event"] == "uvicorn_access"]
    for request_id in ids:
        lines = [r for r in records if r.get("request_id") == request_id]
        assert [r["event"] for r in lines] == ["http_request"], lines
