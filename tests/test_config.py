"""Configuration loading: the guide's config.yaml, ${VAR} expansion, env overrides, validation."""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from pathlib import Path

import pytest
import yaml

from aicm.config import (
    DURATION_FIELDS,
    SIZE_FIELDS,
    ConfigError,
    DatabaseConfig,
    RedisConfig,
    Settings,
    load_settings,
    resolve_config_path,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
GUIDE_YAML = FIXTURES / "guide-config.yaml"
EXAMPLE_YAML = ROOT / "config" / "config.example.yaml"


def _guide_env() -> dict[str, str]:
    lines = GUIDE_YAML.with_name("guide.env").read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


GUIDE_ENV = _guide_env()
# The guide predates repository credentials; production also needs their key (security.encryption_key).
GUIDE_PRODUCTION_ENV = {**GUIDE_ENV, "AICM_ENCRYPTION_KEY": "k" * 43}


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str = "", environ: dict[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, text), environ=environ or {}, cwd=tmp_path)


def problems_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ)
    return info.value.problems


# --------------------------------------------------------------------------- the guide's config


def test_guide_env_fixture_has_the_guide_variables():
    assert GUIDE_ENV["JWT_SECRET"] == "your_super_secret_jwt_key_at_least_32_characters"
    assert GUIDE_ENV["APP_ENV"] == "production"
    assert len(GUIDE_ENV) == 9


def assert_guide_values(s: Settings) -> None:
    assert s.app.env == "production" and s.is_production
    assert (s.server.host, s.server.port) == ("0.0.0.0", 8080)
    assert (s.server.read_timeout, s.server.write_timeout, s.server.idle_timeout) == (30.0, 30.0, 120.0)
    assert s.server.max_header_bytes == 1_048_576
    db = s.database
    assert (db.driver, db.host, db.port, db.name, db.user) == (
        "postgres",
        "localhost",
        5432,
        "aicli_web",
        "aicli_user",
    )
    assert db.password == "your_secure_database_password"
    assert (db.ssl_mode, db.max_open_conns, db.max_idle_conns, db.conn_max_lifetime) == (
        "require",
        25,
        5,
        300.0,
    )
    assert db.dsn == "postgres://aicli_user:your_secure_database_password@localhost:5432/aicli_web"
    assert not db.is_sqlite
    assert s.redis.addr == "localhost:6379" and s.redis.password == "your_secure_redis_password"
    assert (s.redis.db, s.redis.max_retries, s.redis.pool_size, s.redis.min_idle_conns) == (0, 3, 10, 2)
    assert s.redis.enabled and s.redis.dsn == "redis://:your_secure_redis_password@localhost:6379/0"
    assert s.jwt.secret == "your_super_secret_jwt_key_at_least_32_characters"
    assert s.jwt.access_token_duration == 900.0
    assert s.jwt.refresh_token_duration == 86_400.0
    assert s.jwt.issuer == "aicli-web"
    assert set(s.oauth) == {"google", "github"}
    assert s.oauth["google"].client_id == "your_google_client_id"
    assert s.oauth["google"].client_secret == "your_google_client_secret"
    assert s.oauth["github"].client_id == "your_github_client_id"
    assert s.oauth["github"].redirect_url == "https://your-domain.com/auth/oauth/github/callback"
    rl, cors = s.security.rate_limit, s.security.cors
    assert (rl.requests_per_second, rl.burst_size, rl.window_size) == (100.0, 200, 60.0)
    assert cors.allowed_origins == ["https://your-domain.com"]
    assert cors.allowed_methods == ["GET", "POST", "PUT", "DELETE", "OPTIONS"]
    assert cors.max_age == 86_400
    assert (s.logging.level, s.logging.format, s.logging.output) == ("info", "json", "stdout")
    assert s.logging.file.enabled and s.logging.file.path == "/var/log/aicli-web/app.log"
    assert (s.logging.file.max_size, s.logging.file.max_backups, s.logging.file.max_age) == (100, 10, 30)
    assert s.monitoring.metrics.path == "/metrics" and s.monitoring.health.path == "/health"
    # production turns these off unless set explicitly
    assert not s.auto_migrate and not s.introspection_enabled and not s.graphiql_enabled


def test_guide_yaml_loads_with_guide_environment(tmp_path):
    s = load_settings(GUIDE_YAML, environ=GUIDE_PRODUCTION_ENV, cwd=tmp_path)
    assert_guide_values(s)
    assert s.config_path == GUIDE_YAML


def test_guide_yaml_loads_with_guide_dotenv_file(tmp_path):
    (tmp_path / ".env").write_text((FIXTURES / "guide.env").read_text(encoding="utf-8"), encoding="utf-8")
    environ = {"AICM_ENCRYPTION_KEY": "k" * 43}  # see GUIDE_PRODUCTION_ENV
    assert_guide_values(load_settings(GUIDE_YAML, environ=environ, cwd=tmp_path))


def test_guide_yaml_without_its_variables_lists_each_one(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(GUIDE_YAML, environ={}, cwd=tmp_path)
    problems = info.value.problems
    for path, var in [
        ("database.password", "DATABASE_PASSWORD"),
        ("redis.password", "REDIS_PASSWORD"),
        ("jwt.secret", "JWT_SECRET"),
        ("oauth.google.client_id", "GOOGLE_CLIENT_ID"),
        ("oauth.google.client_secret", "GOOGLE_CLIENT_SECRET"),
        ("oauth.github.client_id", "GITHUB_CLIENT_ID"),
        ("oauth.github.client_secret", "GITHUB_CLIENT_SECRET"),
    ]:
        assert f"{path}: environment variable {var} is not set" in problems
    assert len(problems) == 7  # no pile-up on the same keys (e.g. an empty client_id)
    assert str(info.value) == "\n".join(problems)


# --------------------------------------------------------------------------- .env and ${VAR}


def test_environment_wins_over_dotenv(tmp_path):
    (tmp_path / ".env").write_text("NAME=from-dotenv\nOTHER=dotenv-only\n", encoding="utf-8")
    s = load(tmp_path, "app:\n  data_dir: ${NAME}/${OTHER}\n", {"NAME": "from-env"})
    assert s.app.data_dir == "from-env/dotenv-only"


def test_dotenv_syntax(tmp_path):
    (tmp_path / ".env").write_text(
        textwrap.dedent(
            """\
            # a comment

            export A=plain
            B="double quoted # not a comment"
            C='single quoted'
            D=value # trailing comment
            E=
            """
        ),
        encoding="utf-8",
    )
    s = load(tmp_path, "runner:\n  env: {A: '${A}', B: '${B}', C: '${C}', D: '${D}', E: '${E}'}\n")
    assert s.runner.env == {
        "A": "plain",
        "B": "double quoted # not a comment",
        "C": "single quoted",
        "D": "value",
        "E": "",
    }


def test_dotenv_bad_line_is_a_problem(tmp_path):
    (tmp_path / ".env").write_text("GOOD=1\nthis is not an assignment\n", encoding="utf-8")
    assert problems_of(tmp_path, "") == [".env: line 2: expected KEY=VALUE"]


def test_dotenv_feeds_overrides(tmp_path):
    (tmp_path / ".env").write_text("APP_ENV=test\nLOG_LEVEL=debug\n", encoding="utf-8")
    s = load_settings(None, environ={}, cwd=tmp_path)
    assert (s.app.env, s.logging.level) == ("test", "debug")


def test_default_syntax(tmp_path):
    text = """
    server:
      host: "${HOST:-0.0.0.0}"
      port: "${PORT:-9000}"
    app:
      data_dir: "${EMPTY:-fallback}"
    """
    s = load(tmp_path, text, {"EMPTY": ""})
    assert (s.server.host, s.server.port, s.app.data_dir) == ("0.0.0.0", 9000, "fallback")
    s = load(tmp_path, text, {"HOST": "10.1.2.3", "PORT": "7000", "EMPTY": "x"})
    assert (s.server.host, s.server.port, s.app.data_dir) == ("10.1.2.3", 7000, "x")


def test_unset_variable_is_a_problem_at_its_key_path(tmp_path):
    problems = problems_of(tmp_path, "oauth:\n  google:\n    client_id: ${GOOGLE_CLIENT_ID}\n")
    assert problems == ["oauth.google.client_id: environment variable GOOGLE_CLIENT_ID is not set"]


def test_unset_variable_in_a_list_names_the_index(tmp_path):
    problems = problems_of(tmp_path, "security:\n  cors:\n    allowed_origins: [https://a.example, '${O}']\n")
    assert problems == ["security.cors.allowed_origins[1]: environment variable O is not set"]


def test_set_but_empty_variable_is_fine(tmp_path):
    s = load(tmp_path, "database:\n  password: ${DATABASE_PASSWORD}\n", {"DATABASE_PASSWORD": ""})
    assert s.database.password == ""


def test_expansion_never_changes_the_yaml_structure(tmp_path):
    tricky = 'p@ss: "word"\n  injected: true # {x}'
    s = load(tmp_path, "database:\n  password: ${P}\n", {"P": tricky})
    assert s.database.password == tricky


def test_expanded_strings_convert_to_numbers_and_booleans(tmp_path):
    env = {"PORT": "8443", "RPS": "12.5", "CRED": "true", "DUR": "2h"}
    text = """
    server: {port: "${PORT}"}
    security:
      rate_limit: {requests_per_second: "${RPS}"}
      cors: {allow_credentials: "${CRED}"}
    jwt: {refresh_token_duration: "${DUR}"}
    """
    s = load(tmp_path, text, env)
    assert s.server.port == 8443
    assert s.security.rate_limit.requests_per_second == 12.5
    assert s.security.cors.allow_credentials is True
    assert s.jwt.refresh_token_duration == 7200.0


def test_override_hides_an_unset_variable_at_the_same_key(tmp_path):
    s = load(tmp_path, "jwt:\n  secret: ${MISSING}\n", {"JWT_SECRET": "s" * 40})
    assert s.jwt.secret == "s" * 40


# --------------------------------------------------------------------------- environment overrides


@pytest.mark.parametrize(
    ("var", "value", "attr", "expected"),
    [
        ("DATABASE_URL", "postgres://u:p@db:5432/x", ("database", "url"), "postgres://u:p@db:5432/x"),
        ("REDIS_URL", "redis://cache:6379/1", ("redis", "url"), "redis://cache:6379/1"),
        ("JWT_SECRET", "k" * 32, ("jwt", "secret"), "k" * 32),
        ("APP_ENV", "test", ("app", "env"), "test"),
        ("LOG_LEVEL", "DEBUG", ("logging", "level"), "debug"),
        ("LOG_LEVEL", "warn", ("logging", "level"), "warning"),
    ],
)
def test_env_override_wins_over_file(tmp_path, var, value, attr, expected):
    text = """
    app: {env: development}
    database: {url: "sqlite://file.db"}
    redis: {url: "redis://file:6379/0"}
    jwt: {secret: "from-file"}
    logging: {level: error}
    """
    s = load(tmp_path, text, {var: value})
    section, key = attr
    assert getattr(getattr(s, section), key) == expected


def test_overrides_apply_without_a_config_file(tmp_path):
    env = {"DATABASE_URL": "sqlite://:memory:", "REDIS_URL": "redis://r:6379/2", "APP_ENV": "test"}
    s = load_settings(environ=env, cwd=tmp_path)
    assert s.database.dsn == "sqlite://:memory:" and s.database.is_sqlite
    assert s.redis.dsn == "redis://r:6379/2" and s.redis.enabled
    assert s.app.env == "test" and s.config_path is None


@pytest.mark.parametrize("var", ["DATABASE_URL", "REDIS_URL", "JWT_SECRET", "APP_ENV", "LOG_LEVEL"])
def test_empty_override_counts_as_unset(tmp_path, var):
    text = "app: {env: test}\ndatabase: {url: 'sqlite://f.db'}\nredis: {url: 'redis://f'}\njwt: {secret: f}\n"
    text += "logging: {level: error}\n"
    s = load(tmp_path, text, {var: ""})
    assert (s.app.env, s.database.url, s.redis.url, s.jwt.secret, s.logging.level) == (
        "test",
        "sqlite://f.db",
        "redis://f",
        "f",
        "error",
    )


def test_bad_override_value_is_reported_at_its_key(tmp_path):
    problems = problems_of(tmp_path, "", {"APP_ENV": "staging", "LOG_LEVEL": "loud"})
    assert "app.env: expected one of development, test, production, got 'staging'" in problems
    assert "logging.level: expected one of debug, info, warning, error, got 'loud'" in problems


# --------------------------------------------------------------------------- conversion


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("15m", 900.0),
        ("24h", 86_400.0),
        ("300s", 300.0),
        ("500ms", 0.5),
        ("1h30m", 5400.0),
        ("7d", 604_800.0),
        ("1.5s", 1.5),
        ("45", 45.0),
        ("'45'", 45.0),
        ("2.5", 2.5),
    ],
)
def test_duration_forms(tmp_path, text, seconds):
    assert load(tmp_path, f"server:\n  read_timeout: {text}\n").server.read_timeout == seconds


@pytest.mark.parametrize("text", ["soon", "15 minutes", "1x", "m", "-5s", "true", "[1]"])
def test_bad_durations(tmp_path, text):
    problems = problems_of(tmp_path, f"jwt:\n  access_token_duration: {text}\n")
    assert len(problems) == 1
    assert problems[0].startswith("jwt.access_token_duration: expected a duration like 30s, 15m or 24h, got ")


def test_every_duration_field_is_a_float_field():
    for key_path in DURATION_FIELDS:
        *sections, key = key_path.split(".")
        cls = Settings
        for section in sections:
            cls = typing.get_type_hints(cls)[section]
        assert typing.get_type_hints(cls)[key] in (float, float | None), key_path


def test_every_size_field_is_an_int_field():
    for key_path in SIZE_FIELDS:
        *sections, key = key_path.split(".")
        cls = Settings
        for section in sections:
            cls = typing.get_type_hints(cls)[section]
        assert typing.get_type_hints(cls)[key] in (int, int | None), key_path


def test_runner_sandbox_and_limits_defaults(tmp_path):
    runner = load(tmp_path, "").runner
    assert (runner.sandbox, runner.network, runner.agent_cli) == ("auto", True, "claude")
    assert load(tmp_path, "runner: {agent_cli: generic}\n").runner.agent_cli == "generic"
    assert (runner.sandbox_paths.read_only, runner.sandbox_paths.read_write, runner.sandbox_paths.hidden) == (
        [],
        [],
        [],
    )
    limits = runner.limits
    assert (limits.memory, limits.processes, limits.file_size) == (4 * 1024**3, 256, 1024**3)
    assert (limits.output_bytes, limits.line_bytes, limits.cpu_time) == (64 * 1024**2, 1024**2, 7200.0)


def test_runner_limits_take_sizes_and_durations_and_null_turns_one_off(tmp_path):
    text = """
    runner:
      sandbox: none
      sandbox_paths: {read_only: [/opt/tools], read_write: [/srv/cache], hidden: [/srv/secret]}
      limits: {memory: 512MiB, processes: null, file_size: 2GB, output_bytes: 1048576, line_bytes: 64KiB,
               cpu_time: 1h30m}
    """
    runner = load(tmp_path, text).runner
    assert runner.sandbox == "none"
    assert runner.sandbox_paths.read_only == ["/opt/tools"] and runner.sandbox_paths.hidden == ["/srv/secret"]
    limits = runner.limits
    assert (limits.memory, limits.processes, limits.file_size) == (512 * 1024**2, None, 2 * 1000**3)
    assert (limits.output_bytes, limits.line_bytes, limits.cpu_time) == (1024**2, 64 * 1024, 5400.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("runner: {sandbox: docker}", "runner.sandbox: expected one of auto, bubblewrap, none, got 'docker'"),
        ("runner: {limits: {memory: 4 gigs}}", "runner.limits.memory: expected a size like 4GiB"),
        ("runner: {limits: {memory: true}}", "runner.limits.memory: expected a size like 4GiB"),
        ("runner: {limits: {cpu_time: soon}}", "runner.limits.cpu_time: expected a duration like 30s"),
        ("runner: {limits: {processes: 0}}", "runner.limits.processes: must be at least 1, got 0"),
        ("runner: {limits: {line_bytes: 0B}}", "runner.limits.line_bytes: must be at least 1, got 0"),
        ("runner: {sandbox: none, network: false}", "runner.network: false needs the sandbox"),
        ("runner: {sandbox_paths: {secret: [/x]}}", "runner.sandbox_paths.secret: unknown key"),
        ("runner: {agent_cli: codex}", "runner.agent_cli: expected one of claude, generic, got 'codex'"),
    ],
)
def test_bad_runner_sandbox_and_limits(tmp_path, text, expected):
    problems = problems_of(tmp_path, text + "\n")
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_conversion_error_messages(tmp_path):
    text = """
    server: {port: abc, workers: 1.5}
    jwt: {access_token_duration: soon}
    security:
      cors: {allow_credentials: maybe, allowed_methods: GET}
      rate_limit: {requests_per_second: fast}
    database: {password: [1, 2]}
    runner: {env: {A: [x]}, command: [claude, {x: 1}]}
    """
    problems = problems_of(tmp_path, text)
    assert sorted(problems) == sorted(
        [
            "server.port: expected an integer, got 'abc'",
            "server.workers: expected an integer, got 1.5",
            "jwt.access_token_duration: expected a duration like 30s, 15m or 24h, got 'soon'",
            "security.cors.allow_credentials: expected true or false, got 'maybe'",
            "security.cors.allowed_methods: expected a list, got 'GET'",
            "security.rate_limit.requests_per_second: expected a number, got 'fast'",
            "database.password: expected a string, got [1, 2]",
            "runner.env.A: expected a string, got ['x']",
            "runner.command[1]: expected a string, got {'x': 1}",
        ]
    )


def test_scalar_numbers_become_strings_and_null_keeps_the_default(tmp_path):
    s = load(tmp_path, "database: {password: 12345, host: }\nrunner: {env: {N: 1}}\n")
    assert s.database.password == "12345"
    assert s.database.host == "localhost"
    assert s.runner.env == {"N": "1"}


def test_optional_booleans(tmp_path):
    s = load(tmp_path, "database: {auto_migrate: false}\ngraphql: {introspection: true, graphiql: null}\n")
    assert s.database.auto_migrate is False and not s.auto_migrate
    assert s.graphql.introspection is True and s.introspection_enabled
    assert s.graphql.graphiql is None and s.graphiql_enabled


def test_production_turns_off_introspection_unless_set_explicitly(tmp_path):
    env = {"APP_ENV": "production", "JWT_SECRET": "x" * 32, "AICM_ENCRYPTION_KEY": "e" * 32}
    s = load(tmp_path, "graphql: {introspection: true}\n", env)
    assert s.introspection_enabled and not s.graphiql_enabled and not s.auto_migrate


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("server:\n  bogus: 1\n", "server.bogus: unknown key"),
        ("bogus: {}\n", "bogus: unknown key"),
        ("security:\n  cors:\n    allowed_origin: []\n", "security.cors.allowed_origin: unknown key"),
        ("logging:\n  file:\n    maxsize: 1\n", "logging.file.maxsize: unknown key"),
        (
            "oauth:\n  google:\n    client_id: x\n    clientsecret: y\n",
            "oauth.google.clientsecret: unknown key",
        ),
        ("config_path: /x\n", "config_path: unknown key"),
        ("server: 8080\n", "server: expected a mapping, got 8080"),
        ("oauth: [google]\n", "oauth: expected a mapping, got ['google']"),
    ],
)
def test_unknown_keys_and_wrong_shapes(tmp_path, text, problem):
    assert problem in problems_of(tmp_path, text)


def test_oauth_provider_names_are_free(tmp_path):
    text = """
    oauth:
      keycloak:
        client_id: abc
        server_metadata_url: https://sso.example.com/.well-known/openid-configuration
        scopes: [openid, email]
    """
    s = load(tmp_path, text)
    assert s.oauth["keycloak"].scopes == ["openid", "email"]


def test_empty_sections_keep_defaults(tmp_path):
    s = load(tmp_path, "server:\noauth:\n# all providers commented out\n")
    assert s.server.port == 8080 and s.oauth == {}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "server: [1, 2\n",
            "is not valid YAML (line 2, column 1): while parsing a flow sequence expected ','",
        ),
        ("- a\n- b\n", "must hold a mapping of sections, got a list"),
        ("just a string\n", "must hold a mapping of sections, got a str"),
    ],
)
def test_file_level_problems_name_the_file(tmp_path, text, problem):
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].startswith("config: ") and problem in problems[0]
    assert str(tmp_path / "config.yaml") in problems[0]


def test_empty_file_is_all_defaults(tmp_path):
    assert load(tmp_path, "").server.port == 8080


# --------------------------------------------------------------------------- validation

VALIDATION_CASES = [
    ("app: {env: staging}", "app.env: expected one of development, test, production, got 'staging'"),
    ("server: {port: 0}", "server.port: must be between 1 and 65535"),
    ("server: {port: 70000}", "server.port: must be between 1 and 65535"),
    ("server: {read_timeout: 0}", "server.read_timeout: must be greater than 0"),
    ("server: {write_timeout: -1}", "server.write_timeout: must be greater than 0"),
    ("server: {idle_timeout: 0s}", "server.idle_timeout: must be greater than 0"),
    ("database: {conn_max_lifetime: 0}", "database.conn_max_lifetime: must be greater than 0"),
    ("jwt: {access_token_duration: 0}", "jwt.access_token_duration: must be greater than 0"),
    ("jwt: {refresh_token_duration: 0m}", "jwt.refresh_token_duration: must be greater than 0"),
    ("auth: {lockout_duration: 0}", "auth.lockout_duration: must be greater than 0"),
    ("runner: {timeout: 0}", "runner.timeout: must be greater than 0"),
    ("server: {workers: 0}", "server.workers: must be at least 1"),
    ("server: {trusted_proxies: [not-an-ip]}", "server.trusted_proxies[0]: expected an IP address or CIDR"),
    ("database: {driver: mysql}", "database.driver: expected one of sqlite, postgres, got 'mysql'"),
    ("database: {ssl_mode: maybe}", "database.ssl_mode: expected one of disable, allow, prefer, require"),
    ("database: {url: 'mysql://u:secret@h/db'}", "database.url: must start with sqlite://"),
    ("redis: {url: 'http://cache'}", "redis.url: must start with redis://, rediss://, unix://"),
    ("redis: {db: -1}", "redis.db: must be at least 0"),
    ("database: {max_open_conns: 0}", "database.max_open_conns: must be at least 1"),
    ("redis: {pool_size: 0}", "redis.pool_size: must be at least 1"),
    ("jwt: {algorithm: HS512}", "jwt.algorithm: expected one of HS256, RS256, ES256, got 'HS512'"),
    ("jwt: {algorithm: RS256}", "jwt.private_key_file: required when jwt.algorithm is RS256"),
    (
        "jwt: {algorithm: ES256, private_key_file: k.pem}",
        "jwt.public_key_file: required when jwt.algorithm is ES256",
    ),
    ("logging: {level: loud}", "logging.level: expected one of debug, info, warning, error, got 'loud'"),
    ("logging: {format: xml}", "logging.format: expected one of json, text, got 'xml'"),
    ("logging: {output: file}", "logging.output: expected one of stdout, stderr, got 'file'"),
    ("logging: {file: {max_size: 0}}", "logging.file.max_size: must be at least 1"),
    ("logging: {file: {max_backups: 0}}", "logging.file.max_backups: must be at least 1"),
    ("logging: {file: {max_age: 0}}", "logging.file.max_age: must be at least 1"),
    ("monitoring: {metrics: {path: metrics}}", "monitoring.metrics.path: must start with '/'"),
    ("monitoring: {health: {path: health}}", "monitoring.health.path: must start with '/'"),
    ("monitoring: {metrics: {bearer_token: short}}", "monitoring.metrics.bearer_token: must be at least 16"),
    (
        "monitoring: {metrics: {allowed_ips: ['10.0.0.0/8', 'intranet']}}",
        "monitoring.metrics.allowed_ips[1]: expected an IP address or CIDR, got 'intranet'",
    ),
    (
        "security: {rate_limit: {requests_per_second: 0}}",
        "security.rate_limit.requests_per_second: must be greater",
    ),
    ("security: {rate_limit: {burst_size: 0}}", "security.rate_limit.burst_size: must be greater than 0"),
    ("security: {rate_limit: {window_size: 0}}", "security.rate_limit.window_size: must be greater than 0"),
    ("security: {cors: {max_age: -1}}", "security.cors.max_age: must be at least 0"),
    (
        "security: {cors: {allowed_origins: [example.com]}}",
        "security.cors.allowed_origins[0]: expected '*' or",
    ),
    ("security: {cors: {allowed_origins: ['https://a.example/']}}", "security.cors.allowed_origins[0]"),
    (
        "security: {cors: {allowed_origins: ['*'], allow_credentials: true}}",
        "security.cors.allow_credentials: cannot be true when allowed_origins contains '*'",
    ),
    ("auth: {max_failed_logins: 0}", "auth.max_failed_logins: must be at least 1"),
    ("auth: {max_sessions_per_user: 0}", "auth.max_sessions_per_user: must be at least 1"),
    ("runner: {command: []}", "runner.command: must be a non-empty list of strings"),
    ("runner: {command: ['']}", "runner.command: must be a non-empty list of strings"),
    ("runner: {command: claude}", "runner.command: expected a list, got 'claude'"),
    ("runner: {max_concurrent: 0}", "runner.max_concurrent: must be at least 1"),
    ("runner: {embedded: false}", "runner.embedded: false needs Redis"),
    ("runner: {env: {A: [1]}}", "runner.env.A: expected a string"),
    ("graphql: {max_depth: 0}", "graphql.max_depth: must be at least 1"),
    ("graphql: {max_aliases: 0}", "graphql.max_aliases: must be at least 1"),
    ("graphql: {max_tokens: 0}", "graphql.max_tokens: must be at least 1"),
    ("graphql: {max_body_bytes: 0}", "graphql.max_body_bytes: must be at least 1"),
    ("graphql: {max_cost: 0}", "graphql.max_cost: must be at least 1"),
    ("graphql: {persisted_queries: always}", "graphql.persisted_queries: expected one of off, apq, safelist"),
    ("graphql: {persisted_queries: safelist}", "graphql.persisted_queries_manifest: required when"),
    (
        "graphql: {persisted_queries_manifest: /nonexistent/manifest.json}",
        "graphql.persisted_queries_manifest: file not found",
    ),
    ("graphql: {persisted_queries_ttl: 0}", "graphql.persisted_queries_ttl: must be greater than 0"),
    (
        "graphql: {persisted_queries_cache_size: 0}",
        "graphql.persisted_queries_cache_size: must be at least 1",
    ),
    (
        "security: {rate_limit: {auth_requests_per_minute: 0}}",
        "security.rate_limit.auth_requests_per_minute: must be greater than 0",
    ),
    ("security: {rate_limit: {auth_burst_size: 0}}", "security.rate_limit.auth_burst_size: must be greater"),
    ("security: {hsts: {max_age: -1}}", "security.hsts.max_age: must be at least 0"),
    ("security: {refresh_cookie: {same_site: none}}", "security.refresh_cookie.same_site: expected one of"),
    ("oauth: {google: {client_secret: x}}", "oauth.google.client_id: must not be empty"),
    ("oauth: {okta: {client_id: x}}", "oauth.okta.server_metadata_url: required for providers other than"),
    (
        "oauth: {github: {client_id: x, token_url: 'github.example.com/token'}}",
        "oauth.github.token_url: expected an absolute http(s) URL, got 'github.example.com/token'",
    ),
    (
        "oauth: {okta: {client_id: x, server_metadata_url: 'ftp://sso.example/.well-known'}}",
        "oauth.okta.server_metadata_url: expected an absolute http(s) URL",
    ),
    (
        "oauth: {google: {client_id: x, redirect_url: '/cb'}}",
        "oauth.google.redirect_url: expected an absolute",
    ),
    ("auth: {frontend_url: 'app.example.com'}", "auth.frontend_url: expected an absolute URL"),
    (
        "auth: {frontend_url: 'https://app.example.com/#/login'}",
        "auth.frontend_url: must not contain a fragment",
    ),
]


@pytest.mark.parametrize(("text", "problem"), VALIDATION_CASES)
def test_validation_rule(tmp_path, text, problem):
    problems = problems_of(tmp_path, text + "\n")
    assert any(problem in p for p in problems), problems


def test_url_problems_never_echo_credentials(tmp_path):
    problems = problems_of(tmp_path, "database: {url: 'mysql://u:secret@h/db'}\n")
    assert problems == [
        "database.url: must start with sqlite://, postgres://, postgresql://, asyncpg://, got 'mysql://'"
    ]


@pytest.mark.parametrize(
    "text",
    [
        "security: {cors: {allowed_origins: ['*', 'https://a.example', 'http://localhost:3000', 'http://[::1]:8080']}}",
        "server: {trusted_proxies: ['10.0.0.0/8', '127.0.0.1', '::1', '*']}",
        "jwt: {algorithm: RS256, private_key_file: priv.pem, public_key_file: pub.pem}",
        "logging: {level: WARNING}",
        "database: {url: 'postgresql://u@h/db'}",
        "redis: {url: 'unix:///run/redis.sock'}",
        "oauth: {github: {client_id: x}}",
        "oauth: {github: {client_id: x, authorize_url: 'https://ghe.example/login/oauth/authorize', token_url: 'https://ghe.example/login/oauth/access_token', api_base_url: 'https://ghe.example/api/v3/'}}",
        "oauth: {dev: {client_id: x, server_metadata_url: 'http://127.0.0.1:5556/.well-known/openid-configuration'}}",
        "auth: {frontend_url: 'https://app.example.com/signed-in'}",
        "auth: {frontend_url: 'aicm-app://oauth'}",
        "monitoring: {metrics: {bearer_token: 'a-scrape-token-of-32-characters!', allowed_ips: ['10.0.0.0/8', '::1']}}",
    ],
)
def test_valid_values_pass(tmp_path, text):
    load(tmp_path, text + "\n")


def test_every_problem_is_reported_at_once(tmp_path):
    text = """
    server: {port: 0, workers: 0, bogus: 1}
    database: {driver: mysql}
    logging: {level: loud, format: xml}
    graphql: {max_depth: 0}
    jwt: {access_token_duration: soon, secret: '${NOPE}'}
    """
    problems = problems_of(tmp_path, text)
    assert len(problems) == 9
    for prefix in (
        "server.port:",
        "server.workers:",
        "server.bogus:",
        "database.driver:",
        "logging.level:",
        "logging.format:",
        "graphql.max_depth:",
        "jwt.access_token_duration:",
        "jwt.secret:",
    ):
        assert any(p.startswith(prefix) for p in problems), prefix


# --------------------------------------------------------------------------- production rules

PROD = {"APP_ENV": "production", "JWT_SECRET": "p" * 32, "AICM_ENCRYPTION_KEY": "e" * 32}


def test_production_minimal_is_valid(tmp_path):
    assert load(tmp_path, "", PROD).is_production


@pytest.mark.parametrize("key", ["", "short"])
def test_production_needs_an_encryption_key(tmp_path, key):
    env = {**PROD, "AICM_ENCRYPTION_KEY": key}
    expected = ["security.encryption_key: must be at least 32 characters in production"]
    assert problems_of(tmp_path, f"security: {{encryption_key: '{key}'}}\n", env) == expected


def test_repository_settings_have_their_defaults_and_checks(tmp_path):
    s = load(tmp_path, "")
    assert s.local_repositories_allowed and s.runner.worktree_retention == 7 * 86400
    assert (s.runner.max_patch_bytes, s.runner.git_timeout) == (256 * 1024, 300.0)
    assert not load(tmp_path, "", PROD).local_repositories_allowed
    s = load(
        tmp_path, "runner: {worktree_retention: 2h, git_timeout: 30s, allow_local_repositories: false}\n"
    )
    assert (s.runner.worktree_retention, s.runner.git_timeout) == (7200.0, 30.0)
    assert not s.local_repositories_allowed
    problems = problems_of(tmp_path, "runner: {max_patch_bytes: 10, worktree_retention: 0}\n", {})
    assert "runner.max_patch_bytes: must be at least 1024, got 10" in problems
    assert "runner.worktree_retention: must be greater than 0, got 0" in problems


@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_production_needs_a_long_jwt_secret(tmp_path, secret):
    env = {"APP_ENV": "production", "AICM_ENCRYPTION_KEY": "e" * 32}
    text = f"jwt: {{secret: '{secret}'}}\n"
    assert problems_of(tmp_path, text, env) == ["jwt.secret: must be at least 32 characters in production"]


def test_short_secret_is_fine_outside_production_and_for_rs256(tmp_path):
    load(tmp_path, "jwt: {secret: short}\n")
    text = "jwt: {algorithm: RS256, private_key_file: a.pem, public_key_file: b.pem}\n"
    assert load(tmp_path, text, {"APP_ENV": "production", "AICM_ENCRYPTION_KEY": "e" * 32}).jwt.secret == ""


@pytest.mark.parametrize(
    ("database", "bad"),
    [
        ("{driver: postgres, host: db.internal, ssl_mode: disable}", True),
        ("{driver: postgres, host: 10.0.0.5, ssl_mode: disable}", True),
        ("{driver: postgres, host: localhost, ssl_mode: disable}", False),
        ("{driver: postgres, host: 127.0.0.1, ssl_mode: disable}", False),
        ("{driver: postgres, host: '::1', ssl_mode: disable}", False),
        ("{driver: postgres, host: db.internal, ssl_mode: require}", False),
        ("{driver: sqlite, host: db.internal, ssl_mode: disable}", False),
        ("{url: 'postgres://u:p@db.internal:5432/x', ssl_mode: disable}", True),
        ("{url: 'postgres://u:p@127.0.0.1:5432/x', host: db.internal, ssl_mode: disable}", False),
        ("{url: 'sqlite:///var/lib/aicm.db', driver: postgres, host: db.internal, ssl_mode: disable}", False),
    ],
)
def test_production_ssl_mode_disable_needs_a_loopback_host(tmp_path, database, bad):
    text = f"database: {database}\n"
    if bad:
        problems = problems_of(tmp_path, text, PROD)
        assert len(problems) == 1 and problems[0].startswith("database.ssl_mode: 'disable' is not allowed")
    else:
        load(tmp_path, text, PROD)
    load(tmp_path, text, {})  # never a problem outside production


def test_production_database_url_override_is_checked(tmp_path):
    env = {**PROD, "DATABASE_URL": "postgres://u:p@db.example.com/x"}
    problems = problems_of(tmp_path, "database: {ssl_mode: disable}\n", env)
    assert problems[0].startswith("database.ssl_mode:") and "db.example.com" in problems[0]


def test_production_needs_https_for_oauth_and_frontend_urls_except_on_loopback(tmp_path):
    text = """
    jwt: {secret: "0123456789abcdef0123456789abcdef"}
    oauth:
      okta: {client_id: x, server_metadata_url: "http://sso.example/.well-known/openid-configuration"}
      dev: {client_id: x, server_metadata_url: "http://127.0.0.1:5556/.well-known/openid-configuration"}
    auth: {frontend_url: "http://app.example"}
    """
    problems = problems_of(tmp_path, text, {"APP_ENV": "production"})
    assert "oauth.okta.server_metadata_url: must use https in production" in problems
    assert "auth.frontend_url: must use https in production" in problems
    assert not any(p.startswith("oauth.dev.") for p in problems)


def test_oauth_endpoint_overrides_and_frontend_url_load(tmp_path):
    s = load(
        tmp_path,
        """
        oauth:
          github: {client_id: x, api_base_url: "https://ghe.example/api/v3/"}
        auth: {frontend_url: "https://app.example/signed-in"}
        """,
    )
    assert s.oauth["github"].api_base_url == "https://ghe.example/api/v3/"
    assert s.oauth["github"].authorize_url == "" and s.oauth["github"].token_url == ""
    assert s.auth.frontend_url == "https://app.example/signed-in"


def test_production_forbids_wildcard_cors(tmp_path):
    text = "security: {cors: {allowed_origins: ['https://a.example', '*']}}\n"
    assert problems_of(tmp_path, text, PROD) == [
        "security.cors.allowed_origins: '*' is not allowed in production"
    ]
    assert load(tmp_path, text).security.cors.allowed_origins[1] == "*"


def test_production_problems_are_reported_together(tmp_path):
    text = """
    database: {driver: postgres, host: db.example.com, ssl_mode: disable}
    security: {cors: {allowed_origins: ['*'], allow_credentials: true}}
    """
    problems = problems_of(tmp_path, text, {"APP_ENV": "production"})
    assert {p.split(":", 1)[0] for p in problems} == {
        "jwt.secret",
        "security.encryption_key",
        "database.ssl_mode",
        "security.cors.allowed_origins",
        "security.cors.allow_credentials",
    }


# --------------------------------------------------------------------------- defaults and resolution


def test_no_config_and_no_env_is_the_embedded_default(tmp_path):
    s = load_settings(environ={}, cwd=tmp_path)
    assert s == Settings()
    assert s.config_path is None
    assert s.database.dsn == "sqlite://./data/aicm.db" and s.database.is_sqlite
    assert s.redis.dsn is None and not s.redis.enabled
    assert s.app.env == "development" and not s.is_production
    assert s.auto_migrate and s.introspection_enabled and s.graphiql_enabled
    assert s.runner.command == ["claude", "-p", "{prompt}", "--output-format", "stream-json", "--verbose"]


def test_resolve_config_path_order(tmp_path):
    default = tmp_path / "config" / "config.yaml"
    from_env = write(tmp_path, "", "env.yaml")
    explicit = write(tmp_path, "", "explicit.yaml")
    assert resolve_config_path(None, {}, tmp_path) is None
    default.parent.mkdir()
    default.write_text("", encoding="utf-8")
    assert resolve_config_path(None, {}, tmp_path) == default
    assert resolve_config_path(None, {"AICLI_CONFIG": str(from_env)}, tmp_path) == from_env
    assert resolve_config_path(None, {"AICLI_CONFIG": "env.yaml"}, tmp_path) == from_env
    assert resolve_config_path("explicit.yaml", {"AICLI_CONFIG": str(from_env)}, tmp_path) == explicit
    assert resolve_config_path(None, {"AICLI_CONFIG": ""}, tmp_path) == default


@pytest.mark.parametrize(
    ("explicit", "environ"), [("missing.yaml", {}), (None, {"AICLI_CONFIG": "missing.yaml"})]
)
def test_resolve_config_path_missing_file(tmp_path, explicit, environ):
    with pytest.raises(ConfigError) as info:
        resolve_config_path(explicit, environ, tmp_path)
    assert info.value.problems == [f"config: file not found: {tmp_path / 'missing.yaml'}"]


def test_load_settings_uses_the_default_file_and_reports_a_missing_one(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("server: {port: 9999}\n", encoding="utf-8")
    s = load_settings(environ={}, cwd=tmp_path)
    assert s.server.port == 9999 and s.config_path == tmp_path / "config" / "config.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings("nope.yaml", environ={"APP_ENV": "staging"}, cwd=tmp_path)
    assert info.value.problems[0] == f"config: file not found: {tmp_path / 'nope.yaml'}"
    assert any(p.startswith("app.env:") for p in info.value.problems)  # still every problem


# --------------------------------------------------------------------------- DSNs


@pytest.mark.parametrize(
    ("config", "dsn"),
    [
        (DatabaseConfig(), "sqlite://./data/aicm.db"),
        (DatabaseConfig(path="data/x.db"), "sqlite://data/x.db"),
        (DatabaseConfig(path="/var/lib/aicm/aicm.db"), "sqlite:///var/lib/aicm/aicm.db"),
        (DatabaseConfig(path=":memory:"), "sqlite://:memory:"),
        (DatabaseConfig(url="postgres://a:b@h/d", path="x.db"), "postgres://a:b@h/d"),
        (
            DatabaseConfig(driver="postgres", host="db", user="app", password="p@ss:w/rd#1", name="main"),
            "postgres://app:p%40ss%3Aw%2Frd%231@db:5432/main",
        ),
        (
            DatabaseConfig(driver="postgres", host="db", port=6543, user="app"),
            "postgres://app@db:6543/aicli_web",
        ),
        (
            DatabaseConfig(driver="postgres", password="ignored-without-user"),
            "postgres://localhost:5432/aicli_web",
        ),
        (DatabaseConfig(driver="postgres", host="::1", user="u"), "postgres://u@[::1]:5432/aicli_web"),
    ],
)
def test_database_dsn(config, dsn):
    assert config.dsn == dsn
    assert config.is_sqlite == dsn.startswith("sqlite:")


@pytest.mark.parametrize(
    ("config", "dsn"),
    [
        (RedisConfig(), None),
        (RedisConfig(addr="cache:6379"), "redis://cache:6379/0"),
        (RedisConfig(addr="cache:6379", password="p@ss", db=3), "redis://:p%40ss@cache:6379/3"),
        (RedisConfig(url="rediss://x:6380/1", addr="cache:6379"), "rediss://x:6380/1"),
    ],
)
def test_redis_dsn(config, dsn):
    assert config.dsn == dsn
    assert config.enabled == (dsn is not None)


def test_secrets_are_kept_out_of_repr():
    s = Settings()
    s.database.password, s.database.url, s.redis.password, s.jwt.secret = (
        "pw1",
        "postgres://x:pw2@h/d",
        "pw3",
        "pw4",
    )
    text = repr(s)
    assert not any(secret in text for secret in ("pw1", "pw2", "pw3", "pw4"))


# --------------------------------------------------------------------------- config.example.yaml


def _leaf_paths(cls: type, prefix: str = "") -> list[str]:
    paths = []
    for f in dataclasses.fields(cls):
        if f.name == "config_path":
            continue
        tp = typing.get_type_hints(cls)[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            paths += _leaf_paths(tp, path + ".")
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            paths += _leaf_paths(typing.get_args(tp)[1], path + ".*.")
        else:
            paths.append(path)
    return paths


def _has_path(tree: object, parts: list[str]) -> bool:
    if not parts:
        return True
    if not isinstance(tree, dict):
        return False
    head, rest = parts[0], parts[1:]
    if head == "*":
        return any(_has_path(value, rest) for value in tree.values())
    return head in tree and _has_path(tree[head], rest)


def test_example_config_loads_with_the_guide_environment(tmp_path):
    s = load_settings(EXAMPLE_YAML, environ=GUIDE_PRODUCTION_ENV, cwd=tmp_path)
    assert s.is_production and s.database.driver == "postgres"
    assert s.database.password == GUIDE_ENV["DATABASE_PASSWORD"]
    assert s.oauth["google"].client_id == GUIDE_ENV["GOOGLE_CLIENT_ID"]
    assert s.auth.lockout_duration == 900.0 and s.runner.timeout == 1800.0
    assert not s.introspection_enabled and not s.graphiql_enabled and not s.auto_migrate


def test_example_config_loads_in_development_too(tmp_path):
    env = {k: v for k, v in GUIDE_ENV.items() if k != "APP_ENV"}
    s = load_settings(EXAMPLE_YAML, environ=env, cwd=tmp_path)
    assert s.app.env == "development" and s.introspection_enabled and s.auto_migrate


def test_example_config_mentions_every_settings_field():
    tree = yaml.safe_load(EXAMPLE_YAML.read_text(encoding="utf-8"))
    leaves = _leaf_paths(Settings)
    assert "oauth.*.server_metadata_url" in leaves and "runner.env" in leaves
    missing = [path for path in leaves if not _has_path(tree, path.split("."))]
    assert missing == []


def test_example_config_keeps_the_guide_sections_and_values(tmp_path):
    example = yaml.safe_load(EXAMPLE_YAML.read_text(encoding="utf-8"))
    guide = yaml.safe_load(GUIDE_YAML.read_text(encoding="utf-8"))

    def walk(node: object, expected: object, path: str) -> None:
        if isinstance(expected, dict):
            for key, value in expected.items():
                walk(node[key], value, f"{path}.{key}")  # type: ignore[index]
        else:
            assert node == expected, path

    walk(example, guide, "")


# --------------------------------------------------------------------------- hardening (issue 7)


def test_hardening_defaults(tmp_path):
    s = load(tmp_path, "")
    rate, graphql = s.security.rate_limit, s.graphql
    assert rate.enabled and (rate.auth_requests_per_minute, rate.auth_burst_size) == (10.0, 10)
    assert not s.security.hsts.enabled and not s.security.refresh_cookie.enabled
    assert graphql.max_cost == 10_000 and graphql.persisted_queries == "apq"
    assert graphql.persisted_queries_ttl == 86_400.0 and s.suggestions_enabled


def test_suggestions_are_off_in_production_unless_set(tmp_path):
    env = PROD
    assert not load(tmp_path, "", env).suggestions_enabled
    assert load(tmp_path, "graphql: {suggestions: true}\n", env).suggestions_enabled


def test_a_safelist_with_its_manifest_loads(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"abc": "{ me { id } }"}', encoding="utf-8")
    text = f"graphql: {{persisted_queries: safelist, persisted_queries_manifest: '{manifest}', persisted_queries_ttl: 2h}}\n"
    s = load(tmp_path, text)
    assert s.graphql.persisted_queries == "safelist" and s.graphql.persisted_queries_ttl == 7200.0
