#!/usr/bin/env bash
# The chaos suite: two replicas of each service on a Redis of their own (one server, a Sentinel
# set or a Cluster) and, with --own-postgres, a Postgres cluster of their own; a mixed workload
# with faults injected (the `chaos` driver); then the invariants read from both databases and a
# table. Exits non-zero on any violation. Every process it starts is stopped on exit.
#
#   scripts/chaos.sh                      # the short profile (what scripts/test.sh runs)
#   scripts/chaos.sh --soak 10m           # a soak, sampling memory, connections, descriptors
#   scripts/chaos.sh --topology cluster --fallback postgres --duration 90s --seed 7
#
# Options:
#   --topology single|sentinel|cluster   Redis of the seat locks (default sentinel)
#   --fallback fail-closed|postgres      SEAT_LOCK_FALLBACK of reservation-svc (default fail-closed)
#   --duration D                         how long the workload runs (default 45s)
#   --soak D                             a soak of D: sampled, kills spare replica 0
#   --own-postgres                       a Postgres cluster of the run's own, restarted as a fault
#   --shared-postgres                    the machine's Postgres (never restarted)
#   --seed N                             seed of the workload and the fault schedule (default 1)
#   --workers N                          concurrent workload clients (default 10)
#   --no-faults                          the workload alone
#   --keep                               keep the run directory (logs) and the databases
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

TOPOLOGY=sentinel
FALLBACK=fail-closed
DURATION=45s
SOAK=
OWN_PG=1
SEED=1
WORKERS=10
NO_FAULTS=
KEEP=
while [ $# -gt 0 ]; do
    case "$1" in
        --topology) TOPOLOGY=$2; shift 2 ;;
        --fallback) FALLBACK=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --soak) SOAK=1; DURATION=$2; shift 2 ;;
        --own-postgres) OWN_PG=1; shift ;;
        --shared-postgres) OWN_PG=; shift ;;
        --seed) SEED=$2; shift 2 ;;
        --workers) WORKERS=$2; shift 2 ;;
        --no-faults) NO_FAULTS=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
case "$TOPOLOGY" in single | sentinel | cluster) ;; *) die "--topology single|sentinel|cluster" ;; esac
case "$FALLBACK" in fail-closed | postgres) ;; *) die "--fallback fail-closed|postgres" ;; esac

ensure_rust
ensure_redis
ensure_psql
command -v redis-cli >/dev/null || apt_install redis-tools
if [ -n "$OWN_PG" ]; then
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
else
    ensure_postgres
fi

log "building the services and the chaos driver"
cargo build -q -p chaos -p wallet-svc -p reservation-svc
BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug"

RUN=$(mktemp -d "${TMPDIR:-/tmp}/chaos-$$-XXXXXX")
chmod 755 "$RUN"
mkdir -p "$RUN/pids" "$RUN/procs" "$RUN/logs"
DB_PREFIX="chaos_$$"
SUPERVISORS=()
PG_URL=

# Stops every process of the run: the supervisors first (so that nothing is started again),
# then each process by its pid, frozen ones resumed, and any process left that carries this
# run's marker in its environment.
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    # Whatever fails here, the rest of the cleanup still runs.
    set +e
    touch "$RUN/stopping"
    local pid name pids=() postgres_pid=
    # Each supervisor stops the process it started last as it goes.
    for pid in "${SUPERVISORS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        local running=
        for pid in "${SUPERVISORS[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
        [ -z "$running" ] && break
        sleep 0.1
    done
    for name in "$RUN"/pids/*.pid; do
        [ -e "$name" ] || continue
        pid=$(cat "$name")
        case "$name" in
            */postgres.pid) postgres_pid=$pid ;;
            *) pids+=("$pid") ;;
        esac
    done
    for pid in $(marked_pids); do pids+=("$pid"); done
    for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; done
    # Databases of the machine's Postgres go while it still runs; the run's own Postgres stops
    # with the rest.
    if [ -z "$OWN_PG" ] && [ -z "$KEEP" ] && [ -n "$PG_URL" ]; then
        for db in "${DB_PREFIX}_reservation" "${DB_PREFIX}_wallet"; do
            psql -X -q -d "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" \
                >/dev/null 2>&1 || true
        done
    fi
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # Postgres's fast shutdown (SIGTERM would wait for every session to end).
    if [ -n "$postgres_pid" ]; then
        kill -CONT "$postgres_pid" 2>/dev/null
        kill -INT "$postgres_pid" 2>/dev/null
        pids+=("$postgres_pid")
    fi
    for _ in $(seq 1 50); do
        local alive=
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ -z "$alive" ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}" $(marked_pids); do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$KEEP" ] || [ "$status" -ne 0 ]; then
        log "run directory (logs): $RUN"
        [ -n "$KEEP" ] || [ -n "$OWN_PG" ] || log "databases dropped; rerun with --keep to keep them"
    else
        rm -rf "$RUN"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Pids of processes whose environment carries this run's marker.
marked_pids() {
    grep -lsaF "CHAOS_RUN=$RUN" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 | grep -vx "$$" || true
}

# A free loopback port below the kernel's ephemeral range (32768 up), so that nothing takes a
# port while its server is down; none handed out twice. Sets the variable named by $1 (not in
# a subshell, which would forget the ports handed out). From 12000 up: the integration tests
# take theirs from 20000 up.
NEXT_PORT=$((12000 + RANDOM % 6000))
TAKEN_PORTS=" "
free_port() {
    local -n chosen=$1
    while :; do
        NEXT_PORT=$((NEXT_PORT + 1))
        [ "$NEXT_PORT" -lt 20000 ] || NEXT_PORT=12000
        case "$TAKEN_PORTS" in *" $NEXT_PORT "*) continue ;; esac
        if ! port_open 127.0.0.1 "$NEXT_PORT" && [ -z "$(ss -Htan "( sport = :$NEXT_PORT )" 2>/dev/null)" ]; then
            TAKEN_PORTS="$TAKEN_PORTS$NEXT_PORT "
            chosen=$NEXT_PORT
            return
        fi
    done
}

# Writes the command that starts process NAME (the rest of the arguments, run with exec after
# the environment lines read from stdin).
define() {
    local name=$1
    shift
    {
        echo '#!/usr/bin/env bash'
        echo "export CHAOS_RUN=$(printf %q "$RUN")"
        cat
        printf 'exec'
        printf ' %q' "$@"
        echo
    } >"$RUN/procs/$name.sh"
    chmod +x "$RUN/procs/$name.sh"
}

# Keeps NAME running: starts it again whenever it exits, unless $RUN/pids/NAME.down exists
# (the driver's way of keeping it down for a while) or the run is stopping. Stopped (SIGTERM),
# it stops the process it started last with signal $2 (default TERM) on its way out: even one
# it started just now, whose pid file it has not written yet.
supervise() {
    local name=$1 stop=${2:-TERM}
    (
        trap 'kill -CONT $! 2>/dev/null; kill -'"$stop"' $! 2>/dev/null; exit 0' TERM
        while [ ! -e "$RUN/stopping" ]; do
            if [ -e "$RUN/pids/$name.down" ]; then sleep 0.1; continue; fi
            "$RUN/procs/$name.sh" >>"$RUN/logs/$name.log" 2>&1 &
            local pid=$!
            echo "$pid" >"$RUN/pids/$name.pid.new"
            mv "$RUN/pids/$name.pid.new" "$RUN/pids/$name.pid"
            wait "$pid" || true
            echo "== $(date +%T.%N) exited" >>"$RUN/logs/$name.log"
            sleep 0.2
        done
    ) 2>>"$RUN/logs/supervisor.log" &
    SUPERVISORS+=($!)
}

wait_port() {
    local port=$1 what=$2
    for _ in $(seq 1 300); do port_open 127.0.0.1 "$port" && return; sleep 0.1; done
    die "$what did not come up on port $port (logs in $RUN/logs)"
}

# --- Postgres ---------------------------------------------------------------------------------
if [ -n "$OWN_PG" ]; then
    free_port PG_PORT_OWN
    PGDATA_DIR="$RUN/pg"
    mkdir -p "$PGDATA_DIR" "$RUN/pg-socket"
    as_postgres=()
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$PGDATA_DIR" "$RUN/pg-socket"
        as_postgres=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    fi
    log "initdb: Postgres of this run's own on 127.0.0.1:$PG_PORT_OWN"
    "${as_postgres[@]}" "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust \
        --no-sync -E UTF8 >"$RUN/logs/initdb.log" 2>&1 || die "initdb failed: $RUN/logs/initdb.log"
    # fsync off: a process crash loses nothing (the kernel keeps what was written); only a
    # crash of the machine would, and that is not among the faults.
    define postgres "${as_postgres[@]}" "$PG_BIN/postgres" -D "$PGDATA_DIR" -p "$PG_PORT_OWN" \
        -c listen_addresses=127.0.0.1 -c unix_socket_directories="$RUN/pg-socket" \
        -c fsync=off -c full_page_writes=off -c max_connections=200 </dev/null
    supervise postgres INT
    wait_port "$PG_PORT_OWN" postgres
    PG_URL="postgres://postgres@127.0.0.1:$PG_PORT_OWN"
    for _ in $(seq 1 100); do psql -X -q -d "$PG_URL/postgres" -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
else
    PG_URL="postgres://postgres@$PG_HOST:$PG_PORT"
fi
RESERVATION_DB="$PG_URL/${DB_PREFIX}_reservation"
WALLET_DB="$PG_URL/${DB_PREFIX}_wallet"
for db in "${DB_PREFIX}_reservation" "${DB_PREFIX}_wallet"; do
    psql -X -q -d "$PG_URL/postgres" -c "CREATE DATABASE \"$db\"" >/dev/null
done

# --- Redis --------------------------------------------------------------------------------------
REDIS_ARGS=(--bind 127.0.0.1 --save "" --appendonly no)
# Each node works in a directory of its own: a replica writes the snapshot it syncs from its
# primary there.
redis_dir() { mkdir -p "$RUN/redis/$1"; echo "$RUN/redis/$1"; }
DRIVER_REDIS=()
case "$TOPOLOGY" in
    single)
        free_port port
        define redis-0 redis-server --port "$port" --dir "$(redis_dir redis-0)" "${REDIS_ARGS[@]}" </dev/null
        supervise redis-0
        wait_port "$port" redis-0
        DRIVER_REDIS+=(--redis-node "redis-0=$port")
        REDIS_URL="redis://127.0.0.1:$port"
        ;;
    sentinel)
        free_port primary
        define redis-0 redis-server --port "$primary" --dir "$(redis_dir redis-0)" "${REDIS_ARGS[@]}" </dev/null
        supervise redis-0
        wait_port "$primary" redis-0
        DRIVER_REDIS+=(--redis-node "redis-0=$primary")
        # Replicas by command, not by their command line: a node started again (after a fault)
        # comes back a primary, empty, and Sentinel makes it a replica of whichever node is the
        # primary then (a --replicaof naming the first primary could make two nodes replicas of
        # each other).
        for n in 1 2; do
            free_port port
            define "redis-$n" redis-server --port "$port" --dir "$(redis_dir "redis-$n")" \
                "${REDIS_ARGS[@]}" </dev/null
            supervise "redis-$n"
            wait_port "$port" "redis-$n"
            redis-cli -p "$port" REPLICAOF 127.0.0.1 "$primary" >/dev/null
            DRIVER_REDIS+=(--redis-node "redis-$n=$port")
        done
        SENTINELS=()
        for n in 0 1 2; do
            free_port port
            printf '%s\n' "bind 127.0.0.1" "port $port" "dir $RUN" \
                "sentinel monitor seats 127.0.0.1 $primary 2" \
                "sentinel down-after-milliseconds seats 1000" \
                "sentinel failover-timeout seats 5000" >"$RUN/sentinel-$n.conf"
            define "sentinel-$n" redis-server "$RUN/sentinel-$n.conf" --sentinel </dev/null
            supervise "sentinel-$n"
            wait_port "$port" "sentinel-$n"
            SENTINELS+=("$port")
            DRIVER_REDIS+=(--sentinel-port "$port")
        done
        log "waiting for the sentinels to meet"
        met=
        for _ in $(seq 1 300); do
            met=1
            for port in "${SENTINELS[@]}"; do
                info=$(redis-cli -p "$port" SENTINEL MASTER seats 2>/dev/null | tr '\n' ' ')
                case "$info" in
                    *"num-other-sentinels 2 "*"num-slaves 2 "* | *"num-slaves 2 "*"num-other-sentinels 2 "*) ;;
                    *) met= ;;
                esac
            done
            [ -n "$met" ] && break
            sleep 0.1
        done
        [ -n "$met" ] || die "the sentinels did not meet"
        REDIS_URL="redis-sentinel://127.0.0.1:${SENTINELS[0]}?sentinelServiceName=seats&node=127.0.0.1:${SENTINELS[1]}&node=127.0.0.1:${SENTINELS[2]}"
        ;;
    cluster)
        NODES=()
        for n in 0 1 2 3 4 5; do
            free_port port
            free_port bus
            define "cluster-$n" redis-server --port "$port" --cluster-port "$bus" \
                --cluster-enabled yes --cluster-config-file "nodes-$port.conf" \
                --cluster-node-timeout 1000 --cluster-replica-validity-factor 0 \
                --dir "$(redis_dir "cluster-$n")" "${REDIS_ARGS[@]}" </dev/null
            supervise "cluster-$n"
            wait_port "$port" "cluster-$n"
            NODES+=("127.0.0.1:$port")
            DRIVER_REDIS+=(--redis-node "cluster-$n=$port")
        done
        redis-cli --cluster create "${NODES[@]}" --cluster-replicas 1 --cluster-yes \
            >"$RUN/logs/cluster-create.log" 2>&1 || die "redis-cli --cluster create failed"
        log "waiting for the cluster"
        ok=
        for _ in $(seq 1 300); do
            ok=1
            for node in "${NODES[@]}"; do
                redis-cli -p "${node#*:}" CLUSTER INFO 2>/dev/null | grep -q cluster_state:ok || ok=
            done
            [ -n "$ok" ] && break
            sleep 0.1
        done
        [ -n "$ok" ] || die "the cluster did not come up"
        REDIS_URL="redis-cluster://${NODES[0]}?node=${NODES[1]}&node=${NODES[2]}"
        ;;
esac

# --- the services -------------------------------------------------------------------------------
DRIVER_SERVICES=()
WALLET_PORTS=()
for n in 0 1; do
    free_port port
    WALLET_PORTS+=("$port")
    define "wallet-$n" "$BIN/wallet-svc" <<EOF
export INSECURE=true RUST_LOG=warn
export WALLET_LISTEN_ADDR=127.0.0.1:$port WALLET_METRICS_ADDR=
export WALLET_DATABASE_URL=$(printf %q "$WALLET_DB") DB_POOL_SIZE=6
EOF
    supervise "wallet-$n"
    wait_port "$port" "wallet-$n"
    DRIVER_SERVICES+=(--wallet "127.0.0.1:$port")
done
for n in 0 1; do
    free_port port
    # Payments left PAYING are taken up after 2 s, every second; holds lapse after 20 s, so
    # the sweeper has work.
    define "reservation-$n" "$BIN/reservation-svc" <<EOF
export INSECURE=true RUST_LOG=warn
export RESERVATION_LISTEN_ADDR=127.0.0.1:$port RESERVATION_METRICS_ADDR=
export RESERVATION_DATABASE_URL=$(printf %q "$RESERVATION_DB") DB_POOL_SIZE=6
export REDIS_URL=$(printf %q "$REDIS_URL") SEAT_LOCK_FALLBACK=$FALLBACK
export WALLET_ENDPOINT=http://127.0.0.1:${WALLET_PORTS[$n]}
export RECONCILE_INTERVAL=1s RECONCILE_GRACE=2s SEAT_HOLD_TTL=20s
EOF
    supervise "reservation-$n"
    wait_port "$port" "reservation-$n"
    DRIVER_SERVICES+=(--reservation "127.0.0.1:$port")
done

DRIVER_ARGS=(--run-dir "$RUN" --topology "$TOPOLOGY" --fallback "$FALLBACK" --duration "$DURATION"
    --seed "$SEED" --workers "$WORKERS" --reservation-db "$RESERVATION_DB" --wallet-db "$WALLET_DB"
    "${DRIVER_SERVICES[@]}" "${DRIVER_REDIS[@]}")
[ -n "$OWN_PG" ] && DRIVER_ARGS+=(--own-postgres-port "$PG_PORT_OWN")
[ -n "$SOAK" ] && DRIVER_ARGS+=(--soak --sample-interval 5s)
[ -n "$NO_FAULTS" ] && DRIVER_ARGS+=(--no-faults)

log "chaos: $TOPOLOGY, $FALLBACK, $DURATION, seed $SEED (logs in $RUN/logs)"
status=0
# In the background, waited for: a signal to the script alone then stops everything at once
# (bash runs a trap only once a foreground command has ended). The driver and tee carry the
# run's marker, so the cleanup stops them too.
(
    CHAOS_RUN="$RUN" "$BIN/chaos" "${DRIVER_ARGS[@]}" 2>"$RUN/logs/driver.err" |
        CHAOS_RUN="$RUN" tee "$RUN/report.txt"
) &
wait $! || status=$?
if [ "$status" -ne 0 ]; then
    tail -n 20 "$RUN/logs/driver.err" >&2
    exit "$status"
fi
