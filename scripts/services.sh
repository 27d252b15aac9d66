#!/usr/bin/env bash
# Make sure the local servers the platform and its tests use are running and
# configured: PostgreSQL, Redis, and MariaDB with a row-based binlog (for CDC).
# Idempotent; safe to run on every `make run` / `make test`.
set -euo pipefail

log() { echo "services: $*"; }

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 60); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.5; done
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 40); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.25; done
fi

# MariaDB: the CDC capture reads the binlog, which must be row-based with full
# row images and column metadata (otherwise columns arrive as UNKNOWN_COL0...).
MARKER="# data-platform: binlog for CDC"
CNF=/etc/mysql/my.cnf
mariadb_ping() { mariadb-admin -uroot -h 127.0.0.1 ping >/dev/null 2>&1; }
start_mariadb() {
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  for _ in $(seq 120); do mariadb_ping && return 0; sleep 0.5; done
  log "MariaDB did not start; see /var/log/mysql/error.log"; return 1
}
binlog_ok() {
  [ "$(mariadb -uroot -h 127.0.0.1 -N -e "select concat(@@log_bin + 0, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata)" 2>/dev/null)" = "1ROWFULLFULL" ]
}
if ! grep -qF "$MARKER" "$CNF" 2>/dev/null; then
  log "configuring MariaDB binlog in $CNF"
  cat >> "$CNF" <<CNF

$MARKER
[mariadbd]
server_id = 1
log_bin = mysql-bin
binlog_format = ROW
binlog_row_image = FULL
binlog_row_metadata = FULL
binlog_expire_logs_seconds = 172800
CNF
fi
if mariadb_ping; then
  if ! binlog_ok; then
    log "restarting MariaDB to apply the binlog settings"
    mariadb-admin -uroot -h 127.0.0.1 shutdown
    for _ in $(seq 60); do pgrep -x mariadbd >/dev/null || break; sleep 0.5; done
    start_mariadb
  fi
else
  log "starting MariaDB"
  start_mariadb
fi
binlog_ok || { log "MariaDB binlog is not ROW/FULL/FULL after configuration"; exit 1; }
log "PostgreSQL, Redis and MariaDB (row-based binlog) are ready"
# The CDC domain's second cluster: a second MariaDB on port 3307.
"$(dirname "${BASH_SOURCE[0]}")/mariadb2.sh"
