"""``scripts/security_check.sh`` reads the security events of a log file, or of stdin with ``--log -``."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from tests.servers import clean_env

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "security_check.sh"


def log_lines() -> str:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    events = [
        {"timestamp": now, "level": "warning", "event": "auth_failed", "ip": "203.0.113.7", "reason": "bad"},
        {"timestamp": now, "level": "warning", "event": "auth_failed", "ip": "203.0.113.7", "reason": "bad"},
        {"timestamp": now, "level": "warning", "event": "rate_limit_exceeded", "ip": "198.51.100.9"},
        {"timestamp": now, "level": "info", "event": "http_request", "ip": "198.51.100.9", "status": 200},
    ]
    return "".join(json.dumps(event) + "\n" for event in events)


def run(*args: str, stdin: str | None = None, cwd: Path) -> str:
    result = subprocess.run(
        ["bash", str(SCRIPT), *args, "--cert", str(cwd / "none.pem")],
        input=stdin, cwd=cwd, env=clean_env(AICM_PYTHON=sys.executable),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def assert_counted(report: str) -> None:
    assert "2. Failed Login Attempts (last 24h): 2" in report
    assert "203.0.113.7" in report
    assert "     1  198.51.100.9" in report


def test_the_report_counts_the_events_of_a_log_file(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text(log_lines())
    assert_counted(run("--log", str(log), cwd=tmp_path))


def test_the_report_counts_the_events_piped_on_stdin(tmp_path: Path) -> None:
    # as in the documented `docker compose logs ... | scripts/security_check.sh --log -`
    assert_counted(run("--log", "-", stdin=log_lines(), cwd=tmp_path))
