#!/usr/bin/env bash
# AICode Manager security check report, after the operations guide: pending system updates, failed logins and
# the other security events of the last 24 hours, the IPs that hit the rate limit most, and the TLS
# certificate's expiry.
#
#   scripts/security_check.sh [--log FILE|-] [--hours N] [--cert PEM]
#   docker compose -f deploy/docker-compose.prod.yml logs --no-log-prefix --since 24h app | scripts/security_check.sh --log -
#
# It reads this system's JSON log lines (one object per line with an "event" field: auth_failed,
# auth_succeeded, rate_limit_exceeded, token_reuse_detected, permission_denied, account_locked, each with
# "timestamp" and "ip"); other lines are ignored. FILE's rotated siblings (FILE.1, FILE.2, ...) are read too.
#
# Environment: LOG_FILE (/var/log/aicli-web/app.log, the guide's logging.file.path), SINCE_HOURS (24),
# SSL_CERT (/etc/letsencrypt/live/$DOMAIN/cert.pem), DOMAIN (your-domain.com), AICM_PYTHON (python3).
# Exit 0 with the report; 1 only on a usage error. Log lines carry no secrets (the app redacts them), and
# this report prints only times, events, IPs, user ids and reasons.
set -euo pipefail

log_file=${LOG_FILE:-/var/log/aicli-web/app.log}
hours=${SINCE_HOURS:-24}
cert=${SSL_CERT:-/etc/letsencrypt/live/${DOMAIN:-your-domain.com}/cert.pem}
while (($#)); do
    case $1 in
        --log) log_file=${2:?--log needs a file or -}; shift 2 ;;
        --hours) hours=${2:?--hours needs a number}; shift 2 ;;
        --cert) cert=${2:?--cert needs a PEM file}; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "security_check.sh: unknown argument: $1 (see --help)" >&2; exit 1 ;;
    esac
done
[[ "$hours" =~ ^[0-9]+$ ]] || { echo "security_check.sh: --hours must be a whole number" >&2; exit 1; }

echo "===== Security Check Report ====="
echo "Date: $(date)"
echo

echo "1. System Updates:"
if command -v apt >/dev/null 2>&1; then
    # The guide's count, less apt's "Listing..." header line.
    echo "$(apt list --upgradable 2>/dev/null | grep -c -v '^Listing' || true) package(s) can be upgraded"
elif command -v dnf >/dev/null 2>&1; then
    echo "$(dnf -q check-update 2>/dev/null | grep -c '\S' || true) package(s) can be upgraded"
else
    echo "no apt or dnf here: check updates with the system's package manager"
fi
echo

if [[ "$log_file" == - ]]; then
    sources=(-)
else
    sources=()
    [[ -f "$log_file" ]] && sources+=("$log_file")
    for rotated in "$log_file".[0-9]*; do
        [[ -f "$rotated" && "$rotated" =~ \.[0-9]+$ ]] && sources+=("$rotated")
    done
fi
if ((${#sources[@]} == 0)); then
    echo "2. Failed Login Attempts (last ${hours}h):"
    echo "log file $log_file not found (set --log or LOG_FILE; logging.file.enabled must be true)"
    echo
    echo "3. Suspicious IPs:"
    echo "no log to read"
else
    # The program goes in with -c, not on stdin: with --log - stdin is the log being read.
    report=$(cat <<'PY'
import json
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta

hours, paths = int(sys.argv[1]), sys.argv[2:]
since = datetime.now(UTC) - timedelta(hours=hours)
EVENTS = ("auth_failed", "account_locked", "token_reuse_detected", "permission_denied", "rate_limit_exceeded")
counts, by_ip, failed, other, unreadable = Counter(), Counter(), [], [], 0


def when(value):
    try:
        stamp = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


for path in paths:
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8", errors="replace")
    with stream:
        for line in stream:
            start = line.find("{")
            if start < 0 or '"event"' not in line:
                continue
            try:
                entry = json.loads(line[start:])
            except ValueError:
                unreadable += 1
                continue
            event = entry.get("event") if isinstance(entry, dict) else None
            if event not in EVENTS:
                continue
            stamp = when(entry.get("timestamp"))
            if stamp is None or stamp < since:
                continue
            counts[event] += 1
            ip = entry.get("ip") or "-"
            if event == "rate_limit_exceeded":
                by_ip[ip] += 1
            row = (stamp, event, ip, entry.get("user_id") or "-", entry.get("email") or "", entry.get("reason") or "")
            if event == "auth_failed":
                failed.append(row)
            elif event != "rate_limit_exceeded":
                other.append(row)


def show(rows):
    for stamp, event, ip, user, email, reason in sorted(rows)[-10:]:
        text = f"  {stamp.isoformat().replace('+00:00', 'Z')}  {event:<20} ip={ip} user_id={user}"
        print(text + (f" email={email}" if email else "") + (f" reason={reason}" if reason else ""))


print(f"2. Failed Login Attempts (last {hours}h): {counts['auth_failed']}")
show(failed)
print()
print(f"3. Suspicious IPs (rate_limit_exceeded, last {hours}h):")
for ip, count in by_ip.most_common(5):
    print(f"  {count:>6}  {ip}")
if not by_ip:
    print("  none")
print()
print(f"   Other security events (last {hours}h): " + ", ".join(f"{e} {counts[e]}" for e in EVENTS[1:4]))
show(other)
if unreadable:
    print(f"   ({unreadable} line(s) with an event could not be parsed)")
PY
    )
    "${AICM_PYTHON:-python3}" -c "$report" "$hours" "${sources[@]}"
fi
echo

echo "4. SSL Certificate Expiry:"
if [[ -r "$cert" ]] && command -v openssl >/dev/null 2>&1; then
    openssl x509 -in "$cert" -noout -dates
    if ! openssl x509 -in "$cert" -noout -checkend $((30 * 86400)) >/dev/null; then
        echo "WARNING: the certificate expires within 30 days (certbot renew)"
    fi
else
    echo "certificate $cert not readable (set --cert, SSL_CERT or DOMAIN)"
fi

echo "===== End of Report ====="
