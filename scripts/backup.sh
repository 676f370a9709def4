#!/usr/bin/env bash
# AICode Manager backup, after the operations guide: the database (PostgreSQL: pg_dump | gzip; the embedded
# SQLite default: sqlite3 .backup, gzipped), the Redis RDB snapshot (redis-cli --rdb; skipped when the app uses
# its in-process broker), and removal of backups older than the retention period.
#
#   scripts/backup.sh [--config PATH] [--dir DIR] [--retention-days N] [--no-redis]
#
# The targets are the app's own: DATABASE_URL / REDIS_URL when set, else the config file resolved as
# `aicli-api` does (--config, $AICLI_CONFIG, config/config.yaml, built-in defaults), read with .env, from the
# project directory ($AICM_HOME, default: this script's parent). Without the project's Python, DATABASE_URL
# (default: the guide's postgres://aicli_user@localhost:5432/aicli_web) and REDIS_URL are used.
#
# Environment: BACKUP_DIR (/backup/aicli-web), RETENTION_DAYS (30), AICM_HOME, AICM_PYTHON (the project's
# .venv/bin/python, else python3), SQLITE3_BIN (sqlite3; python3's sqlite3 module when absent), PGCONNECT_TIMEOUT
# (10), BACKUP_TIMEOUT (3600 s per dump). Writes db_backup_<date>.sql.gz (PostgreSQL) or
# db_backup_<date>.sqlite.gz (SQLite) and redis_backup_<date>.rdb, mode 0600. Secrets are passed to pg_dump
# and redis-cli through PGPASSWORD / REDISCLI_AUTH and never printed.
set -euo pipefail

SCRIPT_DIR=$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
PROJECT_DIR=$(dirname -- "$SCRIPT_DIR")
GUIDE_DATABASE_URL="postgres://aicli_user@localhost:5432/aicli_web"

log() { printf '%s\n' "$*"; }
die() { printf '%s: %s\n' "$(basename -- "$0")" "$*" >&2; exit 1; }

python_bin() {
    if [[ -n "${AICM_PYTHON:-}" ]]; then
        printf '%s' "$AICM_PYTHON"
    elif [[ -x "$PROJECT_DIR/.venv/bin/python" ]]; then
        printf '%s' "$PROJECT_DIR/.venv/bin/python"
    else
        printf '%s' python3
    fi
}

with_timeout() {  # with_timeout SECONDS CMD...: bounded when coreutils' timeout exists
    local seconds=$1; shift
    if command -v timeout >/dev/null 2>&1; then timeout "$seconds" "$@"; else "$@"; fi
}

# resolve_targets CONFIG: export DB_KIND (sqlite | postgres), SQLITE_PATH or PG* variables, REDIS_* variables
# and TARGET_DB / TARGET_REDIS (descriptions without secrets). Runs in the current directory.
resolve_targets() {
    local config=${1:-} py vars
    py=$(python_bin)
    vars=$(mktemp "${TMPDIR:-/tmp}/aicm-targets.XXXXXX")
    chmod 600 "$vars"
    if ! "$py" - "$config" "$GUIDE_DATABASE_URL" >"$vars" <<'PY'; then
import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

config, guide_url = sys.argv[1] or None, sys.argv[2]
try:
    from aicm.config import ConfigError, load_settings
except ImportError:
    load_settings = None
if load_settings is not None:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        sys.exit(1)
    db_url, redis_url = settings.database.dsn, settings.redis.dsn or ""
    ssl_mode = settings.database.ssl_mode
    source = str(settings.config_path or "built-in defaults")
else:
    if config:
        print("config: --config needs the project's Python (set AICM_PYTHON)", file=sys.stderr)
        sys.exit(1)
    db_url = os.environ.get("DATABASE_URL") or guide_url
    redis_url = os.environ.get("REDIS_URL", "")
    ssl_mode, source = os.environ.get("PGSSLMODE", "prefer"), "DATABASE_URL"

out = {"CONFIG_SOURCE": source}
if db_url.startswith("sqlite://"):
    path = db_url[len("sqlite://"):].split("?", 1)[0]
    if path in ("", ":memory:"):
        print("database: an in-memory SQLite database has nothing to back up", file=sys.stderr)
        sys.exit(1)
    path = str(Path(path).absolute())
    out |= {"DB_KIND": "sqlite", "SQLITE_PATH": path, "TARGET_DB": f"sqlite {path}"}
elif db_url.startswith(("postgres://", "postgresql://", "asyncpg://")):
    parts = urlsplit(db_url)
    database = unquote(parts.path.lstrip("/"))
    host, port, user = parts.hostname or "localhost", str(parts.port or 5432), unquote(parts.username or "")
    out |= {"DB_KIND": "postgres", "PGHOST": host, "PGPORT": port, "PGDATABASE": database,
            "PGSSLMODE": ssl_mode, "TARGET_DB": f"postgres {user + '@' if user else ''}{host}:{port}/{database}"}
    if user:
        out["PGUSER"] = user
    if parts.password:
        out["PGPASSWORD"] = unquote(parts.password)
else:
    print(f"database: unsupported URL scheme {db_url.split(':', 1)[0]!r}", file=sys.stderr)
    sys.exit(1)

if redis_url:
    parts = urlsplit(redis_url)
    if parts.scheme == "unix":
        out |= {"REDIS_SOCKET": parts.path, "TARGET_REDIS": f"redis unix:{parts.path}"}
    else:
        host, port = parts.hostname or "localhost", str(parts.port or 6379)
        out |= {"REDIS_HOST": host, "REDIS_PORT": port, "TARGET_REDIS": f"redis {host}:{port}"}
        if parts.scheme == "rediss":
            out["REDIS_TLS"] = "1"
    if parts.username and parts.username != "default":
        out["REDIS_USER"] = unquote(parts.username)
    if parts.password:
        out["REDISCLI_AUTH"] = unquote(parts.password)
for key, value in out.items():
    if "\n" in value or "\0" in value:
        print(f"{key}: unusable value (newline)", file=sys.stderr)
        sys.exit(1)
    sys.stdout.write(f"{key}={value}\n")
PY
        rm -f "$vars"
        die "cannot resolve the database from the configuration (see above)"
    fi
    unset DB_KIND SQLITE_PATH PGHOST PGPORT PGDATABASE PGUSER PGPASSWORD PGSSLMODE \
        REDIS_SOCKET REDIS_HOST REDIS_PORT REDIS_TLS REDIS_USER REDISCLI_AUTH TARGET_DB TARGET_REDIS CONFIG_SOURCE
    local key value
    while IFS='=' read -r key value; do
        case $key in
            DB_KIND|SQLITE_PATH|PGHOST|PGPORT|PGDATABASE|PGUSER|PGPASSWORD|PGSSLMODE|REDIS_SOCKET|REDIS_HOST|\
            REDIS_PORT|REDIS_TLS|REDIS_USER|REDISCLI_AUTH|TARGET_DB|TARGET_REDIS|CONFIG_SOURCE)
                export "$key=$value" ;;
        esac
    done <"$vars"
    rm -f "$vars"
    export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-10}
}

redis_args() {  # the redis-cli connection options (the password travels in REDISCLI_AUTH)
    if [[ -n "${REDIS_SOCKET:-}" ]]; then
        printf '%s\n' -s "$REDIS_SOCKET"
    else
        printf '%s\n' -h "$REDIS_HOST" -p "$REDIS_PORT"
        [[ -z "${REDIS_TLS:-}" ]] || printf '%s\n' --tls
    fi
    [[ -z "${REDIS_USER:-}" ]] || printf '%s\n' --user "$REDIS_USER"
}

# sqlite_copy SRC DEST: a consistent online copy (sqlite3 .backup, else python3's backup API).
sqlite_copy() {
    local src=$1 dest=$2 sqlite3_bin=${SQLITE3_BIN:-sqlite3}
    if command -v "$sqlite3_bin" >/dev/null 2>&1 && [[ "$src$dest" != *[\'\"\\]* ]]; then
        "$sqlite3_bin" -bail "$src" ".timeout 10000" ".backup '$dest'"
    else
        "$(python_bin)" - "$src" "$dest" <<'PY'
import sqlite3
import sys
from pathlib import Path

source = sqlite3.connect(Path(sys.argv[1]).absolute().as_uri() + "?mode=ro", uri=True, timeout=10)
target = sqlite3.connect(sys.argv[2])
with target:
    source.backup(target)
target.close()
source.close()
PY
    fi
}

backup_main() {
    local config="" dir=${BACKUP_DIR:-/backup/aicli-web} retention=${RETENTION_DAYS:-30} redis=1
    while (($#)); do
        case $1 in
            --config) config=${2:?--config needs a path}; shift 2 ;;
            --dir) dir=${2:?--dir needs a directory}; shift 2 ;;
            --retention-days) retention=${2:?--retention-days needs a number}; shift 2 ;;
            --no-redis) redis=0; shift ;;
            -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; return 0 ;;
            *) die "unknown argument: $1 (see --help)" ;;
        esac
    done
    [[ "$retention" =~ ^[0-9]+$ ]] || die "--retention-days must be a whole number of days"
    [[ -z "$config" ]] || config=$(realpath -m -- "$config")
    dir=$(realpath -m -- "$dir")
    cd -- "${AICM_HOME:-$PROJECT_DIR}"
    resolve_targets "$config"

    umask 077
    mkdir -p -- "$dir"
    local date out
    date=$(date +"%Y%m%d_%H%M%S")
    local base=$date n=1  # two runs in one second must not overwrite each other
    while compgen -G "$dir/db_backup_$date.*" >/dev/null || compgen -G "$dir/redis_backup_$date.*" >/dev/null; do
        n=$((n + 1))
        date="${base}_$n"
    done
    PARTIAL=""  # global: the EXIT trap removes an unfinished file
    trap 'if [[ -n "${PARTIAL:-}" ]]; then rm -f -- "$PARTIAL"; fi' EXIT
    log "Backup of $TARGET_DB (config: $CONFIG_SOURCE) to $dir"

    if [[ $DB_KIND == postgres ]]; then
        command -v pg_dump >/dev/null 2>&1 || die "pg_dump not found (Debian: apt-get install postgresql-client)"
        out="$dir/db_backup_$date.sql.gz"
        PARTIAL="$out.partial"
        with_timeout "${BACKUP_TIMEOUT:-3600}" pg_dump --no-owner --no-privileges --clean --if-exists \
            | gzip -6 >"$PARTIAL"
    else
        [[ -f "$SQLITE_PATH" ]] || die "no SQLite database at $SQLITE_PATH"
        out="$dir/db_backup_$date.sqlite.gz"
        PARTIAL="$out.partial"
        local copy="$dir/.db_backup_$date.sqlite"
        rm -f -- "$copy"
        sqlite_copy "$SQLITE_PATH" "$copy" || { rm -f -- "$copy"; die "SQLite backup of $SQLITE_PATH failed"; }
        gzip -6 -c -- "$copy" >"$PARTIAL"
        rm -f -- "$copy"
    fi
    mv -- "$PARTIAL" "$out"
    PARTIAL=""
    log "database: $out ($(du -h -- "$out" | cut -f1))"

    if ((redis)) && [[ -n "${TARGET_REDIS:-}" ]]; then
        command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found (Debian: apt-get install redis-tools)"
        out="$dir/redis_backup_$date.rdb"
        PARTIAL="$out.partial"
        local -a args
        mapfile -t args < <(redis_args)
        with_timeout "${BACKUP_TIMEOUT:-3600}" redis-cli "${args[@]}" --rdb "$PARTIAL" >/dev/null
        mv -- "$PARTIAL" "$out"
        PARTIAL=""
        log "redis: $out ($(du -h -- "$out" | cut -f1))"
    elif ((redis)); then
        log "redis: not configured (in-process broker), skipped"
    fi

    # Retention: the guide's 30 days (-mtime +N), for this script's files only.
    find "$dir" -maxdepth 1 -type f \( -name 'db_backup_*.gz' -o -name 'redis_backup_*.rdb' \) \
        -mtime +"$retention" -print -delete | sed 's/^/removed (older than '"$retention"' days): /'
    find "$dir" -maxdepth 1 -type f \( -name '*.partial' -o -name '.db_backup_*.sqlite' \) -mtime +1 -delete

    log "Backup completed: $date"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    backup_main "$@"
fi
