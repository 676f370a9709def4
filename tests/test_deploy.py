"""The deploy files (issue 9): what can be checked without Docker.

nginx.conf goes through Debian's ``nginx -t`` and then proxies a real ``aicli-api serve`` on loopback (TLS,
HTTP→HTTPS redirect, WebSocket upgrade, body limit); the systemd units through ``systemd-analyze verify``; the
compose file, Dockerfile and .dockerignore are parsed and asserted; the Make targets the guide names are run.
nginx missing is a skip, and a failure under ``AICM_REQUIRE_SERVICES=1`` (CI installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REQUIRE_SERVICES
from tests.servers import clean_env, free_port, serve

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
FIXTURES = Path(__file__).parent / "fixtures"
GUIDE_MAKE_TARGETS = (
    "build",
    "migrate",
    "config-validate",
    "env-check",
    "test",
    "test-integration",
    "test-performance",
    "run",
    "lint",
    "bench",
)


def guide_env() -> dict[str, str]:
    """tests/fixtures/guide.env (the guide's .env) as a mapping."""
    pairs = {}
    for line in (FIXTURES / "guide.env").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs | {"AICM_ENCRYPTION_KEY": "k" * 43}  # the guide predates repository credentials' key


def needs_tool(name: str) -> str:
    """The tool's path; a skip without it, a failure under AICM_REQUIRE_SERVICES=1."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
    if path:
        return path
    message = f"{name} is not installed (Debian: apt-get install {name})"
    if REQUIRE_SERVICES:
        pytest.fail(message + " and AICM_REQUIRE_SERVICES=1")
    pytest.skip(message)


def make(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------------------------- nginx


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway self-signed RSA certificate (the guide's ciphers are ECDHE-RSA) as fullchain/privkey."""
    folder = tmp_path_factory.mktemp("ssl")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(folder / "privkey.pem"), "-out", str(folder / "fullchain.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return folder


def nginx_conf(folder: Path, certs: Path, upstream: str) -> str:
    """deploy/nginx/nginx.conf with the throwaway certificate, a reachable upstream and logs under folder."""
    text = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert "server app:8080;" in text
    return (
        text.replace("/etc/nginx/ssl/", f"{certs}/")
        .replace("server app:8080;", f"server {upstream};")
        .replace("/var/log/nginx/", f"{folder}/")
    )


def test_nginx_conf_passes_nginx_t_with_a_throwaway_certificate(tmp_path: Path, certificate: Path) -> None:
    nginx = needs_tool("nginx")
    # given the real file, only the certificate, upstream host and log paths swapped
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(tmp_path, certificate, "127.0.0.1:8080"))
    # when
    result = subprocess.run(
        [nginx, "-t", "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    # then
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_conf_has_the_guides_tls_and_the_proxy_settings() -> None:
    text = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert "ssl_ciphers ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384;" in text
    assert "ssl_prefer_server_ciphers off;" in text
    assert "return 301 https://$host$request_uri;" in text
    assert "client_max_body_size 1m;" in text
    graphql = text.split("location = /graphql {", 1)[1].split("}", 1)[0]
    for header in ("Host $host", "X-Real-IP $remote_addr", "X-Forwarded-For $proxy_add_x_forwarded_for",
                   "X-Forwarded-Proto $scheme", "Upgrade $http_upgrade", "Connection $connection_upgrade"):  # fmt: skip
        assert f"proxy_set_header {header};" in graphql


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory, certificate: Path) -> Iterator[dict[str, str]]:
    """A real server behind nginx (this repository's nginx.conf), both on loopback ports."""
    nginx = needs_tool("nginx")
    home = tmp_path_factory.mktemp("proxied")
    with serve(home, clean_env(APP_ENV="test")) as base:
        http_port, https_port = free_port(), free_port()
        text = nginx_conf(home, certificate, base.removeprefix("http://"))
        text = re.sub(r"\n\s*listen \[::\]:\d+[^;]*;", "", text)
        text = text.replace("listen 80 default_server;", f"listen 127.0.0.1:{http_port} default_server;")
        text = text.replace("listen 443 ssl", f"listen 127.0.0.1:{https_port} ssl")
        temp = "".join(f"\n    {kind}_temp_path {home}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))  # fmt: skip
        text = text.replace("http {", "http {" + temp, 1)
        conf = home / "nginx.conf"
        conf.write_text(text)
        globals_ = f"pid {home}/nginx.pid; daemon off;" + (" user root;" if os.geteuid() == 0 else "")
        proc = subprocess.Popen(
            [nginx, "-c", str(conf), "-e", str(home / "error.log"), "-g", globals_],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, (home / "error.log").read_text()
                try:
                    httpx.get(f"http://127.0.0.1:{http_port}/", timeout=1)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "nginx did not answer within 20 s"
                    time.sleep(0.2)
            yield {"http": f"http://127.0.0.1:{http_port}", "https": f"https://127.0.0.1:{https_port}"}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def test_nginx_redirects_http_to_https(proxied: dict[str, str]) -> None:
    answer = httpx.get(f"{proxied['http']}/graphql?query=x", timeout=5)
    assert answer.status_code == 301
    assert answer.headers["location"].startswith("https://")
    assert answer.headers["location"].endswith("/graphql?query=x")


def test_nginx_proxies_health_and_graphql_over_tls(proxied: dict[str, str]) -> None:
    with httpx.Client(verify=False, timeout=5) as client:
        health = client.get(f"{proxied['https']}/health")
        assert health.status_code == 200
        assert health.json()["status"] == "healthy"
        assert "max-age" in health.headers["strict-transport-security"]
        answer = client.post(f"{proxied['https']}/graphql", json={"query": "{ me { id } }"})
        assert answer.json() == {"data": {"me": None}}


def test_nginx_refuses_bodies_over_one_mebibyte(proxied: dict[str, str]) -> None:
    body = b'{"query": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    with httpx.Client(verify=False, timeout=10) as client:
        answer = client.post(
            f"{proxied['https']}/graphql", content=body, headers={"Content-Type": "application/json"}
        )
    assert answer.status_code == 413


def test_nginx_upgrades_graphql_to_a_websocket(proxied: dict[str, str]) -> None:
    from websockets.sync.client import connect

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    url = proxied["https"].replace("https://", "wss://") + "/graphql"
    # when the handshake goes through nginx
    with connect(url, ssl=context, subprotocols=["graphql-transport-ws"], open_timeout=10) as ws:
        # then the app itself accepted the upgrade and its subprotocol
        assert ws.subprotocol == "graphql-transport-ws"
        assert ws.response.status_code == 101


# ------------------------------------------------------------------------------------------- systemd


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # given the units with /opt/aicli-web moved under tmp_path, where their commands exist
    opt = tmp_path / "opt"
    for command in (".venv/bin/aicli-api", "scripts/backup.sh"):
        (opt / command).parent.mkdir(parents=True, exist_ok=True)
        (opt / command).write_text("#!/bin/sh\n")
        (opt / command).chmod(0o755)
    units = sorted((DEPLOY / "systemd").iterdir())
    assert {u.name for u in units} >= {"aicli-web.service", "aicli-web-worker.service"}
    for unit in units:
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/aicli-web", str(opt)))
    # when
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / u.name) for u in units)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # then: no error and no warning (unknown keys and bad values are only warnings)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_systemd_units_run_the_right_commands_hardened() -> None:
    api = (DEPLOY / "systemd" / "aicli-web.service").read_text()
    worker = (DEPLOY / "systemd" / "aicli-web-worker.service").read_text()
    assert "ExecStart=/opt/aicli-web/.venv/bin/aicli-api serve" in api
    assert "ExecStart=/opt/aicli-web/.venv/bin/aicli-api worker" in worker
    for unit in (api, worker):
        for option in ("User=aicli", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                       "PrivateTmp=yes", "CapabilityBoundingSet=", "SystemCallFilter=@system-service"):  # fmt: skip
            assert f"\n{option}\n" in unit, option
        # what bubblewrap needs for the agent sandbox (docs/operations.md, "The agent sandbox")
        for option in ("RestrictNamespaces=user mnt pid ipc uts net cgroup", "SystemCallFilter=@mount",
                       "ProtectKernelTunables=no", "ProtectKernelLogs=no"):  # fmt: skip
            assert f"\n{option}\n" in unit, option
        assert unit.index("SystemCallFilter=~@privileged") < unit.index("SystemCallFilter=@mount")  # re-adds


# ------------------------------------------------------------------------------------ compose, docker


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.prod.yml").read_text())


def test_compose_has_the_guides_services_with_healthchecks() -> None:
    services = compose()["services"]
    assert {"app", "worker", "migrate", "postgres", "redis", "nginx"} <= set(services)
    assert services["postgres"]["image"] == "postgres:15"
    assert services["redis"]["image"] == "redis:7"
    assert services["nginx"]["image"].startswith("nginx")
    assert set(services["nginx"]["ports"]) == {"80:80", "443:443"}
    assert services["app"]["ports"] == ["127.0.0.1:8080:8080"]
    for name in ("app", "worker", "postgres", "redis", "nginx"):
        check = services[name]["healthcheck"]
        assert check["test"] and not check.get("disable"), name
    assert "/health" in " ".join(services["app"]["healthcheck"]["test"])


def test_compose_runs_migrations_once_before_app_and_worker() -> None:
    services = compose()["services"]
    assert services["migrate"]["command"] == ["aicli-api", "migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("app", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["worker"]["command"] == ["aicli-api", "worker"]


def test_compose_reads_env_from_dot_env_and_mounts_files_that_exist() -> None:
    services = compose()["services"]
    for name in ("app", "worker", "migrate", "postgres", "redis"):
        assert services[name]["env_file"] == "../.env", name
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./") and not source.endswith(("ssl", "certbot-www")):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
        build = service.get("build")
        if build:
            dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
            assert dockerfile == DEPLOY / "Dockerfile"
            assert f" AS {build['target']}" in dockerfile.read_text(), name


def test_compose_config_validates_with_the_guides_env(tmp_path: Path) -> None:
    # given the guide's .env, as every compose service reads it
    env = clean_env(**guide_env())
    # when
    result = subprocess.run(
        [sys.executable, "-m", "aicm.cli", "--config-check", "--config", str(DEPLOY / "config.docker.yaml")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # then
    assert result.returncode == 0, result.stderr
    assert "env production" in result.stdout


def test_dockerfile_is_multi_stage_slim_non_root_with_a_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)", text, re.MULTILINE)
    assert [name for _, name in stages] == ["build", "base", "worker", "backup", "app"]
    assert all("slim" in image for image, _ in stages if not image.startswith(("base",)))
    final = text.split("FROM base AS app", 1)[1]
    assert "USER 10001:10001" in final
    assert "HEALTHCHECK" in final and "/health" in final
    assert 'CMD ["aicli-api", "serve"' in final
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), path


def test_the_images_can_sandbox_agents_and_the_worker_container_lets_bubblewrap_run() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    base = text.split("FROM ", 3)[2]  # the runtime base every image (app, worker, backup) builds on
    assert base.startswith("python:") and " AS base" in base.splitlines()[0]
    installed = set(re.findall(r"apt-get install -y --no-install-recommends ([^\\\n]+)", base)[0].split())
    assert {"git", "bubblewrap"} <= installed
    worker = compose()["services"]["worker"]
    assert {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"} <= set(
        worker["security_opt"]
    )
    assert "security_opt" not in compose()["services"]["app"]  # the API runs no agent here (embedded: false)
    config = yaml.safe_load((DEPLOY / "config.docker.yaml").read_text())
    assert config["runner"]["embedded"] is False
    doc = (ROOT / "docs" / "operations.md").read_text()
    assert "### The agent sandbox" in doc
    for needed in (
        "systempaths=unconfined",
        "kernel.apparmor_restrict_unprivileged_userns",
        "runner.sandbox: auto",
    ):
        assert needed in doc, needed


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".venv", "data", ".git", "config/config.yaml"} <= ignored


def test_healthcheck_probe_follows_the_servers_health(tmp_path: Path) -> None:
    probe = [sys.executable, str(DEPLOY / "healthcheck.py")]
    with serve(tmp_path, clean_env(APP_ENV="test")) as base:
        up = subprocess.run([*probe, "http", f"{base}/health"], capture_output=True, text=True, timeout=30)
    assert up.returncode == 0, up.stderr
    down = subprocess.run([*probe, "http", f"{base}/health"], capture_output=True, text=True, timeout=30)
    assert down.returncode == 1
    assert "unhealthy" in down.stderr


def test_healthcheck_deps_probe_reaches_the_configured_database(tmp_path: Path) -> None:
    probe = [sys.executable, str(DEPLOY / "healthcheck.py"), "deps"]
    closed = f"postgres://aicm:s3cret-pw@127.0.0.1:{free_port()}/aicm"
    # given a database nobody listens for
    result = subprocess.run(
        probe, cwd=tmp_path, env=clean_env(DATABASE_URL=closed), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert "database" in result.stderr and "s3cret-pw" not in result.stderr
    # given the embedded default: nothing to reach
    result = subprocess.run(probe, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------- make


def test_makefile_has_every_target_the_guide_names() -> None:
    result = make("-n", *GUIDE_MAKE_TARGETS)
    assert "No rule to make target" not in result.stderr


def test_make_config_validate_accepts_the_guides_config_and_env() -> None:
    result = make("config-validate", "CONFIG=config/config.example.yaml", env=clean_env(**guide_env()))
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout and "env production" in result.stdout


def test_make_config_validate_reports_problems_with_their_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: 0\n")
    result = make("config-validate", f"CONFIG={bad}")
    assert result.returncode != 0
    assert "server.port" in result.stderr


def test_make_env_check_passes_with_the_guides_env_and_prints_no_values() -> None:
    env = guide_env()
    result = make("env-check", "CONFIG=config/config.example.yaml", env=clean_env(**env))
    assert result.returncode == 0, result.stderr
    for name in env:
        assert re.search(rf"^\s+set\s+{name}\b", result.stdout, re.MULTILINE), name
    for name, value in env.items():
        if name not in ("APP_ENV", "LOG_LEVEL"):
            assert value not in result.stdout + result.stderr, name


def test_env_check_names_the_missing_variables(tmp_path: Path) -> None:
    # given the guide's env without two of its variables
    env = guide_env()
    del env["GOOGLE_CLIENT_ID"], env["JWT_SECRET"]
    # when
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "env_check.py"), "--config", str(ROOT / "config" / "config.example.yaml")],
        cwd=tmp_path, env=clean_env(**env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # then
    assert result.returncode == 1
    assert re.search(r"MISSING\s+GOOGLE_CLIENT_ID\s+required by oauth.google.client_id", result.stderr)
    assert re.search(r"MISSING\s+JWT_SECRET", result.stderr)
    assert "2 required variable(s) missing or empty" in result.stderr


def test_env_check_fails_on_an_empty_required_variable_as_the_config_check_does(tmp_path: Path) -> None:
    # given the guide's env with an OAuth client id present but empty
    env = guide_env() | {"GITHUB_CLIENT_ID": ""}
    config = str(ROOT / "config" / "config.example.yaml")
    # when
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "env_check.py"), "--config", config],
        cwd=tmp_path, env=clean_env(**env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # then it fails like --config-check, naming the variable
    assert result.returncode == 1
    assert re.search(r"EMPTY\s+GITHUB_CLIENT_ID\s+required by oauth.github.client_id", result.stderr)
    assert "OK" not in result.stdout + result.stderr
    check = subprocess.run(
        [sys.executable, "-m", "aicm.cli", "--config-check", "--config", config],
        cwd=tmp_path, env=clean_env(**env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 1 and "oauth.github.client_id" in check.stderr


def test_env_check_reads_dot_env_and_needs_a_production_jwt_secret(tmp_path: Path) -> None:
    # given no config file, production, and a short secret in .env
    (tmp_path / ".env").write_text("APP_ENV=production\nJWT_SECRET=too-short\n")
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "env_check.py")],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert re.search(r"set\s+JWT_SECRET.*shorter than 32 characters.*\[\.env\]", result.stderr)
    assert "too-short" not in result.stderr


def test_make_env_check_passes_for_the_embedded_default(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "env_check.py")],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "built-in defaults" in result.stdout


def test_make_test_integration_explains_what_it_needs() -> None:
    result = make("test-integration", env=clean_env())
    assert result.returncode != 0
    assert "AICM_TEST_DATABASE_URL" in result.stderr


def test_the_test_prerequisites_check_names_what_is_missing(tmp_path: Path) -> None:
    # given no service URLs and a PATH without the tools
    empty = tmp_path / "bin"
    empty.mkdir()
    script = [shutil.which("bash") or "/bin/bash", str(ROOT / "scripts" / "test_prerequisites.sh")]

    def check(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            script, env={"PATH": str(empty), **env}, capture_output=True, text=True, timeout=30
        )

    # when / then: a note, and the suite still runs
    told = check()
    assert told.returncode == 0
    assert "AICM_TEST_DATABASE_URL" in told.stdout and "promtool (apt-get install prometheus" in told.stdout
    assert "redis-server (apt-get install redis-server" in told.stdout
    # with the services required, the same list stops it
    required = check(AICM_REQUIRE_SERVICES="1")
    assert required.returncode == 2
    assert "promtool" in required.stderr and "AICM_TEST_REDIS_URL" in required.stderr
    # and with everything there, silence
    everything = check(
        AICM_TEST_DATABASE_URL="postgres://x", AICM_TEST_REDIS_URL="redis://x", PATH=os.environ["PATH"]
    )
    if everything.stdout:  # this machine lacks a tool: it is the only thing named
        assert "AICM_TEST" not in everything.stdout


def test_make_build_writes_a_wheel_an_sdist_and_the_guides_launcher(tmp_path: Path) -> None:
    # when
    result = make("build", f"DIST={tmp_path}", timeout=600)
    # then
    assert result.returncode == 0, result.stdout + result.stderr
    built = sorted(p.name for p in tmp_path.iterdir())
    assert any(n.endswith(".whl") for n in built) and any(n.endswith(".tar.gz") for n in built), built
    # both carry the migrations (tests/test_wheel.py installs a wheel and runs it)
    with tarfile.open(next(tmp_path.glob("*.tar.gz"))) as sdist:
        names = sdist.getnames()
    assert any(n.endswith("/migrations/models/0_init.py") for n in names), names
    with zipfile.ZipFile(next(tmp_path.glob("*.whl"))) as wheel:
        assert "aicm/migrations/models/0_init.py" in wheel.namelist()
    version = subprocess.run(
        [str(ROOT / "bin" / "aicli-api"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0, version.stderr
    assert "1.0.0" in version.stdout


# ---------------------------------------------------------------------------------------------- docs


def test_operations_doc_names_only_make_targets_files_and_commands_that_exist() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    shell, fence = [], None
    for line in doc.splitlines():
        if line.strip().startswith("```"):
            fence = line.strip()[3:] if fence is None else None
        elif fence in ("sh", "bash", "console", "") and not line.lstrip().startswith("#"):
            shell.append(re.split(r"\s#\s", line, maxsplit=1)[0])  # without the comment
    blocks = "\n".join(shell)
    # `make X` where make is the command: at a line's start, after &&, after sudo -u U, or after VAR=value
    invoked = re.findall(r"(?:^\s*|&&\s*|sudo -u \w+ |=\S+ )make ([a-z][a-z-]+)", blocks, re.MULTILINE)
    assert {"build", "migrate", "config-validate", "env-check", "test-integration"} <= set(invoked)
    dry = make("-n", *sorted(set(invoked)))
    assert "No rule to make target" not in dry.stderr, dry.stderr
    for path in set(re.findall(r"(?<![\w/.-])((?:scripts|deploy|config|docs)/[\w./-]+\w)", doc)):
        if not path.startswith("config/config.yaml"):
            assert (ROOT / path).exists(), path
    commands = {"serve", "migrate", "create-admin", "worker"}
    for used in re.findall(r"aicli-api ([a-z][a-z-]+)", blocks):
        assert used in commands, used


def test_env_check_requires_the_encryption_key_in_production(tmp_path: Path) -> None:
    # given the guide's env (production) without the key --config-check would refuse to run without
    env = guide_env()
    del env["AICM_ENCRYPTION_KEY"]
    # when
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "env_check.py"), "--config", str(ROOT / "config" / "config.example.yaml")],
        cwd=tmp_path, env=clean_env(**env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # then
    assert result.returncode == 1
    assert re.search(r"MISSING\s+AICM_ENCRYPTION_KEY\s+required by security.encryption_key", result.stderr)
