#!/usr/bin/env bash
# Runs the system locally: PostgreSQL and Redis (started, or installed and started, when not
# already running), the databases and their migrations, demo data, and the services in the
# foreground with their logs. Prints grpcurl commands to try. Ctrl-C stops everything it started.
#
# Secure, as production runs: TLS on both services, mutual TLS from reservation-svc to
# wallet-svc, and callers' tokens checked, with a development PKI and token key made by
# scripts/dev-pki.sh in .tools/pki (kept across runs). `./scripts/up.sh --insecure` runs them
# in plaintext without caller checks instead.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

insecure=false
case "${1:-}" in
    --insecure) insecure=true ;;
    "") ;;
    *) die "usage: $0 [--insecure]" ;;
esac

export WALLET_LISTEN_ADDR=${WALLET_LISTEN_ADDR:-0.0.0.0:50052}
export WALLET_DATABASE_URL=${WALLET_DATABASE_URL:-postgres://postgres@$PG_HOST:$PG_PORT/wallet}
export RESERVATION_LISTEN_ADDR=${RESERVATION_LISTEN_ADDR:-0.0.0.0:50051}
export RESERVATION_DATABASE_URL=${RESERVATION_DATABASE_URL:-postgres://postgres@$PG_HOST:$PG_PORT/reservation}
export REDIS_URL=${REDIS_URL:-redis://$REDIS_HOST:$REDIS_PORT}
# An empty metrics address (set, but empty) serves no /metrics.
export WALLET_METRICS_ADDR=${WALLET_METRICS_ADDR-0.0.0.0:9092}
export RESERVATION_METRICS_ADDR=${RESERVATION_METRICS_ADDR-0.0.0.0:9091}
export RUST_LOG=${RUST_LOG:-info}
WALLET_PORT=${WALLET_LISTEN_ADDR##*:}
WALLET=127.0.0.1:$WALLET_PORT
RESERVATION_PORT=${RESERVATION_LISTEN_ADDR##*:}
RESERVATION=127.0.0.1:$RESERVATION_PORT
RESERVATION_METRICS=127.0.0.1:${RESERVATION_METRICS_ADDR##*:}

ports=("wallet-svc $WALLET_PORT WALLET_LISTEN_ADDR" "reservation-svc $RESERVATION_PORT RESERVATION_LISTEN_ADDR")
[ -n "$WALLET_METRICS_ADDR" ] && ports+=("wallet-svc ${WALLET_METRICS_ADDR##*:} WALLET_METRICS_ADDR")
[ -n "$RESERVATION_METRICS_ADDR" ] && ports+=("reservation-svc ${RESERVATION_METRICS_ADDR##*:} RESERVATION_METRICS_ADDR")
for taken in "${ports[@]}"; do
    set -- $taken
    if port_open 127.0.0.1 "$2"; then
        die "port $2 is already taken (another $1?): stop that process, or choose another address with $3=0.0.0.0:PORT"
    fi
done

ensure_rust
ensure_postgres
ensure_redis
ensure_databases wallet reservation
ensure_grpcurl

log "building (release)"
cargo build --release --locked -p wallet-svc -p reservation-svc
log "migrating the databases"
target/release/wallet-svc migrate
target/release/reservation-svc migrate

pids=()
stop_all() {
    trap - INT TERM EXIT
    if [ ${#pids[@]} -gt 0 ]; then
        log "stopping"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap stop_all INT TERM EXIT

PKI="$TOOLS_DIR/pki"
if $insecure; then
    export INSECURE=true
    export WALLET_ENDPOINT=${WALLET_ENDPOINT:-http://127.0.0.1:$WALLET_PORT}
    GRPC=("$GRPCURL" -plaintext)
    AS_ADMIN=()
else
    scripts/dev-pki.sh "$PKI"
    GRPC=("$GRPCURL" -cacert "$PKI/ca.pem" -cert "$PKI/admin.pem" -key "$PKI/admin-key.pem")
    AS_ADMIN=(-H "authorization: Bearer $(scripts/dev-token.sh "$PKI" 1 admin)")
fi

# Runs service $1 with its development settings (secure) or as it is (--insecure).
run_service() {
    if ! $insecure; then
        set -a
        # shellcheck disable=SC1090
        . "$PKI/${1%-svc}.env"
        set +a
        [ "$1" = reservation-svc ] && export WALLET_ENDPOINT=https://localhost:$WALLET_PORT
    fi
    exec "target/release/$1"
}

# The prefixing seds ignore Ctrl-C (it reaches the whole process group): they end when their
# service closes its output, so the services' shutdown lines are still shown.
(run_service wallet-svc) > >(trap '' INT; exec sed -u 's/^/[wallet] /') 2>&1 &
pids+=($!)
(run_service reservation-svc) > >(trap '' INT; exec sed -u 's/^/[reservation] /') 2>&1 &
pids+=($!)

# Waits until the server at $2 reports SERVING; $1 names it, $3 is its pid.
wait_serving() {
    log "waiting for $1 to report SERVING"
    for _ in $(seq 1 150); do
        if "${GRPC[@]}" "$2" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then
            return
        fi
        kill -0 "$3" 2>/dev/null || die "$1 exited; see its log above"
        sleep 0.2
    done
    die "$1 did not report SERVING; see its log above"
}
wait_serving wallet-svc "$WALLET" "${pids[0]}"
wait_serving reservation-svc "$RESERVATION" "${pids[1]}"

# Demo data, made once: user 1 starts with 1000 points (the key makes a rerun a no-op), and a
# concert with one schedule of 100 seats at 100 points.
"${GRPC[@]}" "${AS_ADMIN[@]}" -d '{"user_id": 1, "amount": 1000, "idempotency_key": "demo-seed-user-1"}' \
    "$WALLET" ticketing.wallet.v1.WalletService/Charge >/dev/null
if ! "${GRPC[@]}" "${AS_ADMIN[@]}" "$RESERVATION" ticketing.reservation.v1.ReservationService/ListConcerts |
    grep -q '"id"'; then
    concert_id=$("${GRPC[@]}" "${AS_ADMIN[@]}" -d '{"title": "Demo concert"}' "$RESERVATION" \
        ticketing.reservation.v1.ReservationService/CreateConcert | sed -n 's/.*"id": "\([0-9]*\)".*/\1/p')
    starts_at=$(date -u -d '+30 days' +%Y-%m-%dT19:00:00Z)
    "${GRPC[@]}" "${AS_ADMIN[@]}" -d "{\"concert_id\": $concert_id, \"starts_at\": \"$starts_at\", \"seat_count\": 100, \"seat_price\": 100}" \
        "$RESERVATION" ticketing.reservation.v1.ReservationService/CreateSchedule >/dev/null
    log "demo concert $concert_id created with a schedule of 100 seats"
fi

path_hint=""
if ! command -v grpcurl >/dev/null; then
    path_hint="export PATH=\"$(dirname "$GRPCURL"):\$PATH\"   # the grpcurl up.sh installed"
fi
cat <<EXAMPLES

  reservation-svc is serving on $RESERVATION and wallet-svc on $WALLET (Ctrl-C stops both).
  Try, in another terminal (the README's "Try it"; paste the lines as they are, as often as
  you like: each run makes a user and keys of its own):

${path_hint:+$path_hint
}$(if $insecure; then scripts/walkthrough.sh --insecure "$RESERVATION" "$WALLET"; else scripts/walkthrough.sh "$RESERVATION" "$WALLET" "$PKI"; fi)

  Metrics: curl -s $RESERVATION_METRICS/metrics | grep '^ticketing_'
  Load: bench/README.md has a ghz line for every RPC.

EXAMPLES

# Returns when a service exits (or on Ctrl-C, through the trap).
wait -n "${pids[@]}"
