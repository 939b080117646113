#!/usr/bin/env bash
# Checks the gRPC contract under proto/ with the Buf CLI: `buf lint` (rules in buf.yaml) and
# `buf breaking` of the working tree against the main branch. Installs the pinned Buf under
# .tools/ when it is not there yet, from the npm registry's platform package (no node needed).
#
# Environment:
#   BUF_AGAINST  Buf input to compare with instead of main, e.g. '.git#tag=v1.2.0,subdir=proto'.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

BUF_VERSION=1.75.0
BUF="$TOOLS_DIR/buf/$BUF_VERSION/bin/buf"

# The npm platform package that ships buf for this machine, and the sha512 of its tarball as the
# registry publishes it (`npm view @bufbuild/buf-linux-<arch>@<version> dist.integrity`).
# Change these together with BUF_VERSION.
buf_package() {
    case "$(uname -m)" in
        x86_64 | amd64)
            echo "buf-linux-x64 sha512-YGGJAx0lpMCE7aMWjNOJcfoEaG/e+iYHnTC4SZ0P5eS4IffMryA9Z4/bb1m1wNXAEJ8ATFMEZOAk/5x9VE47ig==" ;;
        aarch64 | arm64)
            echo "buf-linux-aarch64 sha512-eX+XyokzJDqsNIFo8b1O3DBvbnksOozPJX4QVsNn61JqSUtWspyTNeYqwg8lRDancML+bDqZEDFPABjAsVCQGQ==" ;;
        *) die "no pinned Buf build for machine type '$(uname -m)': add its @bufbuild/buf-linux-* package to $0" ;;
    esac
}

ensure_buf() {
    if [ -x "$BUF" ]; then
        return
    fi
    [ "$(uname -s)" = Linux ] || die "installing Buf is automated on Linux only: install buf $BUF_VERSION at $BUF"
    local spec package integrity registry tmp tarball
    spec=$(buf_package)
    read -r package integrity <<<"$spec"
    registry=${npm_config_registry:-https://registry.npmjs.org/}
    registry=${registry%/}
    tarball="$package-$BUF_VERSION.tgz"
    log "installing Buf $BUF_VERSION into $TOOLS_DIR/buf (npm package @bufbuild/$package)"
    mkdir -p "$TOOLS_DIR"
    tmp=$(mktemp -d "$TOOLS_DIR/.buf-install.XXXXXX")
    # shellcheck disable=SC2064 # expand now: tmp is local
    trap "rm -rf '$tmp'" EXIT

    if ! command -v curl >/dev/null && ! command -v npm >/dev/null; then
        apt_install curl ca-certificates
    fi
    if command -v curl >/dev/null; then
        curl -fsSL --retry 3 -o "$tmp/$tarball" "$registry/@bufbuild/$package/-/$tarball" ||
            die "could not download $registry/@bufbuild/$package/-/$tarball"
    else
        local packed
        packed=$(cd "$tmp" && npm pack --silent "@bufbuild/$package@$BUF_VERSION") ||
            die "npm pack @bufbuild/$package@$BUF_VERSION failed"
        [ -f "$tmp/$packed" ] || die "npm pack did not produce the tarball it named ('$packed')"
        mv "$tmp/$packed" "$tmp/$tarball"
    fi

    local expected actual
    expected=$(printf '%s' "${integrity#sha512-}" | base64 -d | od -An -v -tx1 | tr -d ' \n')
    actual=$(sha512sum "$tmp/$tarball" | cut -d' ' -f1)
    [ "$actual" = "$expected" ] ||
        die "checksum mismatch for $tarball: expected sha512 $expected, got $actual (not installed)"

    tar -xzf "$tmp/$tarball" -C "$tmp" package/bin/buf || die "$tarball has no package/bin/buf"
    mkdir -p "$(dirname "$BUF")"
    chmod 755 "$tmp/package/bin/buf"
    mv -f "$tmp/package/bin/buf" "$BUF"
    rm -rf "$tmp"
    trap - EXIT

    local got
    got=$("$BUF" --version 2>&1) || die "the installed $BUF does not run: $got"
    [ "$got" = "$BUF_VERSION" ] || die "$BUF reports version '$got', expected $BUF_VERSION"
}

# The Buf input for proto/ as of the main branch: the local branch main; in a clone without one,
# origin/main; else HEAD (then only uncommitted changes are compared).
against_input() {
    if [ -n "${BUF_AGAINST:-}" ]; then
        echo "$BUF_AGAINST"
        return
    fi
    command -v git >/dev/null || die "git not found: buf breaking needs it to read the main branch (or set BUF_AGAINST)"
    local git_dir
    git_dir=$(git rev-parse --path-format=absolute --git-common-dir 2>/dev/null) ||
        die "$REPO_ROOT is not a git checkout: buf breaking needs the main branch to compare with (or set BUF_AGAINST)"
    if git show-ref --verify --quiet refs/heads/main; then
        echo "$git_dir#branch=main,subdir=proto"
    elif git show-ref --verify --quiet refs/remotes/origin/main; then
        log "no local branch main: comparing with origin/main"
        echo "$git_dir#ref=origin/main,subdir=proto"
    elif git rev-parse --verify --quiet HEAD >/dev/null; then
        log "no branch main nor origin/main: comparing with HEAD ($(git rev-parse --short HEAD)), so only uncommitted changes are checked"
        echo "$git_dir#ref=HEAD,subdir=proto"
    else
        die "no branch main, no origin/main and no commit at HEAD: nothing to compare proto/ with (or set BUF_AGAINST)"
    fi
}

ensure_buf

log "buf lint ($("$BUF" --version))"
if ! "$BUF" lint; then
    die "buf lint: the problems above are in proto/; fix them, or, where the fix would rename part of the API contract, add a targeted lint.ignore_only entry with its reason in buf.yaml"
fi

against=$(against_input)
log "buf breaking against $against"
if ! "$BUF" breaking --against "$against"; then
    die "buf breaking: the changes above break clients of the gRPC contract (rules: FILE in buf.yaml); keep field numbers, names and types, and add new fields/messages/RPCs instead"
fi
log "protos: lint and breaking checks passed"
