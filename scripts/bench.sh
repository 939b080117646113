#!/usr/bin/env bash
# Benchmarks both services: builds in release mode, starts them on free ports against fresh
# databases of their own (bench_wallet, bench_reservation) and a Redis key prefix of their own,
# runs every load scenario of the bench crate with its raw baseline (pgbench of the same SQL,
# redis-benchmark of the same lock commands) in the same run, and prints the table. It writes
# bench/results/latest.{md,json} and the table in bench/README.md. Arguments go to `bench run`
# (e.g. `--scale 0.2` for a quick look). Stops what it started, never the shared PostgreSQL
# or Redis.
#
# The services run as production runs them: TLS, mutual TLS to the wallet, every call with a
# token (each user's own; the development PKI of scripts/dev-pki.sh in .tools/pki). A second
# pair of the same build runs with INSECURE (plaintext, no caller checks) on the same databases,
# and the report compares the two on the same work, in the same run: the cost of TLS and tokens.
# A third reservation-svc, the production one's twin with a Redis where nothing listens and
# SEAT_LOCK_FALLBACK=postgres, takes the stampede and the distinct seats again: the cost of
# seat locks in Postgres during a Redis outage.
# The waiting rooms follow, through the production reservation-svc: Enter with a million users
# queued, position streams on one replica, holds with an admission token.
# Last, the plaintext reservation-svc takes the distinct-seat load again while five attacks run
# against it at once (the abuse scenario; its attackers speak plaintext HTTP/2).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
run_started=$(date +%s)

WALLET_DB=${BENCH_WALLET_DB:-bench_wallet}
RESERVATION_DB=${BENCH_RESERVATION_DB:-bench_reservation}
PG_URL="postgres://postgres@$PG_HOST:$PG_PORT"
PKI="$TOOLS_DIR/pki"

# Becomes service $2 of pair $1 (production or plaintext) with the rest as its arguments:
# production with the development TLS and token settings (the waiting rooms' token keys among
# them), plaintext with INSECURE and the same keys. Run it in a
# subshell (`&`, or parentheses), whose pid is then the service's.
service() {
    local pair=$1 name=$2
    shift 2
    if [ "$pair" = production ]; then
        set -a
        # shellcheck disable=SC1090
        . "$PKI/${name%-svc}.env"
        set +a
    else
        export INSECURE=true
        # The production pair's waiting-room keys: a token one replica gives, any takes.
        export ADMISSION_TOKEN_KEYS_FILE="$PKI/admission-keys.json"
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
command -v openssl >/dev/null || apt_install openssl
scripts/dev-pki.sh "$PKI" >/dev/null

log "building (release)"
cargo build --release --locked -p wallet-svc -p reservation-svc -p bench

log "fresh databases $WALLET_DB and $RESERVATION_DB"
for db in "$WALLET_DB" "$RESERVATION_DB"; do
    psql -X -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres \
        -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" -c "CREATE DATABASE \"$db\""
done

# Sets variable $1 to a port nothing listens on, not handed out before in this run.
taken_ports=" "
free_port() {
    local -n chosen=$1
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        if [[ "$taken_ports" != *" $port "* ]] && ! port_open 127.0.0.1 "$port"; then
            taken_ports+="$port "
            chosen=$port
            return
        fi
    done
}
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

# Waits until service $2 of pair $1 on port $3 (pid $4) reports SERVING (its own health-check
# subcommand asks); its log is $5 (by default the pair's log of that service).
wait_serving() {
    local pair=$1 name=$2 port=$3 pid=$4 log_file=${5:-$LOG_DIR/$1-$2.log}
    for _ in $(seq 1 150); do
        (service "$pair" "$name" health-check --listen-addr "127.0.0.1:$port") >/dev/null 2>&1 && return
        kill -0 "$pid" 2>/dev/null || { cat "$log_file" >&2; die "$name ($pair) exited"; }
        sleep 0.2
    done
    cat "$log_file" >&2
    die "$name ($pair) did not report SERVING"
}

# Starts pair $1: a wallet-svc and the reservation-svc that pays through it, on free ports.
# Sets ${1}_wallet_port, ${1}_reservation_port, ${1}_reservation_metrics_port and the pids.
start_pair() {
    local pair=$1 scheme=http host=127.0.0.1
    if [ "$pair" = production ]; then
        scheme=https host=localhost
    fi
    local wallet_port wallet_metrics reservation_port reservation_metrics
    free_port wallet_port
    free_port wallet_metrics
    free_port reservation_port
    free_port reservation_metrics
    log "starting $pair wallet-svc on 127.0.0.1:$wallet_port and reservation-svc on 127.0.0.1:$reservation_port"
    service "$pair" wallet-svc \
        --listen-addr "127.0.0.1:$wallet_port" \
        --database-url "$PG_URL/$WALLET_DB" \
        --metrics-addr "127.0.0.1:$wallet_metrics" \
        >"$LOG_DIR/$pair-wallet-svc.log" 2>&1 &
    local wallet_pid=$!
    pids+=("$wallet_pid")
    service "$pair" reservation-svc \
        --listen-addr "127.0.0.1:$reservation_port" \
        --database-url "$PG_URL/$RESERVATION_DB" \
        --metrics-addr "127.0.0.1:$reservation_metrics" \
        --redis-url "redis://$REDIS_HOST:$REDIS_PORT" \
        --seat-lock-prefix "$REDIS_PREFIX" \
        --wallet-endpoint "$scheme://$host:$wallet_port" \
        >"$LOG_DIR/$pair-reservation-svc.log" 2>&1 &
    local reservation_pid=$!
    pids+=("$reservation_pid")
    wait_serving "$pair" wallet-svc "$wallet_port" "$wallet_pid"
    wait_serving "$pair" reservation-svc "$reservation_port" "$reservation_pid"
    printf -v "${pair}_wallet" '%s' "$scheme://$host:$wallet_port"
    printf -v "${pair}_reservation" '%s' "$scheme://$host:$reservation_port"
    printf -v "${pair}_reservation_metrics" '%s' "127.0.0.1:$reservation_metrics"
    printf -v "${pair}_wallet_pid" '%s' "$wallet_pid"
    printf -v "${pair}_reservation_pid" '%s' "$reservation_pid"
}
# The production pair first: it makes the databases' schema (migrations), the plaintext pair
# then finds it made.
start_pair production
start_pair plaintext

# The production reservation-svc's twin whose Redis is out of reach (nothing listens on its
# port), with SEAT_LOCK_FALLBACK=postgres: the stampede and distinct seats run through it too.
free_port degraded_port
free_port degraded_metrics
free_port unreachable_redis
log "starting reservation-svc with seat locks in Postgres on 127.0.0.1:$degraded_port"
service production reservation-svc \
    --listen-addr "127.0.0.1:$degraded_port" \
    --database-url "$PG_URL/$RESERVATION_DB" \
    --metrics-addr "127.0.0.1:$degraded_metrics" \
    --redis-url "redis://127.0.0.1:$unreachable_redis" \
    --seat-lock-fallback postgres \
    --seat-lock-prefix "$REDIS_PREFIX" \
    --wallet-endpoint "$production_wallet" \
    >"$LOG_DIR/degraded-reservation-svc.log" 2>&1 &
degraded_pid=$!
pids+=("$degraded_pid")
wait_serving production reservation-svc "$degraded_port" "$degraded_pid" "$LOG_DIR/degraded-reservation-svc.log"

revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- . ':!bench/results' ':!bench/README.md' 2>/dev/null || revision+="+changes"

log "running the scenarios and their baselines"
target/release/bench run \
    --wallet "$production_wallet" \
    --reservation "$production_reservation" \
    --reservation-metrics "$production_reservation_metrics" \
    --wallet-pid "$production_wallet_pid" \
    --reservation-pid "$production_reservation_pid" \
    --pki "$PKI" \
    --plaintext-wallet "$plaintext_wallet" \
    --plaintext-reservation "$plaintext_reservation" \
    --plaintext-wallet-pid "$plaintext_wallet_pid" \
    --plaintext-reservation-pid "$plaintext_reservation_pid" \
    --plaintext-reservation-metrics "$plaintext_reservation_metrics" \
    --degraded-reservation "https://localhost:$degraded_port" \
    --degraded-reservation-pid "$degraded_pid" \
    --degraded-reservation-metrics "127.0.0.1:$degraded_metrics" \
    --wallet-database-url "$PG_URL/$WALLET_DB" \
    --reservation-database-url "$PG_URL/$RESERVATION_DB" \
    --admin-database-url "$PG_URL/postgres" \
    --redis-host "$REDIS_HOST" \
    --redis-port "$REDIS_PORT" \
    --redis-prefix "$REDIS_PREFIX" \
    --out-dir bench/results \
    --readme bench/README.md \
    --work-dir target/bench \
    --command-line "./scripts/bench.sh${*:+ $*}" \
    --revision "$revision" \
    "$@"

stop_all
log "done in $(($(date +%s) - run_started)) s: bench/results/latest.md, bench/results/latest.json, bench/README.md"
