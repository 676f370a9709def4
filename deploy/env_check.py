"""``make env-check``: the environment variables the chosen configuration needs, each set or missing.

    python deploy/env_check.py [--config PATH]

Reads what the app reads: the process environment and ``./.env`` (the environment wins), and the config file
resolved as ``aicli-api`` resolves it (``--config``, ``$AICLI_CONFIG``, ``config/config.yaml``, else built-in
defaults). Lists the variables of the operations guide's ``.env``, the override variables (``DATABASE_URL``,
``REDIS_URL``, ``JWT_SECRET``, ``APP_ENV``, ``LOG_LEVEL``) and every ``${VAR}`` the config file uses.

A variable is *required* when the config file uses it as ``${VAR}`` (no ``:-default``) at a key no override
variable replaces; ``JWT_SECRET`` and ``AICM_ENCRYPTION_KEY`` are required in production when the file gives
no secret or key. Values are never printed: only set / empty / MISSING / EMPTY and where the value came from.
Exit 1 when a required variable is missing or empty (``--config-check`` rejects both: an OAuth client id must
not be empty), or, in production, when the JWT secret is shorter than 32 characters; else 0.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from aicm import _config_parse as _p
from aicm.config import ENV_OVERRIDES, ConfigError, resolve_config_path

# The operations guide's .env, in its order.
GUIDE_ENV = (
    "DATABASE_PASSWORD",
    "REDIS_PASSWORD",
    "JWT_SECRET",
    "GOOGLE_CLIENT_ID",
    "GOOGLE_CLIENT_SECRET",
    "GITHUB_CLIENT_ID",
    "GITHUB_CLIENT_SECRET",
    "APP_ENV",
    "LOG_LEVEL",
)
MIN_PRODUCTION_SECRET = 32
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def placeholders(value: Any, path: str = "") -> Iterator[tuple[str, str, bool]]:
    """(variable, key path, has a default) for every ``${VAR}`` in the string values of a parsed tree."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from placeholders(item, _p.join(path, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from placeholders(item, f"{path}[{i}]")
    elif isinstance(value, str):
        for match in _VAR.finditer(value):
            yield match.group(1), path, match.group(2) is not None


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = raw.get(name)
    return section if isinstance(section, dict) else {}


def check(config: str | None, environ: Mapping[str, str], cwd: Path) -> tuple[list[str], int]:
    """The report lines and the exit code."""
    problems: list[str] = []
    dotenv = _p.read_dotenv(cwd / ".env", problems)
    env = {**dotenv, **environ}
    lines = [f"env-check: {p}" for p in problems]
    try:
        path = resolve_config_path(config, env, cwd)
    except ConfigError as exc:
        return [*lines, *(f"env-check: {p}" for p in exc.problems)], 1
    raw = _p.read_yaml(path, problems) if path else {}
    if problems:
        return [*lines, *(f"env-check: {p}" for p in problems)], 1

    # A key an override variable replaces (DATABASE_URL for database.url, ...) needs nothing else.
    overridden = {key_path: name for name, key_path in ENV_OVERRIDES.items() if env.get(name)}
    required: dict[str, list[str]] = {}
    optional: dict[str, list[str]] = {}
    replaced: dict[str, list[str]] = {}
    for name, key_path, has_default in placeholders(raw):
        if has_default:
            optional.setdefault(name, []).append(key_path)
        elif overridden.get(key_path, name) != name:
            replaced.setdefault(name, []).append(f"{key_path} (set by {overridden[key_path]})")
        else:
            required.setdefault(name, []).append(key_path)

    expanded = _p.expand(raw, env, "", [])
    app_env = env.get("APP_ENV") or str(_section(expanded, "app").get("env") or "development")
    production = app_env == "production"
    jwt = _section(expanded, "jwt")
    secret = env.get("JWT_SECRET") or str(jwt.get("secret") or "")
    symmetric = str(jwt.get("algorithm") or "HS256") == "HS256"
    if production and symmetric and "JWT_SECRET" not in required and not secret:
        required["JWT_SECRET"] = ["jwt.secret (production)"]
    key = env.get("AICM_ENCRYPTION_KEY") or str(_section(expanded, "security").get("encryption_key") or "")
    if production and "AICM_ENCRYPTION_KEY" not in required and not key:
        required["AICM_ENCRYPTION_KEY"] = ["security.encryption_key (production)"]

    names = list(dict.fromkeys([*GUIDE_ENV, *ENV_OVERRIDES, *required, *optional, *replaced]))
    where = str(path) if path else "built-in defaults (no config file)"
    lines.append(f"env-check: {where}; APP_ENV {app_env}; reading the environment and {cwd / '.env'}")
    missing, bad = [], []
    for name in names:
        if name in environ:
            state, source = ("set" if environ[name] else "empty"), "environment"
        elif name in dotenv:
            state, source = ("set" if dotenv[name] else "empty"), ".env"
        else:
            state, source = "unset", ""
        if name in required:
            need = "required by " + ", ".join(required[name])
            if state in ("unset", "empty"):  # an empty value fails --config-check as surely as none
                state = "MISSING" if state == "unset" else "EMPTY"
                missing.append(name)
        elif name in optional:
            need = "optional (has a default) at " + ", ".join(optional[name])
        elif name in replaced:
            need = "not needed: " + ", ".join(replaced[name])
        elif name in ENV_OVERRIDES:
            need = f"optional, overrides {ENV_OVERRIDES[name]}"
        else:
            need = "not used by this configuration"
        weak = production and symmetric and len(secret) < MIN_PRODUCTION_SECRET
        if name == "JWT_SECRET" and weak and state in ("set", "empty"):
            need += f"; shorter than {MIN_PRODUCTION_SECRET} characters, which production refuses"
            bad.append(name)
        lines.append(f"  {state:<8} {name:<22} {need}" + (f" [{source}]" if source else ""))

    if missing:
        lines.append(f"env-check: {len(missing)} required variable(s) missing or empty: {', '.join(missing)}")
    if bad:
        lines.append(f"env-check: unusable in production: {', '.join(bad)}")
    if not missing and not bad:
        lines.append("env-check: OK, every variable this configuration needs is set")
    return lines, 1 if missing or bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="env-check", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", metavar="PATH", help="config file (default: as aicli-api resolves it)")
    args = parser.parse_args(argv)
    lines, code = check(args.config, os.environ, Path.cwd())
    print("\n".join(lines), file=sys.stdout if code == 0 else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
