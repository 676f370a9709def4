#!/usr/bin/env bash
# What `make test` can run here: the services (AICM_TEST_DATABASE_URL, AICM_TEST_REDIS_URL) and the programs
# some tests use. Without them those tests skip; with AICM_REQUIRE_SERVICES=1 they fail, so this check then
# stops before the suite starts and names every missing piece (Debian package names).
#
#   scripts/test_prerequisites.sh        # prints what is missing (exit 0), or exit 2 under AICM_REQUIRE_SERVICES=1
set -uo pipefail

missing=()
[[ -n "${AICM_TEST_DATABASE_URL:-}" ]] || missing+=("AICM_TEST_DATABASE_URL (a PostgreSQL database the suite may wipe)")
[[ -n "${AICM_TEST_REDIS_URL:-}" ]] || missing+=("AICM_TEST_REDIS_URL (a Redis database number the suite may flush)")
need() {  # need PROGRAM PACKAGE WHY
    command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" ]] || missing+=("$1 (apt-get install $2: $3)")
}
need redis-server redis-server "tests that stop and freeze a Redis of their own"
need redis-cli redis-tools "backup and restore of Redis"
need pg_dump postgresql-client "backup and restore of PostgreSQL"
need psql postgresql-client "backup and restore of PostgreSQL"
need sqlite3 sqlite3 "backup and restore of the embedded database"
need nginx nginx "nginx -t and a proxied server on deploy/nginx/nginx.conf"
need promtool prometheus "promtool checks of deploy/prometheus/alerts.yml"
[[ -x "${AICM_CHROMIUM:-/usr/bin/chromium}" ]] || missing+=("chromium (apt-get install chromium: the web console's browser tests, tests/web)")

((${#missing[@]})) || exit 0
if [[ "${AICM_REQUIRE_SERVICES:-}" == 1 ]]; then
    echo "test: AICM_REQUIRE_SERVICES=1 needs what is missing here:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 2
fi
echo "test: the tests that need these will skip (AICM_REQUIRE_SERVICES=1 makes that an error):"
printf '  - %s\n' "${missing[@]}"
