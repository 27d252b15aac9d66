#!/usr/bin/env bash
# A second MariaDB server for the CDC domain's second cluster (platform/catalogs/cdc: cluster
# "second"): port 3307, its own data directory, socket, pid file and log, server_id 2 and a
# row-based binlog with full row images and column metadata (the capture needs all three).
# Idempotent: does nothing when the server already answers with these settings.
# It reads no option file (--no-defaults): /etc/mysql/my.cnf sets port 3306 and the first
# server's datadir.
set -euo pipefail

PORT="${MARIADB2_PORT:-3307}"
DATADIR="${MARIADB2_DATADIR:-/var/lib/mysql-cdc2}"
RUNDIR="${MARIADB2_RUNDIR:-/run/mysqld}"
SOCKET="$RUNDIR/mysqld-cdc2.sock"
PIDFILE="$RUNDIR/mysqld-cdc2.pid"
LOGDIR="${MARIADB2_LOGDIR:-/var/log/mysql}"
LOG="$LOGDIR/cdc2-error.log"
RUN_USER="${MARIADB2_USER:-mysql}"

log() { echo "mariadb2: $*"; }
fail() { echo "mariadb2: $*" >&2; [ -f "$LOG" ] && tail -n 20 "$LOG" >&2; exit 1; }

# Over TCP as the platform connects (root, empty password).
tcp_sql() { mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P "$PORT" -uroot -N -e "$1" 2>/dev/null; }
# Over the socket: mariadb-install-db's root authenticates by unix_socket only.
socket_sql() { mariadb --no-defaults --socket="$SOCKET" -uroot -N -e "$1"; }
# Over the socket: TCP refuses root until root@127.0.0.1 exists (error 1130, not "denied").
answers() { mariadb-admin --no-defaults --socket="$SOCKET" -uroot ping >/dev/null 2>&1; }
running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
settings_ok() {
  [ "$(tcp_sql "select concat(@@server_id, ':', @@log_bin + 0, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata)")" = "2:1ROWFULLFULL" ]
}

if settings_ok; then
  log "MariaDB on 127.0.0.1:$PORT is ready"
  exit 0
fi

mkdir -p "$RUNDIR" "$LOGDIR" "$DATADIR"
chown "$RUN_USER" "$RUNDIR" "$LOGDIR" "$DATADIR"

if ! answers && running; then
  log "waiting for the running server (pid $(cat "$PIDFILE"))"
  for _ in $(seq 120); do answers && break; sleep 0.5; done
fi
if ! answers; then
  if [ ! -d "$DATADIR/mysql" ]; then
    log "initialising $DATADIR"
    mariadb-install-db --no-defaults --user="$RUN_USER" --datadir="$DATADIR" \
      --auth-root-authentication-method=socket --skip-test-db >"$LOGDIR/cdc2-install.log" 2>&1 ||
      fail "mariadb-install-db failed; see $LOGDIR/cdc2-install.log"
  fi
  log "starting MariaDB on 127.0.0.1:$PORT (log: $LOG)"
  # setsid: the server outlives this script and the shell that ran it.
  setsid /usr/sbin/mariadbd --no-defaults \
    --user="$RUN_USER" --datadir="$DATADIR" --socket="$SOCKET" --pid-file="$PIDFILE" \
    --port="$PORT" --bind-address=127.0.0.1 --skip-name-resolve --log-error="$LOG" \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
    --server-id=2 --log-bin=mysql-bin --binlog-format=ROW --binlog-row-image=FULL \
    --binlog-row-metadata=FULL --binlog-expire-logs-seconds=172800 \
    --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
  for _ in $(seq 120); do answers && break; sleep 0.5; done
  answers || fail "MariaDB on port $PORT did not start; see $LOG"
fi

# root over TCP with an empty password, as on the first server (skip-name-resolve: the
# client's host is 127.0.0.1, never 'localhost').
if ! tcp_sql "select 1" >/dev/null; then
  log "granting root@127.0.0.1 (empty password)"
  socket_sql "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
              GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;" ||
    fail "could not create root@127.0.0.1 over $SOCKET"
fi
settings_ok || fail "MariaDB on port $PORT runs, but not with server_id 2 and a ROW/FULL/FULL binlog (started by something else?)"
log "MariaDB on 127.0.0.1:$PORT is ready"
