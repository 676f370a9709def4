#!/usr/bin/env bash
# AICode Manager restore: puts a file written by scripts/backup.sh back, after the operations guide.
#
#   scripts/restore.sh [--config PATH] [--database-url URL] [--yes] FILE
#   scripts/restore.sh [--redis-dir DIR] [--yes] redis_backup_<date>.rdb
#
#   db_backup_<date>.sql.gz     PostgreSQL: gunzip -c FILE | psql, in one transaction, stopping at the first
#                               error. The dump drops and recreates the objects it holds, so the target may be
#                               the live database or a freshly created empty one.
#   db_backup_<date>.sqlite.gz  SQLite (also a plain .sqlite/.db file): checked with PRAGMA integrity_check,
#                               then copied over the database with sqlite3 .restore (python3's backup API
#                               when the CLI is absent); the database it replaces is kept beside it as
#                               <name>.pre-restore-<date>.
#   redis_backup_<date>.rdb     Redis: copied to <redis dir>/dump.rdb (the guide's steps). Redis must be stopped
#                               first (sudo systemctl stop redis-server), and started again afterwards.
#
# The database is the app's, resolved exactly as scripts/backup.sh resolves it (DATABASE_URL, the config file,
# .env; --database-url picks another, e.g. a scratch database). Stop the app (and workers) first. Without
# --yes (or RESTORE_YES=1) it asks on a terminal and refuses otherwise. Environment: AICM_HOME, AICM_PYTHON,
# SQLITE3_BIN, REDIS_DIR (/var/lib/redis), REDIS_DBFILENAME (dump.rdb). Secrets are never printed.
set -euo pipefail

SCRIPT_DIR=$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/backup.sh
source "$SCRIPT_DIR/backup.sh"

confirm() {  # confirm WHAT: --yes, RESTORE_YES=1, or "yes" typed on a terminal
    if ((ASSUME_YES)) || [[ "${RESTORE_YES:-}" == 1 ]]; then
        return 0
    fi
    [[ -t 0 ]] || die "refusing to overwrite $1 without --yes (no terminal to ask on)"
    local answer
    read -r -p "This overwrites $1. Type 'yes' to go on: " answer
    [[ "$answer" == yes ]] || die "cancelled"
}

restore_postgres() {
    local file=$1
    command -v psql >/dev/null 2>&1 || die "psql not found (Debian: apt-get install postgresql-client)"
    gzip -t -- "$file" || die "$file is not a valid gzip file"
    confirm "the PostgreSQL database $TARGET_DB"
    log "Restoring $file into $TARGET_DB"
    gunzip -c -- "$file" \
        | PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning" \
            psql -X -q -v ON_ERROR_STOP=1 --single-transaction -o /dev/null
}

sqlite_check() {  # sqlite_check FILE: PRAGMA integrity_check says ok
    local result
    result=$("$(python_bin)" - "$1" <<'PY'
import sqlite3
import sys
from pathlib import Path

try:
    db = sqlite3.connect(Path(sys.argv[1]).absolute().as_uri() + "?mode=ro", uri=True)
    print(db.execute("PRAGMA integrity_check").fetchone()[0])
except sqlite3.DatabaseError as exc:
    print(exc)
PY
    )
    [[ "$result" == ok ]] || die "$1 is not a sound SQLite database: $result"
}

restore_sqlite() {
    local file=$1 target=$SQLITE_PATH copy
    copy=$(mktemp "${TMPDIR:-/tmp}/aicm-restore.XXXXXX")
    RESTORE_TMP=$copy
    if [[ "$file" == *.gz ]]; then
        gzip -t -- "$file" || die "$file is not a valid gzip file"
        gunzip -c -- "$file" >"$copy"
    else
        cp -- "$file" "$copy"
    fi
    sqlite_check "$copy"
    confirm "the SQLite database $target"
    mkdir -p -- "$(dirname -- "$target")"
    if [[ -f "$target" ]]; then
        local keep
        keep="$target.pre-restore-$(date +%Y%m%d_%H%M%S)"
        sqlite_copy "$target" "$keep" && log "kept the database it replaces as $keep"
    else
        # A write-ahead log left by a deleted database must not be replayed into the restored one.
        rm -f -- "$target-wal" "$target-shm" "$target-journal"
    fi
    log "Restoring $file into $TARGET_DB"
    sqlite_copy "$copy" "$target"
    sqlite_check "$target"
}

restore_redis() {
    local file=$1 dir=${REDIS_DIR:-/var/lib/redis} name=${REDIS_DBFILENAME:-dump.rdb}
    [[ "$(head -c 5 -- "$file")" == REDIS ]] || die "$file is not a Redis RDB file"
    [[ -d "$dir" ]] || die "no Redis data directory $dir (set --redis-dir)"
    if [[ -n "${TARGET_REDIS:-}" ]] && command -v redis-cli >/dev/null 2>&1; then
        local -a args
        mapfile -t args < <(redis_args)
        if with_timeout 5 redis-cli "${args[@]}" ping >/dev/null 2>&1; then
            die "Redis at ${TARGET_REDIS#redis } is running: stop it first (sudo systemctl stop redis-server)"
        fi
    fi
    [[ ! -e "$dir/appendonlydir" && ! -e "$dir/appendonly.aof" ]] \
        || log "warning: $dir holds an append-only file, which Redis loads instead of $name (appendonly yes)"
    confirm "the Redis data file $dir/$name"
    cp -- "$file" "$dir/.$name.restore"
    if ((EUID == 0)) && id redis >/dev/null 2>&1; then
        chown redis:redis "$dir/.$name.restore"
    fi
    mv -- "$dir/.$name.restore" "$dir/$name"
    log "Restored $file to $dir/$name; start Redis again (sudo systemctl start redis-server)"
}

restore_main() {
    local config="" database_url="" file=""
    ASSUME_YES=0
    while (($#)); do
        case $1 in
            --config) config=${2:?--config needs a path}; shift 2 ;;
            --database-url) database_url=${2:?--database-url needs a URL}; shift 2 ;;
            --redis-dir) REDIS_DIR=${2:?--redis-dir needs a directory}; shift 2 ;;
            --yes|-y) ASSUME_YES=1; shift ;;
            -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; return 0 ;;
            -*) die "unknown option: $1 (see --help)" ;;
            *) [[ -z "$file" ]] || die "one backup file at a time"; file=$1; shift ;;
        esac
    done
    [[ -n "$file" ]] || die "which backup file? (see --help)"
    [[ -f "$file" ]] || die "no such file: $file"
    file=$(realpath -- "$file")
    [[ -z "$config" ]] || config=$(realpath -m -- "$config")
    [[ -z "${REDIS_DIR:-}" ]] || REDIS_DIR=$(realpath -m -- "$REDIS_DIR")
    [[ -z "$database_url" ]] || export DATABASE_URL="$database_url"
    cd -- "${AICM_HOME:-$PROJECT_DIR}"
    RESTORE_TMP=""
    trap 'if [[ -n "${RESTORE_TMP:-}" ]]; then rm -f -- "$RESTORE_TMP"; fi' EXIT
    resolve_targets "$config"

    case $(basename -- "$file") in
        *.rdb)
            restore_redis "$file" ;;
        *.sql.gz|*.sql)
            [[ $DB_KIND == postgres ]] || die "$file is a PostgreSQL dump but the database is $TARGET_DB"
            if [[ "$file" == *.sql ]]; then
                local gz
                gz=$(mktemp "${TMPDIR:-/tmp}/aicm-restore.XXXXXX")
                RESTORE_TMP=$gz
                gzip -c -- "$file" >"$gz"
                file=$gz
            fi
            restore_postgres "$file" ;;
        *.sqlite.gz|*.sqlite|*.db|*.db.gz)
            [[ $DB_KIND == sqlite ]] || die "$file is a SQLite backup but the database is $TARGET_DB"
            restore_sqlite "$file" ;;
        *)
            die "unknown backup kind: $file (expected .sql.gz, .sqlite.gz or .rdb)" ;;
    esac
    [[ "$file" == *.rdb ]] || log "Restore completed. If this backup predates the installed version: aicli-api migrate"
}

restore_main "$@"
