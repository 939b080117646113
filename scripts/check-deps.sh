#!/usr/bin/env bash
# Checks the dependency tree against deny.toml with cargo-deny: licenses (only those listed),
# bans (crates the project keeps out, `*` versions) and sources (crates.io only). These need no
# network; security advisories, which need the advisory database fetched, are not checked here.
# cargo-deny is built from crates.io into .tools/bin when missing or of another version (a few
# minutes, once per machine); after that it fetches nothing of its own.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

# Pinned, so every machine checks the same way (it builds with Rust 1.88 or newer).
CARGO_DENY_VERSION=0.20.2
CARGO_DENY="$TOOLS_DIR/bin/cargo-deny"

if [ "$("$CARGO_DENY" --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
    log "building cargo-deny $CARGO_DENY_VERSION from crates.io into $TOOLS_DIR/bin (a few minutes, once)"
    cargo install --locked --quiet --root "$TOOLS_DIR" --version "$CARGO_DENY_VERSION" cargo-deny ||
        die "cannot install cargo-deny $CARGO_DENY_VERSION"
fi
"$CARGO_DENY" --version >/dev/null || die "$CARGO_DENY does not run"

# cargo-deny reads the tree with `cargo metadata`: --locked keeps it from changing Cargo.lock; the
# crates it reads are the ones the build fetches from crates.io anyway.
"$CARGO_DENY" --locked --log-level warn check --hide-inclusion-graph bans licenses sources ||
    die "the dependency tree breaks deny.toml (above)"
