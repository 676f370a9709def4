from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st

from aicm.config import LogFileConfig, LoggingConfig
from aicm.logs.context import bind_request, current_request_id, reset_request
from aicm.logs.formatting import JSONFormatter
from aicm.logs.records import SECURITY_EVENTS, default_event
from aicm.logs.redaction import REDACTED, Redactor
from aicm.logs.rotation import MEGABYTE, SizeAndAgeRotatingHandler
from aicm.logs.setup import UVICORN_LOGGERS, configure_logging, log_config, security_event

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJVc2VyOjEiLCJleHAiOjE3MDB9.c2lnbmF0dXJlLXBhcnQ"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put back what configure_logging touches; pytest's own root handlers are left to pytest."""
    names = ["", "aicm", "tests", *UVICORN_LOGGERS]
    saved = {name: logging.getLogger(name) for name in names}
    state = {name: (lg.handlers[:], lg.level, lg.propagate, lg.disabled) for name, lg in saved.items()}
    yield
    for name, logger in saved.items():
        handlers, level, propagate, disabled = state[name]
        for handler in logger.handlers[:]:
            if handler not in handlers and (name or getattr(handler, "_aicm_handler", False)):
                logger.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if name and handler not in logger.handlers:
                logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled


@pytest.fixture
def stream() -> io.StringIO:
    buffer = io.StringIO()
    configure_logging(LoggingConfig(level="debug"), stream=buffer)
    return buffer


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def aicm_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_aicm_handler", False)]


# --- JSON lines -----------------------------------------------------------------------------------------------


def test_json_line_starts_with_timestamp_level_event_ip_and_keeps_extras(stream: io.StringIO) -> None:
    # when
    logging.getLogger("aicm.test").warning(
        "project %s archived",
        "p1",
        extra={"event": "project_archived", "user_id": "VXNlcjox", "ip": "203.0.113.9", "project": {"id": 7}},
    )
    # then
    [line] = lines(stream)
    assert list(line)[:4] == ["timestamp", "level", "event", "ip"]
    assert TIMESTAMP.match(line["timestamp"])
    assert line["level"] == "warning"
    assert line["event"] == "project_archived"
    assert line["message"] == "project p1 archived"
    assert line["logger"] == "aicm.test"
    assert line["user_id"] == "VXNlcjox"
    assert line["project"] == {"id": 7}


def test_runbook_grep_and_awk_recipes_work_on_the_lines(stream: io.StringIO) -> None:
    # given: ops guide `grep 'status":5' | jq .error` and `grep rate_limit_exceeded | awk '{print $4}'`
    logger = logging.getLogger("aicm.test")
    logger.error(
        "GET / 500", extra={"event": "http_request", "ip": "10.0.0.1", "status": 500, "error": "boom"}
    )
    security_event(
        logger, "rate_limit_exceeded", message="too many requests from this client", ip="203.0.113.9"
    )
    # when
    server_errors = [raw for raw in stream.getvalue().splitlines() if 'status":5' in raw]
    limited = [raw for raw in stream.getvalue().splitlines() if "rate_limit_exceeded" in raw]
    # then
    assert [json.loads(raw)["error"] for raw in server_errors] == ["boom"]
    assert [raw.split()[3] for raw in limited] == ['"ip":"203.0.113.9",']


@pytest.mark.parametrize(
    ("logger", "template", "expected"),
    [
        ("uvicorn.error", "Started server process [%d]", "started_server_process"),
        ("uvicorn.error", "Uvicorn running on %s://%s:%d (Press CTRL+C to quit)", "uvicorn_running_on"),
        ("uvicorn.error", "Waiting for application startup.", "waiting_for_application_startup"),
        ("uvicorn.access", '%s - "%s %s HTTP/%s" %d', "uvicorn_access"),
        ("aicm.runner", "Task %(id)s finished in {seconds}s", "task_finished_in_s"),
        ("httpx", 'HTTP Request: %s %s "%s %d %s"', "httpx_http_request"),
    ],
)
def test_default_event_is_the_template_in_snake_case(logger: str, template: str, expected: str) -> None:
    record = logging.LogRecord(logger, logging.INFO, __file__, 1, template, None, None)
    assert default_event(record) == expected


def test_exception_becomes_error_and_stack(stream: io.StringIO) -> None:
    # when
    try:
        raise ValueError("bad input")
    except ValueError:
        logging.getLogger("aicm.test").exception("resolver failed")
    # then
    [line] = lines(stream)
    assert line["level"] == "error"
    assert line["event"] == "resolver_failed"
    assert line["error"] == "ValueError: bad input"
    assert line["stack"].startswith("Traceback (most recent call last):")
    assert "\n" not in stream.getvalue().rstrip("\n")


# --- redaction ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer opaque-token-123", "opaque-token-123"),
        ("header was bearer abc.def.ghi", "abc.def.ghi"),
        (f"token {JWT} rejected", JWT),
        ("login with password=hunter2&next=/", "hunter2"),
        ('{"email": "a@b.c", "password": "hunter2"}', "hunter2"),
        ("{'newPassword': 'hunter2'}", "hunter2"),
        ("GET /graphql?access_token=abc123 HTTP/1.1", "abc123"),
        ("refreshToken: r-456 reused", "r-456"),
        ("client_secret=shh", "shh"),
        ('{"input": {"provider": "anthropic", "apiKey": "k-123"}}', "k-123"),
        ("the agent saw sk-ant-api03-AbC_dEf-123456 and failed", "sk-ant-api03-AbC_dEf-123456"),
    ],
)
def test_redactor_removes_secrets_from_free_text(text: str, secret: str) -> None:
    redacted = Redactor().redact_text(text)
    assert secret not in redacted
    assert REDACTED in redacted


def test_redactor_leaves_ordinary_text_and_is_idempotent() -> None:
    redactor = Redactor()
    assert (
        redactor.redact_text("token_reuse_detected for session 12") == "token_reuse_detected for session 12"
    )
    once = redactor.redact_text("Authorization: Bearer abc password=x")
    assert redactor.redact_text(once) == once == f"Authorization: {REDACTED} password={REDACTED}"


@pytest.mark.parametrize("text", ["token" * 20_000, "xpasswordx." * 15_000, "eyJ" + "a" * 100_000])
def test_redactor_stays_linear_on_hostile_text(text: str) -> None:
    started = time.perf_counter()
    Redactor().redact_text(text)
    assert time.perf_counter() - started < 1.0


def test_redactor_walks_nested_values_and_header_pairs() -> None:
    # given
    value = {
        "email": "a@b.c",
        "PASSWORD": "hunter2",
        "input": {"currentPassword": "old", "tokens": ["t1"], "name": "Ann"},
        "items": [{"api_key": "k"}, {"note": f"jwt {JWT}"}],
        "headers": [(b"authorization", b"Bearer z"), (b"cookie", b"sid=1"), (b"host", b"example")],
        "missing_secret": None,
    }
    # when
    redacted = Redactor().redact(value)
    # then
    assert redacted == {
        "email": "a@b.c",
        "PASSWORD": REDACTED,
        "input": {"currentPassword": REDACTED, "tokens": REDACTED, "name": "Ann"},
        "items": [{"api_key": REDACTED}, {"note": f"jwt {REDACTED}"}],
        "headers": [["authorization", REDACTED], ["cookie", REDACTED], ["host", "example"]],
        "missing_secret": None,
    }


def test_records_lose_secrets_in_message_args_extras_and_exceptions(stream: io.StringIO) -> None:
    # when
    logger = logging.getLogger("aicm.test")
    logger.info(
        "login attempt %s with %s",
        "ann",
        "password=hunter2",
        extra={"password": "p1", "body": {"refresh_token": "r1"}, "headers": {"Authorization": "Bearer b1"}},
    )
    try:
        raise RuntimeError(f"could not decode {JWT}")
    except RuntimeError:
        logger.exception("Authorization: Bearer b2 failed")
    # then
    output = stream.getvalue()
    for secret in ("hunter2", "p1", "r1", "b1", "b2", JWT):
        assert secret not in output
    first, second = lines(stream)
    assert first["message"] == f"login attempt ann with password={REDACTED}"
    assert first["password"] == REDACTED
    assert first["body"] == {"refresh_token": REDACTED}
    assert second["error"] == f"RuntimeError: could not decode {REDACTED}"


def test_formatter_redacts_even_without_the_filter() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "with %s", ("Bearer abc",), None)
    record.secret = "s"
    line = json.loads(JSONFormatter().format(record))
    assert line["message"] == f"with Bearer {REDACTED}"
    assert line["secret"] == REDACTED


# --- request context and security events ----------------------------------------------------------------------


def test_records_logged_during_a_request_carry_its_id_ip_and_user(stream: io.StringIO) -> None:
    # given
    scope = {"type": "http", "client": ("198.51.100.4", 5000), "state": {}}
    logger = logging.getLogger("aicm.test")
    # when
    token = bind_request("req-1", scope)
    try:
        scope["state"]["user_id"] = "VXNlcjox"  # the GraphQL context sets it later in the request
        logger.info("inside")
        assert current_request_id() == "req-1"
    finally:
        reset_request(token)
    logger.info("outside")
    # then
    inside, outside = lines(stream)
    assert (inside["request_id"], inside["ip"], inside["user_id"]) == ("req-1", "198.51.100.4", "VXNlcjox")
    assert "request_id" not in outside
    assert current_request_id() is None


def test_security_events_use_the_contract_names_and_levels(stream: io.StringIO) -> None:
    # given
    logger = logging.getLogger("aicm.auth")
    # when
    security_event(logger, "auth_failed", email="ann@example.com", reason="bad_password", name="clash")
    security_event(logger, "auth_succeeded", user_id="VXNlcjox", password="never-logged")
    # then
    failed, succeeded = lines(stream)
    assert (failed["event"], failed["level"], failed["message"]) == ("auth_failed", "warning", "auth_failed")
    assert failed["email"] == "ann@example.com"
    assert failed["name_"] == "clash"
    assert (succeeded["event"], succeeded["level"]) == ("auth_succeeded", "info")
    assert succeeded["password"] == REDACTED
    assert {
        "auth_failed",
        "auth_succeeded",
        "rate_limit_exceeded",
        "token_reuse_detected",
        "permission_denied",
        "account_locked",
    } == SECURITY_EVENTS


# --- configure_logging ----------------------------------------------------------------------------------------


def test_configure_logging_twice_installs_one_handler() -> None:
    # given
    first, second = io.StringIO(), io.StringIO()
    # when
    configure_logging(LoggingConfig(), stream=first)
    configure_logging(LoggingConfig(), stream=second)
    logging.getLogger("aicm.test").info("once")
    # then
    assert len(aicm_handlers()) == 1
    assert first.getvalue() == ""
    assert [line["message"] for line in lines(second)] == ["once"]


def test_level_comes_from_config() -> None:
    buffer = io.StringIO()
    configure_logging(LoggingConfig(level="warning"), stream=buffer)
    logging.getLogger("aicm.test").info("hidden")
    logging.getLogger("aicm.test").warning("shown")
    assert [line["message"] for line in lines(buffer)] == ["shown"]


def test_output_stderr_writes_to_stderr() -> None:
    configure_logging(LoggingConfig(output="stderr"))
    [handler] = aicm_handlers()
    assert isinstance(handler, logging.StreamHandler)
    assert handler.stream is sys.stderr


def test_uvicorn_logs_come_out_as_json_lines() -> None:
    # given: uvicorn's defaults put private handlers on its loggers and stop propagation
    private = logging.StreamHandler(io.StringIO())
    for name in ("uvicorn", "uvicorn.access"):
        logging.getLogger(name).addHandler(private)
        logging.getLogger(name).propagate = False
    buffer = io.StringIO()
    # when
    configure_logging(LoggingConfig(), stream=buffer)
    uvicorn.Config(app=lambda scope, receive, send: None, log_config=log_config())  # runs its logging setup
    logging.getLogger("uvicorn.error").info(
        "Started server process [%d]",
        42,
        extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"},
    )
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "1.2.3.4:5", "GET", "/?token=t", "1.1", 200
    )
    # then
    [error_line] = lines(buffer)  # the access line is AccessLogMiddleware's http_request, not uvicorn's
    assert (error_line["event"], error_line["message"]) == (
        "started_server_process",
        "Started server process [42]",
    )
    assert error_line["logger"] == "uvicorn.error"
    assert "color_message" not in error_line
    assert not logging.getLogger("uvicorn.access").hasHandlers()  # uvicorn does not even format them
    assert private.stream.getvalue() == ""
    assert len(aicm_handlers()) == 1


def test_text_format_is_one_readable_line() -> None:
    # given
    buffer = io.StringIO()
    configure_logging(LoggingConfig(format="text"), stream=buffer)
    # when
    logging.getLogger("aicm.test").warning(
        "too many", extra={"event": "rate_limit_exceeded", "ip": "203.0.113.9", "note": "a b", "token": "t"}
    )
    # then
    [line] = buffer.getvalue().splitlines()
    timestamp, level, event, ip, *_ = line.split(" ")
    assert TIMESTAMP.match(timestamp)
    assert (level, event, ip) == ("WARNING", "rate_limit_exceeded", "ip=203.0.113.9")
    assert line.endswith(f'note="a b" token={REDACTED} [aicm.test] too many')


def test_file_output_follows_logging_file(tmp_path: Path) -> None:
    # given
    path = tmp_path / "nested" / "logs" / "app.log"
    config = LoggingConfig(
        format="text", file=LogFileConfig(enabled=True, path=str(path), max_size=3, max_backups=4, max_age=7)
    )
    # when
    configure_logging(config, stream=io.StringIO())
    logging.getLogger("aicm.test").info("to the file", extra={"event": "written"})
    # then
    file_handler = next(h for h in aicm_handlers() if isinstance(h, SizeAndAgeRotatingHandler))
    assert (file_handler.maxBytes, file_handler.backupCount) == (3 * MEGABYTE, 4)
    assert file_handler.max_age_seconds == 7 * 86_400
    file_handler.flush()
    [line] = [
        json.loads(raw) for raw in path.read_text().splitlines()
    ]  # the file is JSON even in text format
    assert line["event"] == "written"


# --- rotation -------------------------------------------------------------------------------------------------


def make_handler(path: Path, **options: float) -> SizeAndAgeRotatingHandler:
    handler = SizeAndAgeRotatingHandler(path, **{"max_bytes": 400, "max_age_days": 30, **options})
    handler.setFormatter(JSONFormatter())
    return handler


def emit(handler: logging.Handler, count: int) -> None:
    for number in range(count):
        handler.handle(logging.LogRecord("aicm.test", logging.INFO, __file__, 1, "line %d", (number,), None))


def test_rotation_by_size_keeps_max_backups(tmp_path: Path) -> None:
    # given
    path = tmp_path / "app.log"
    handler = make_handler(path, backup_count=3)
    # when
    try:
        emit(handler, 60)
    finally:
        handler.close()
    # then
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.log", "app.log.1", "app.log.2", "app.log.3"]
    for file in tmp_path.iterdir():
        assert file.stat().st_size <= 400
        assert all(json.loads(raw)["message"].startswith("line ") for raw in file.read_text().splitlines())


def test_backups_past_max_backups_go_at_start(tmp_path: Path) -> None:
    for number in (1, 2, 5):
        (tmp_path / f"app.log.{number}").write_text("old\n")
    (tmp_path / "app.log.bak").write_text("not ours\n")
    make_handler(tmp_path / "app.log", backup_count=2).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.log", "app.log.1", "app.log.2", "app.log.bak"]


def test_backups_older_than_max_age_go_at_start_and_on_rollover(tmp_path: Path) -> None:
    # given
    path = tmp_path / "app.log"
    forty_days_ago = time.time() - 40 * 86_400
    for number in (1, 2, 3):
        (tmp_path / f"app.log.{number}").write_text("old\n")
    for number in (2, 3):
        os.utime(tmp_path / f"app.log.{number}", (forty_days_ago, forty_days_ago))
    # when: start
    handler = make_handler(path, backup_count=5, max_age_days=30)
    # then
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.log", "app.log.1"]
    # when: app.log.1 ages past max_age, then a rollover happens
    os.utime(tmp_path / "app.log.1", (forty_days_ago, forty_days_ago))
    try:
        emit(handler, 1)
        handler.doRollover()
    finally:
        handler.close()
    # then: the old backup (shifted to app.log.2) is gone, the fresh one stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.log", "app.log.1"]
    assert "line" in (tmp_path / "app.log.1").read_text()


def test_zero_backups_truncate_the_file(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    handler = make_handler(path, backup_count=0)
    try:
        emit(handler, 30)
    finally:
        handler.close()
    assert [p.name for p in tmp_path.iterdir()] == ["app.log"]
    assert path.stat().st_size <= 400


_SECRET_PIECES = st.sampled_from(
    ["password=", "PassWd: ", "API-KEY=", "x_private_key:", "Refresh", "TOKEN", '"secret": "', "Cookie=",
     "Bearer ", "BASIC ", "eyJ", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "sk-ant-api03-abcdefgh",
     "authorization", "=", ":", " ", '"', "'", "&", "accepted", "WebSocket /graphql", "127.0.0.1"]
)  # fmt: skip


@given(st.lists(st.one_of(_SECRET_PIECES, st.text(max_size=8)), max_size=12).map("".join))
def test_the_quick_check_skips_only_texts_no_pattern_could_touch(text: str) -> None:
    """``redact_text`` returns a text unscanned unless it holds one of the patterns' literal parts: what
    it returns is what the four patterns make of it."""
    from aicm.logs import redaction as r

    scanned = r._KEY_VALUE.sub(r._redact_key_value, text)
    scanned = r._AUTH_SCHEME.sub(lambda m: f"{m[1]} {REDACTED}", scanned)
    scanned = r._ANTHROPIC_KEY.sub(REDACTED, r._JWT.sub(REDACTED, scanned))
    assert Redactor().redact_text(text) == scanned
