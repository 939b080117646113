#!/usr/bin/env bash
# Runs the system locally: PostgreSQL and Redis (started, or installed and started, when not
# already running), the databases and their migrations, demo data, and the services in the
# foreground with their logs. Prints grpcurl commands to try. Ctrl-C stops everything it started.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

export WALLET_LISTEN_ADDR=${WALLET_LISTEN_ADDR:-0.0.0.0:50052}
export WALLET_DATABASE_URL=${WALLET_DATABASE_URL:-postgres://postgres@$PG_HOST:$PG_PORT/wallet}
export RUST_LOG=${RUST_LOG:-info}
WALLET_PORT=${WALLET_LISTEN_ADDR##*:}
WALLET=127.0.0.1:$WALLET_PORT

if port_open 127.0.0.1 "$WALLET_PORT"; then
    die "port $WALLET_PORT is already taken (another wallet-svc?): stop that process, or choose another address with WALLET_LISTEN_ADDR=0.0.0.0:PORT"
fi

ensure_rust
ensure_postgres
ensure_redis
ensure_databases wallet
ensure_grpcurl

log "building (release)"
cargo build --release --locked -p wallet-svc
log "migrating the wallet database"
target/release/wallet-svc migrate

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

target/release/wallet-svc > >(sed -u 's/^/[wallet] /') 2>&1 &
pids+=($!)

log "waiting for wallet-svc to report SERVING"
for _ in $(seq 1 100); do
    if "$GRPCURL" -plaintext "$WALLET" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; then
        break
    fi
    kill -0 "${pids[0]}" 2>/dev/null || die "wallet-svc exited; see its log above"
    sleep 0.2
done

# Demo data: user 1 starts with 1000 points. The key makes this a no-op on later runs.
"$GRPCURL" -plaintext -d '{"user_id": 1, "amount": 1000, "idempotency_key": "demo-seed-user-1"}' \
    "$WALLET" ticketing.wallet.v1.WalletService/Charge >/dev/null

cat <<EXAMPLES

  wallet-svc is serving on $WALLET (Ctrl-C stops it). Try, in another terminal:

  grpcurl -plaintext $WALLET list
  grpcurl -plaintext $WALLET describe ticketing.wallet.v1.WalletService
  grpcurl -plaintext -d '{"user_id": 1}' $WALLET ticketing.wallet.v1.WalletService/GetBalance

  # Three concurrent uses of 30 points from a balance of 100 leave exactly 10:
  grpcurl -plaintext -d '{"user_id": 2, "amount": 100, "idempotency_key": "top-up-1"}' $WALLET ticketing.wallet.v1.WalletService/Charge
  for i in 1 2 3; do grpcurl -plaintext -d "{\"user_id\": 2, \"amount\": 30, \"idempotency_key\": \"use-\$i\", \"reference\": \"order-\$i\"}" $WALLET ticketing.wallet.v1.WalletService/Use & done; wait
  grpcurl -plaintext -d '{"user_id": 2}' $WALLET ticketing.wallet.v1.WalletService/GetBalance
  grpcurl -plaintext -d '{"user_id": 2, "page_size": 10}' $WALLET ticketing.wallet.v1.WalletService/ListTransactions

  # A refund gives a Use back, once:
  grpcurl -plaintext -d '{"user_id": 2, "idempotency_key": "refund-1", "use_idempotency_key": "use-1"}' $WALLET ticketing.wallet.v1.WalletService/Refund

  # Load (ghz reads the schema by reflection):
  ghz --insecure --call ticketing.wallet.v1.WalletService/GetBalance -d '{"user_id": 1}' -c 50 -n 20000 $WALLET

  (grpcurl here is $GRPCURL)

EXAMPLES

# Returns when a service exits (or on Ctrl-C, through the trap).
wait -n "${pids[@]}"
