#!/usr/bin/env bash
# Benchmarks both services: builds in release mode, starts them on free ports against fresh
# databases of their own (bench_wallet, bench_reservation) and a Redis key prefix of their own,
# runs every load scenario of the bench crate with its raw baseline (pgbench of the same SQL,
# redis-benchmark of the same lock commands) in the same run, and prints the table. It writes
# bench/results/latest.{md,json} and the table in bench/README.md. Arguments go to `bench run`
# (e.g. `--scale 0.2` for a quick look). Stops what it started, never the shared PostgreSQL
# or Redis.
#
# The services run in plaintext without caller checks (INSECURE). `./scripts/bench.sh --secure`
# runs them as production does instead (TLS, mutual TLS to the wallet, every call with a
# token; the development PKI of scripts/dev-pki.sh in .tools/pki) and writes
# bench/results/secure/latest.{md,json}, leaving bench/README.md as it is.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
run_started=$(date +%s)

secure=false
if [ "${1:-}" = --secure ]; then
    secure=true
    shift
fi

WALLET_DB=${BENCH_WALLET_DB:-bench_wallet}
RESERVATION_DB=${BENCH_RESERVATION_DB:-bench_reservation}
PG_URL="postgres://postgres@$PG_HOST:$PG_PORT"
PKI="$TOOLS_DIR/pki"
if $secure; then
    scripts/dev-pki.sh "$PKI" >/dev/null
    SCHEME=https HOST=localhost OUT_DIR=bench/results/secure
    access=(--pki "$PKI" --token "$(scripts/dev-token.sh "$PKI" 1 admin)")
    readme=()
else
    # The plaintext run, without caller checks.
    export INSECURE=true
    SCHEME=http HOST=127.0.0.1 OUT_DIR=bench/results
    access=()
    readme=(--readme bench/README.md)
fi

# Becomes service $1 with the rest as its arguments, with its development TLS and token
# settings when secure: run it in a subshell (`&`, or parentheses), whose pid is then the
# service's.
service() {
    local name=$1
    shift
    if $secure; then
        set -a
        # shellcheck disable=SC1090
        . "$PKI/${name%-svc}.env"
        set +a
    fi
    exec "target/release/$name" "$@"
}

ensure_rust
ensure_postgres
ensure_redis
ensure_psql
# pgbench: on Debian it ships with the server packages that postgresql-contrib pulls in.
pgbench --version >/dev/null 2>&1 || apt_install postgresql-contrib
command -v redis-benchmark >/dev/null || apt_install redis-tools

log "building (release)"
cargo build --release --locked -p wallet-svc -p reservation-svc -p bench

log "fresh databases $WALLET_DB and $RESERVATION_DB"
for db in "$WALLET_DB" "$RESERVATION_DB"; do
    psql -X -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres \
        -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" -c "CREATE DATABASE \"$db\""
done

# A port nothing listens on, not handed out before in this run.
taken_ports=" "
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        if [[ "$taken_ports" != *" $port "* ]] && ! port_open 127.0.0.1 "$port"; then
            taken_ports+="$port "
            echo "$port"
            return
        fi
    done
}
WALLET_PORT=$(free_port)
WALLET_METRICS_PORT=$(free_port)
RESERVATION_PORT=$(free_port)
RESERVATION_METRICS_PORT=$(free_port)
LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ticketing-bench.XXXXXX")
# Keys of this run only: the locks of the services and of the raw Redis baseline.
REDIS_PREFIX="ticketing-bench:$run_started:"

pids=()
stop_all() {
    trap - INT TERM EXIT
    if [ ${#pids[@]} -gt 0 ]; then
        log "stopping the services (logs in $LOG_DIR)"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap stop_all INT TERM EXIT

log "starting wallet-svc on 127.0.0.1:$WALLET_PORT and reservation-svc on 127.0.0.1:$RESERVATION_PORT"
service wallet-svc \
    --listen-addr "127.0.0.1:$WALLET_PORT" \
    --database-url "$PG_URL/$WALLET_DB" \
    --metrics-addr "127.0.0.1:$WALLET_METRICS_PORT" \
    >"$LOG_DIR/wallet-svc.log" 2>&1 &
wallet_pid=$!
pids+=("$wallet_pid")
service reservation-svc \
    --listen-addr "127.0.0.1:$RESERVATION_PORT" \
    --database-url "$PG_URL/$RESERVATION_DB" \
    --metrics-addr "127.0.0.1:$RESERVATION_METRICS_PORT" \
    --redis-url "redis://$REDIS_HOST:$REDIS_PORT" \
    --seat-lock-prefix "$REDIS_PREFIX" \
    --wallet-endpoint "$SCHEME://$HOST:$WALLET_PORT" \
    >"$LOG_DIR/reservation-svc.log" 2>&1 &
reservation_pid=$!
pids+=("$reservation_pid")

# Waits until the service reports SERVING (its own health-check subcommand asks).
wait_serving() {
    local name=$1 port=$2 pid=$3
    for _ in $(seq 1 150); do
        (service "$name" health-check --listen-addr "127.0.0.1:$port") >/dev/null 2>&1 && return
        kill -0 "$pid" 2>/dev/null || { cat "$LOG_DIR/$name.log" >&2; die "$name exited"; }
        sleep 0.2
    done
    cat "$LOG_DIR/$name.log" >&2
    die "$name did not report SERVING"
}
wait_serving wallet-svc "$WALLET_PORT" "$wallet_pid"
wait_serving reservation-svc "$RESERVATION_PORT" "$reservation_pid"

revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- . ':!bench/results' ':!bench/README.md' 2>/dev/null || revision+="+changes"

log "running the scenarios and their baselines"
target/release/bench run \
    --wallet "$SCHEME://$HOST:$WALLET_PORT" \
    --reservation "$SCHEME://$HOST:$RESERVATION_PORT" \
    --reservation-metrics "127.0.0.1:$RESERVATION_METRICS_PORT" \
    --wallet-pid "$wallet_pid" \
    --reservation-pid "$reservation_pid" \
    --wallet-database-url "$PG_URL/$WALLET_DB" \
    --reservation-database-url "$PG_URL/$RESERVATION_DB" \
    --admin-database-url "$PG_URL/postgres" \
    --redis-host "$REDIS_HOST" \
    --redis-port "$REDIS_PORT" \
    --redis-prefix "$REDIS_PREFIX" \
    --out-dir "$OUT_DIR" \
    "${readme[@]}" \
    "${access[@]}" \
    --work-dir target/bench \
    --command-line "./scripts/bench.sh$($secure && echo ' --secure')${*:+ $*}" \
    --revision "$revision" \
    "$@"

stop_all
if $secure; then
    log "done in $(($(date +%s) - run_started)) s: $OUT_DIR/latest.md, $OUT_DIR/latest.json"
else
    log "done in $(($(date +%s) - run_started)) s: bench/results/latest.md, bench/results/latest.json, bench/README.md"
fi
