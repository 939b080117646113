#!/usr/bin/env bash
# Checks docker-compose.yml without a Docker engine: `docker compose config` (or the standalone
# `docker-compose config`, installed from Debian's packages when neither is there) parses the
# file and validates it against the Compose schema; an unknown option, a wrong type or a bad
# `depends_on` condition fails. Which variables the services read is checked by
# reservation-svc/tests/compose.rs.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    if ! command -v docker-compose >/dev/null 2>&1; then
        log "installing docker-compose (Debian package) to check the compose file"
        apt_install docker-compose
    fi
    compose=(docker-compose)
fi
"${compose[@]}" --file docker-compose.yml config --quiet \
    || die "docker-compose.yml is not a valid Compose file (see above)"
log "docker-compose.yml is valid ($("${compose[@]}" version --short 2>/dev/null || echo "${compose[*]}"))"
