"""Typed configuration: the guide's config.yaml verbatim plus this system's sections (CONTRACT §1).

Durations are stored as float seconds. The loader (``load_settings``) is the only place in the package
that reads the process environment.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from aicm import _config_parse as _p

DEFAULT_RUNNER_COMMAND = ["claude", "-p", "{prompt}", "--output-format", "stream-json", "--verbose"]


@dataclass
class AppConfig:
    env: str = "development"  # development | test | production (APP_ENV)
    data_dir: str = "./data"  # embedded database, development JWT secret, workspaces


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    read_timeout: float = 30.0
    write_timeout: float = 30.0
    idle_timeout: float = 120.0
    max_header_bytes: int = 1_048_576
    workers: int = 1
    trusted_proxies: list[str] = field(default_factory=list)  # IPs/CIDRs whose X-Forwarded-For is believed
    ws_compression: bool = True  # permessage-deflate on WebSockets: less bandwidth, much more CPU per frame


@dataclass
class DatabaseConfig:
    url: str = field(default="", repr=False)  # a Tortoise URL; DATABASE_URL; wins over the fields below
    driver: str = "sqlite"  # sqlite | postgres
    path: str = "./data/aicm.db"  # sqlite only
    host: str = "localhost"
    port: int = 5432
    name: str = "aicli_web"
    user: str = ""
    password: str = field(default="", repr=False)
    ssl_mode: str = "prefer"  # disable | allow | prefer | require | verify-ca | verify-full
    max_open_conns: int = 25
    max_idle_conns: int = 5
    conn_max_lifetime: float = 300.0
    auto_migrate: bool | None = None  # None: on, except when app.env is production

    @property
    def dsn(self) -> str:
        """The Tortoise URL: ``url`` if set, else built from the fields."""
        if self.url:
            return self.url
        if self.driver == "sqlite":
            return f"sqlite://{self.path}"  # an absolute path gives Tortoise's sqlite:///abs form
        auth = quote(self.user, safe="")
        if auth and self.password:
            auth += ":" + quote(self.password, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgres://{auth + '@' if auth else ''}{host}:{self.port}/{quote(self.name, safe='')}"

    @property
    def is_sqlite(self) -> bool:
        return self.dsn.startswith("sqlite:")


@dataclass
class RedisConfig:
    url: str = field(default="", repr=False)  # REDIS_URL; wins over addr/password/db
    addr: str = ""  # host:port; empty (and no url) = in-process broker and stores
    password: str = field(default="", repr=False)
    db: int = 0
    max_retries: int = 3
    pool_size: int = 10
    min_idle_conns: int = 2

    @property
    def dsn(self) -> str | None:
        """``url`` if set, else ``redis://[:password@]addr/db``; None = in-process broker."""
        if self.url:
            return self.url
        if not self.addr:
            return None
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.addr}/{self.db}"

    @property
    def enabled(self) -> bool:
        return self.dsn is not None


@dataclass
class JWTConfig:
    # JWT_SECRET; empty outside production = a development secret kept under data_dir
    secret: str = field(default="", repr=False)
    access_token_duration: float = 900.0
    refresh_token_duration: float = 86_400.0
    issuer: str = "aicli-web"
    audience: str = "aicli-web"
    algorithm: str = "HS256"  # HS256 | RS256 | ES256
    private_key_file: str = ""  # RS256/ES256
    public_key_file: str = ""


@dataclass
class OAuthProviderConfig:
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    redirect_url: str = ""
    server_metadata_url: str = ""  # OpenID discovery document (generic OIDC providers)
    scopes: list[str] = field(default_factory=list)
    # Endpoint overrides, e.g. GitHub Enterprise; empty = the provider's own (or its discovery document's)
    authorize_url: str = ""
    token_url: str = ""
    api_base_url: str = ""  # GitHub: the REST API root serving /user and /user/emails


@dataclass
class RateLimitConfig:
    enabled: bool = True
    requests_per_second: float = 100.0  # token bucket per client (the user when signed in, else the IP)
    burst_size: int = 200
    window_size: float = 60.0  # how long an idle client's bucket is remembered (at least its refill time)
    # login, register, refreshToken and OAuth: a stricter bucket per IP and per email
    auth_requests_per_minute: float = 10.0
    auth_burst_size: int = 10
    max_ws_connections_per_user: int = (
        20  # open WebSocket connections of one user, on every instance with Redis
    )


@dataclass
class CORSConfig:
    allowed_origins: list[str] = field(default_factory=list)
    allowed_methods: list[str] = field(default_factory=lambda: ["GET", "POST", "OPTIONS"])
    allowed_headers: list[str] = field(default_factory=lambda: ["Authorization", "Content-Type"])
    max_age: int = 86_400
    allow_credentials: bool = False


@dataclass
class HSTSConfig:
    enabled: bool = False  # only when clients reach the server over TLS
    max_age: int = 31_536_000
    include_subdomains: bool = True
    preload: bool = False


@dataclass
class RefreshCookieConfig:
    """Browser clients: the refresh token in an HttpOnly cookie, guarded by a double-submit X-CSRF-Token."""

    enabled: bool = False
    secure: bool = True  # the Secure attribute; false only for http://localhost development
    same_site: str = "strict"  # strict | lax


@dataclass
class SecurityConfig:
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    cors: CORSConfig = field(default_factory=CORSConfig)
    hsts: HSTSConfig = field(default_factory=HSTSConfig)
    refresh_cookie: RefreshCookieConfig = field(default_factory=RefreshCookieConfig)
    # Encrypts repository credentials at rest (AICM_ENCRYPTION_KEY); empty outside production = a key
    # generated into <data_dir>/encryption_key. Required in production.
    encryption_key: str = field(default="", repr=False)


@dataclass
class LogFileConfig:
    enabled: bool = False
    path: str = "./data/logs/app.log"
    max_size: int = 100  # MB
    max_backups: int = 10
    max_age: int = 30  # days


@dataclass
class LoggingConfig:
    level: str = "info"  # debug | info | warning | error (LOG_LEVEL)
    format: str = "json"  # json | text
    output: str = "stdout"  # stdout | stderr
    file: LogFileConfig = field(default_factory=LogFileConfig)


@dataclass
class MetricsConfig:
    enabled: bool = True
    path: str = "/metrics"
    # Optional guards for /metrics (both must pass when both are set): scrapers send
    # "Authorization: Bearer <bearer_token>"; allowed_ips lists the IPs/CIDRs that may scrape. Empty = open.
    bearer_token: str = field(default="", repr=False)
    allowed_ips: list[str] = field(default_factory=list)


@dataclass
class HealthConfig:
    enabled: bool = True
    path: str = "/health"


@dataclass
class MonitoringConfig:
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)


@dataclass
class AuthConfig:
    allow_registration: bool = True
    max_failed_logins: int = 5
    lockout_duration: float = 900.0
    max_sessions_per_user: int = 10
    # Where the OAuth callback sends the browser, tokens in the URL fragment; empty = answer JSON
    frontend_url: str = ""


@dataclass
class SandboxPathsConfig:
    """Extra paths for the agent's sandbox (``runner.sandbox_paths``); relative ones start at the cwd."""

    read_only: list[str] = field(default_factory=list)
    read_write: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)


@dataclass
class LimitsConfig:
    """``runner.limits``: sizes in bytes (``4GiB`` in the file), ``cpu_time`` in seconds; None = off."""

    memory: int | None = 4 * 1024**3
    processes: int | None = 256
    file_size: int | None = 1024**3
    output_bytes: int | None = 64 * 1024**2
    line_bytes: int = 1024**2  # always on: a line is never held whole past this
    cpu_time: float | None = 7200.0


@dataclass
class RunnerConfig:
    command: list[str] = field(default_factory=lambda: list(DEFAULT_RUNNER_COMMAND))
    workspace_root: str = "./data/workspaces"
    max_concurrent: int = 4
    timeout: float = 1800.0
    embedded: bool = True
    env: dict[str, str] = field(default_factory=dict)
    shutdown_grace: float = 30.0  # on SIGTERM, how long running tasks may still finish (then: FAILED)
    allow_local_repositories: bool | None = None  # None: on, except when app.env is production
    worktree_retention: float = 7 * 86_400.0  # a finished task's worktree is removed then; its branch stays
    max_patch_bytes: int = 256 * 1024  # the stored patches of a task's changes, all files together
    git_timeout: float = 300.0  # one git command (clone, fetch, push, diff...)
    sandbox: str = "auto"  # auto | bubblewrap | none (CONTRACT §9)
    sandbox_paths: SandboxPathsConfig = field(default_factory=SandboxPathsConfig)
    network: bool = True  # false: the agent runs with no network at all (needs the sandbox)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    agent_cli: str = "claude"  # claude: the runner adds Claude CLI flags (--max-budget-usd...); generic: none
    approval_timeout: float = 600.0  # an undecided tool approval is EXPIRED (and denied) after this


@dataclass
class WebhooksConfig:
    allow_private: bool = False  # production: URLs on loopback/private addresses are refused unless true
    timeout: float = 10.0  # one delivery attempt
    max_attempts: int = 5  # then the delivery is given up (each attempt is in Webhook.deliveries)


@dataclass
class GraphQLConfig:
    max_depth: int = 12
    max_aliases: int = 30
    max_tokens: int = 5000
    introspection: bool | None = None  # None: on, except when app.env is production
    graphiql: bool | None = None  # likewise
    legacy_ws_protocol: bool = False
    max_body_bytes: int = 1_048_576
    max_subscriptions_per_connection: int = 20
    subscription_backlog_bytes: int = 4_194_304  # events waiting for one subscriber, in encoded bytes
    max_cost: int = 10_000  # static cost: each field 1, a list field's selections times its `first`
    suggestions: bool | None = None  # "Did you mean ...?" in errors; None: on, except in production
    persisted_queries: str = "apq"  # off | apq (automatic persisted queries) | safelist (only the manifest's)
    persisted_queries_manifest: str = ""  # safelist: a JSON manifest of the operations allowed
    persisted_queries_ttl: float = 86_400.0  # apq: how long a stored query is kept in Redis
    persisted_queries_cache_size: int = 1000  # apq without Redis: queries kept in the in-process LRU


@dataclass
class WebConfig:
    enabled: bool = True  # the web console at / (CONTRACT §12)


@dataclass
class Settings:
    app: AppConfig = field(default_factory=AppConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    jwt: JWTConfig = field(default_factory=JWTConfig)
    oauth: dict[str, OAuthProviderConfig] = field(default_factory=dict)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    graphql: GraphQLConfig = field(default_factory=GraphQLConfig)
    web: WebConfig = field(default_factory=WebConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    config_path: Path | None = None  # the file it was loaded from, if any

    @property
    def is_production(self) -> bool:
        return self.app.env == "production"

    @property
    def auto_migrate(self) -> bool:
        return (
            self.database.auto_migrate if self.database.auto_migrate is not None else not self.is_production
        )

    @property
    def introspection_enabled(self) -> bool:
        value = self.graphql.introspection
        return value if value is not None else not self.is_production

    @property
    def local_repositories_allowed(self) -> bool:
        value = self.runner.allow_local_repositories
        return value if value is not None else not self.is_production

    @property
    def graphiql_enabled(self) -> bool:
        return self.graphql.graphiql if self.graphql.graphiql is not None else not self.is_production

    @property
    def suggestions_enabled(self) -> bool:
        value = self.graphql.suggestions
        return value if value is not None else not self.is_production


# --------------------------------------------------------------------------- loading

# Float fields holding durations ("section.key"): they accept 30s, 15m, 24h, 500ms, 1h30m, 7d or seconds.
DURATION_FIELDS = frozenset(
    {
        "server.read_timeout",
        "server.write_timeout",
        "server.idle_timeout",
        "database.conn_max_lifetime",
        "jwt.access_token_duration",
        "jwt.refresh_token_duration",
        "security.rate_limit.window_size",
        "graphql.persisted_queries_ttl",
        "auth.lockout_duration",
        "runner.timeout",
        "runner.shutdown_grace",
        "runner.worktree_retention",
        "runner.git_timeout",
        "runner.approval_timeout",
        "runner.limits.cpu_time",
        "webhooks.timeout",
    }
)

# Int fields holding sizes in bytes: they accept 4GiB, 64MiB, 1MB or a number of bytes.
SIZE_FIELDS = frozenset(
    {
        "runner.limits.memory",
        "runner.limits.file_size",
        "runner.limits.output_bytes",
        "runner.limits.line_bytes",
    }
)

# Environment variables that win over the file (an empty value counts as unset).
ENV_OVERRIDES = {
    "DATABASE_URL": "database.url",
    "REDIS_URL": "redis.url",
    "JWT_SECRET": "jwt.secret",
    "APP_ENV": "app.env",
    "LOG_LEVEL": "logging.level",
    "AICM_ENCRYPTION_KEY": "security.encryption_key",
}

_DB_SCHEMES = ("sqlite://", "postgres://", "postgresql://", "asyncpg://")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(\[[0-9A-Fa-f:.]+\]|[^\s/:?#@\[\]]+)(:\d{1,5})?")


class ConfigError(Exception):
    """Every problem found in the configuration, one per line, each prefixed by its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


def resolve_config_path(explicit: str | None, environ: Mapping[str, str], cwd: Path) -> Path | None:
    """``--config``, else ``$AICLI_CONFIG``, else ``config/config.yaml`` if present, else None."""
    chosen = explicit or environ.get("AICLI_CONFIG")
    if not chosen:
        default = cwd / "config" / "config.yaml"
        return default if default.is_file() else None
    path = Path(chosen).expanduser()
    if not path.is_absolute():
        path = cwd / path
    if not path.is_file():
        raise ConfigError([f"config: file not found: {path}"])
    return path


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Read, expand ``${VAR}``, apply env overrides, convert and validate; ConfigError lists every problem."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    problems: list[str] = []
    env = {**_p.read_dotenv(cwd / ".env", problems), **(os.environ if environ is None else environ)}
    config_path = None
    try:
        config_path = resolve_config_path(None if path is None else str(path), env, cwd)
    except ConfigError as exc:
        problems += exc.problems
    raw = _p.read_yaml(config_path, problems) if config_path else {}

    unset: list[str] = []
    raw = _p.expand(raw, env, "", unset)
    overridden = _p.apply_overrides(raw, env, ENV_OVERRIDES)
    problems += [p for p in unset if _p.problem_path(p) not in overridden]

    settings = _p.build(
        Settings, raw, problems, durations=DURATION_FIELDS, sizes=SIZE_FIELDS, skip=frozenset({"config_path"})
    )
    settings.config_path = config_path
    reported = {_p.problem_path(p) for p in problems}
    problems += [p for p in _validate(settings) if _p.problem_path(p) not in reported]
    if problems:
        raise ConfigError(problems)
    return settings


class _Problems(list[str]):
    """What ``_validate`` found, one message per problem, with the checks most rules use."""

    def one_of(self, path: str, value: str, choices: tuple[str, ...]) -> None:
        if value not in choices:
            self.append(f"{path}: expected one of {', '.join(choices)}, got {value!r}")

    def at_least(self, path: str, value: float, minimum: float) -> None:
        if value < minimum:
            self.append(f"{path}: must be at least {minimum:g}, got {value:g}")

    def positive(self, path: str, value: float) -> None:
        if value <= 0:
            self.append(f"{path}: must be greater than 0, got {value:g}")

    def networks(self, path: str, values: list[str], *, wildcard: bool = False) -> None:
        for i, value in enumerate(values):
            if not (wildcard and value == "*") and not _p.is_network(value):
                self.append(f"{path}[{i}]: expected an IP address or CIDR, got {value!r}")


def _validate(s: Settings) -> list[str]:
    """The rules no type hint can express, section by section. Normalizes logging.level in place."""
    level = s.logging.level.strip().lower()
    s.logging.level = "warning" if level == "warn" else level
    problems = _Problems()
    for step in (
        _check_app_and_server,
        _check_stores,
        _check_tokens_and_oauth,
        _check_security,
        _check_logging_and_monitoring,
        _check_auth_and_runner,
        _check_graphql,
        _check_production,
    ):
        step(s, problems)
    return problems


def _check_app_and_server(s: Settings, problems: _Problems) -> None:
    problems.one_of("app.env", s.app.env, ("development", "test", "production"))
    if not 1 <= s.server.port <= 65535:
        problems.append(f"server.port: must be between 1 and 65535, got {s.server.port}")
    for key_path in sorted(DURATION_FIELDS):
        *sections, key = key_path.split(".")
        problems.positive(key_path, getattr(functools.reduce(getattr, sections, s), key))
    problems.at_least("server.workers", s.server.workers, 1)
    problems.at_least("server.max_header_bytes", s.server.max_header_bytes, 1)
    problems.networks("server.trusted_proxies", s.server.trusted_proxies, wildcard=True)


def _check_stores(s: Settings, problems: _Problems) -> None:
    db, redis = s.database, s.redis
    problems.one_of("database.driver", db.driver, ("sqlite", "postgres"))
    problems.one_of("database.ssl_mode", db.ssl_mode, _SSL_MODES)
    if db.url and not db.url.startswith(_DB_SCHEMES):
        problems.append(
            f"database.url: must start with {', '.join(_DB_SCHEMES)}, got {_p.url_scheme(db.url)}"
        )
    problems.at_least("database.port", db.port, 1)
    problems.at_least("database.max_open_conns", db.max_open_conns, 1)
    problems.at_least("database.max_idle_conns", db.max_idle_conns, 0)
    if redis.url and not redis.url.startswith(_REDIS_SCHEMES):
        problems.append(
            f"redis.url: must start with {', '.join(_REDIS_SCHEMES)}, got {_p.url_scheme(redis.url)}"
        )
    problems.at_least("redis.db", redis.db, 0)
    problems.at_least("redis.max_retries", redis.max_retries, 0)
    problems.at_least("redis.pool_size", redis.pool_size, 1)
    problems.at_least("redis.min_idle_conns", redis.min_idle_conns, 0)


def _check_tokens_and_oauth(s: Settings, problems: _Problems) -> None:
    problems.one_of("jwt.algorithm", s.jwt.algorithm, ("HS256", "RS256", "ES256"))
    if s.jwt.algorithm in ("RS256", "ES256"):
        for key in ("private_key_file", "public_key_file"):
            if not getattr(s.jwt, key):
                problems.append(f"jwt.{key}: required when jwt.algorithm is {s.jwt.algorithm}")
    for name, provider in s.oauth.items():
        if not provider.client_id:
            problems.append(f"oauth.{name}.client_id: must not be empty")
        if name not in ("google", "github") and not provider.server_metadata_url:
            problems.append(
                f"oauth.{name}.server_metadata_url: required for providers other than google, github"
            )
        for key in _OAUTH_URL_FIELDS:
            if problem := _http_url_problem(getattr(provider, key), production=s.is_production):
                problems.append(f"oauth.{name}.{key}: {problem}")


def _check_security(s: Settings, problems: _Problems) -> None:
    rate, cors = s.security.rate_limit, s.security.cors
    problems.positive("security.rate_limit.requests_per_second", rate.requests_per_second)
    problems.positive("security.rate_limit.burst_size", rate.burst_size)
    problems.positive("security.rate_limit.auth_requests_per_minute", rate.auth_requests_per_minute)
    problems.positive("security.rate_limit.auth_burst_size", rate.auth_burst_size)
    problems.positive("security.rate_limit.max_ws_connections_per_user", rate.max_ws_connections_per_user)
    problems.at_least("security.hsts.max_age", s.security.hsts.max_age, 0)
    problems.one_of(
        "security.refresh_cookie.same_site", s.security.refresh_cookie.same_site, ("strict", "lax")
    )
    problems.at_least("security.cors.max_age", cors.max_age, 0)
    for i, origin in enumerate(cors.allowed_origins):
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            problems.append(
                f"security.cors.allowed_origins[{i}]: expected '*' or scheme://host[:port], got {origin!r}"
            )
    if "*" in cors.allowed_origins and cors.allow_credentials:
        problems.append("security.cors.allow_credentials: cannot be true when allowed_origins contains '*'")


def _check_logging_and_monitoring(s: Settings, problems: _Problems) -> None:
    problems.one_of("logging.level", s.logging.level, ("debug", "info", "warning", "error"))
    problems.one_of("logging.format", s.logging.format, ("json", "text"))
    problems.one_of("logging.output", s.logging.output, ("stdout", "stderr"))
    for key in ("max_size", "max_backups", "max_age"):
        problems.at_least(f"logging.file.{key}", getattr(s.logging.file, key), 1)
    for key in ("metrics", "health"):
        if not getattr(s.monitoring, key).path.startswith("/"):
            problems.append(f"monitoring.{key}.path: must start with '/'")
    metrics = s.monitoring.metrics
    if metrics.bearer_token and len(metrics.bearer_token) < 16:
        problems.append("monitoring.metrics.bearer_token: must be at least 16 characters when set")
    problems.networks("monitoring.metrics.allowed_ips", metrics.allowed_ips)


def _check_auth_and_runner(s: Settings, problems: _Problems) -> None:
    problems.at_least("auth.max_failed_logins", s.auth.max_failed_logins, 1)
    problems.at_least("auth.max_sessions_per_user", s.auth.max_sessions_per_user, 1)
    if problem := _frontend_url_problem(s.auth.frontend_url, production=s.is_production):
        problems.append(f"auth.frontend_url: {problem}")
    if not s.runner.command or not s.runner.command[0]:
        problems.append("runner.command: must be a non-empty list of strings")
    problems.at_least("runner.max_concurrent", s.runner.max_concurrent, 1)
    problems.at_least("runner.shutdown_grace", s.runner.shutdown_grace, 0)
    problems.positive("runner.worktree_retention", s.runner.worktree_retention)
    problems.at_least("runner.max_patch_bytes", s.runner.max_patch_bytes, 1024)
    problems.positive("runner.git_timeout", s.runner.git_timeout)
    if not s.runner.embedded and not s.redis.enabled:
        problems.append("runner.embedded: false needs Redis (the job queue that feeds aicli-api worker)")
    problems.one_of("runner.sandbox", s.runner.sandbox, ("auto", "bubblewrap", "none"))
    problems.one_of("runner.agent_cli", s.runner.agent_cli, ("claude", "generic"))
    problems.positive("runner.approval_timeout", s.runner.approval_timeout)
    problems.positive("webhooks.timeout", s.webhooks.timeout)
    problems.at_least("webhooks.max_attempts", s.webhooks.max_attempts, 1)
    if not s.runner.network and s.runner.sandbox == "none":
        problems.append("runner.network: false needs the sandbox (runner.sandbox is none)")
    for name, value in vars(s.runner.limits).items():
        if value is not None:
            problems.at_least(f"runner.limits.{name}", value, 1)


def _check_graphql(s: Settings, problems: _Problems) -> None:
    for key in (
        "max_depth",
        "max_aliases",
        "max_tokens",
        "max_body_bytes",
        "max_subscriptions_per_connection",
        "subscription_backlog_bytes",
        "max_cost",
        "persisted_queries_cache_size",
    ):
        problems.at_least(f"graphql.{key}", getattr(s.graphql, key), 1)
    problems.one_of("graphql.persisted_queries", s.graphql.persisted_queries, ("off", "apq", "safelist"))
    manifest = s.graphql.persisted_queries_manifest
    if s.graphql.persisted_queries == "safelist" and not manifest:
        problems.append("graphql.persisted_queries_manifest: required when persisted_queries is safelist")
    elif manifest and not Path(manifest).expanduser().is_file():
        problems.append(f"graphql.persisted_queries_manifest: file not found: {manifest}")


def _check_production(s: Settings, problems: _Problems) -> None:
    """What development tolerates and production must not."""
    if not s.is_production:
        return
    if s.jwt.algorithm == "HS256" and len(s.jwt.secret) < 32:
        problems.append("jwt.secret: must be at least 32 characters in production")
    host = _database_host(s.database)
    if s.database.ssl_mode == "disable" and host is not None and not _p.is_loopback(host):
        problems.append(f"database.ssl_mode: 'disable' is not allowed in production (database host {host!r})")
    if "*" in s.security.cors.allowed_origins:
        problems.append("security.cors.allowed_origins: '*' is not allowed in production")
    if len(s.security.encryption_key) < 32:
        problems.append("security.encryption_key: must be at least 32 characters in production")


_OAUTH_URL_FIELDS = ("redirect_url", "server_metadata_url", "authorize_url", "token_url", "api_base_url")


def _http_url_problem(url: str, *, production: bool) -> str | None:
    """Empty is fine; else an absolute http(s) URL, https in production unless the host is loopback."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        return f"expected an absolute http(s) URL, got {url!r}"
    if production and parts.scheme == "http" and not _p.is_loopback(host):
        return "must use https in production"
    return None


def _frontend_url_problem(url: str, *, production: bool) -> str | None:
    """Empty is fine; else an absolute URL (a custom scheme is fine for apps) without a fragment."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", parts.scheme or ""):
        return f"expected an absolute URL, got {url!r}"
    if parts.scheme in ("http", "https") and not parts.hostname:
        return f"expected an absolute URL, got {url!r}"
    if parts.fragment or url.endswith("#"):
        return "must not contain a fragment (the tokens go there)"
    if production and parts.scheme == "http" and not _p.is_loopback(parts.hostname or ""):
        return "must use https in production"
    return None


def _database_host(db: DatabaseConfig) -> str | None:
    """The PostgreSQL host connected to (from database.url when set); None for SQLite."""
    if db.url:
        if db.url.startswith("sqlite:"):
            return None
        try:
            return urlsplit(db.url).hostname or ""
        except ValueError:
            return None
    return db.host if db.driver == "postgres" else None
