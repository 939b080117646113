#!/usr/bin/env bash
# Runs every check and test: formatting, lints, and the whole test suite against a real
# PostgreSQL and Redis (started, or installed and started, when not already running).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

ensure_rust
ensure_postgres
ensure_redis
# The security tests make RSA keys and run scripts/dev-pki.sh, both with openssl.
command -v openssl >/dev/null || apt_install openssl

log "cargo fmt --check"
cargo fmt --all -- --check
log "kubernetes manifests"
"$REPO_ROOT/scripts/check-k8s.sh"
log "compose file"
"$REPO_ROOT/scripts/check-compose.sh"
log "Dockerfiles: hadolint"
"$REPO_ROOT/scripts/check-dockerfiles.sh"
log "dependencies: cargo deny check bans licenses sources"
"$REPO_ROOT/scripts/check-deps.sh"
log "grafana dashboard"
"$REPO_ROOT/scripts/check-dashboard.sh"
log "alerting rules"
"$REPO_ROOT/scripts/check-rules.sh"
log "documents: Try it, links"
"$REPO_ROOT/scripts/check-docs.sh"
log "protos: buf lint and breaking"
./scripts/check-protos.sh
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo test"
# The protocol model explores millions of states: it runs optimized, below.
cargo test --workspace --all-targets --locked --exclude protocol-model
log "protocol model: every interleaving of the per-commit configuration, and each seeded bug"
cargo test --release --locked -p protocol-model --all-targets -- --nocapture
log "chaos suite, short profile: Sentinel, a Postgres of its own, 45 s of faults, then the invariants"
./scripts/chaos.sh
