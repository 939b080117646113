#!/usr/bin/env bash
# Prints a development access token: a JWT signed (EdDSA, Ed25519) with DIR/token-key.pem from
# scripts/dev-pki.sh, valid for one hour, for user USER_ID, with ROLE in its roles when given.
# Its kid is the one in DIR/jwks.json; its issuer and audience are AUTH_ISSUER and AUTH_AUDIENCE
# from DIR/reservation.env.
#
# Usage: scripts/dev-token.sh DIR USER_ID [ROLE]
#   TOKEN=$(scripts/dev-token.sh .tools/pki 42)        user 42, no roles
#   ADMIN=$(scripts/dev-token.sh .tools/pki 1 admin)   user 1 with role admin
# grpcurl sends it with -H "authorization: Bearer $TOKEN".
# USER_ID is a positive decimal integer (1 to 9223372036854775807, no leading zeros); ROLE matches
# ^[a-z][a-z0-9_-]{0,31}$. Bad arguments: usage and exit 2; missing files: exit 1.
set -euo pipefail

VALID_SECONDS=3600
MAX_USER_ID=9223372036854775807

die() { printf 'dev-token.sh: error: %s\n' "$*" >&2; exit 1; }
usage() {
    printf 'usage: %s DIR USER_ID [ROLE]\n' "$0" >&2
    printf '  USER_ID: a decimal integer from 1 to %s, no leading zeros\n' "$MAX_USER_ID" >&2
    printf '  ROLE:    lowercase, matching ^[a-z][a-z0-9_-]{0,31}$ (e.g. admin)\n' >&2
    exit 2
}

# True for 1..=i64::MAX written without leading zeros.
valid_user_id() {
    [[ $1 =~ ^[1-9][0-9]{0,18}$ ]] || return 1
    [ ${#1} -lt ${#MAX_USER_ID} ] && return
    # 19 digits: compared in two halves, each of which fits bash's arithmetic.
    local hi=${1:0:10} lo=${1:10} max_hi=${MAX_USER_ID:0:10} max_lo=${MAX_USER_ID:10}
    ((10#$hi < 10#$max_hi || (10#$hi == 10#$max_hi && 10#$lo <= 10#$max_lo)))
}

valid_role() { [[ $1 =~ ^[a-z][a-z0-9_-]{0,31}$ ]]; }

# The value of KEY in the env file $2 (its last KEY=VALUE line).
env_value() { sed -n "s/^$1=//p" "$2" | tail -n 1 | tr -d '\r'; }

# $1 as the inside of a JSON string: backslashes and quotes escaped; control characters refused.
json_escape() {
    [[ ! $1 =~ [[:cntrl:]] ]] || die "a control character in \"$1\""
    local s=${1//\\/\\\\}
    printf '%s' "${s//\"/\\\"}"
}

# base64url without padding, of stdin.
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

main() {
    [ $# -eq 2 ] || [ $# -eq 3 ] || usage
    local dir=$1 user_id=$2 role=${3-}
    valid_user_id "$user_id" || usage
    [ $# -eq 2 ] || valid_role "$role" || usage

    local f
    for f in token-key.pem jwks.json reservation.env; do
        [ -r "$dir/$f" ] || die "$dir/$f not found: make the development PKI with scripts/dev-pki.sh $dir"
    done
    command -v openssl >/dev/null || die "openssl not found on PATH: install OpenSSL 3"

    local kid issuer audience
    kid=$(sed -n 's/.*"kid":"\([^"]*\)".*/\1/p' "$dir/jwks.json" | head -n 1)
    [[ $kid =~ ^[A-Za-z0-9._-]+$ ]] || die "no kid found in $dir/jwks.json"
    # The token verifies only when the key in jwks.json is token-key.pem's.
    local x
    x=$(openssl pkey -in "$dir/token-key.pem" -pubout -outform DER | tail -c 32 | b64url)
    grep -qF "\"x\":\"$x\"" "$dir/jwks.json" ||
        die "$dir/jwks.json does not hold token-key.pem's public key: run scripts/dev-pki.sh --force $dir"
    issuer=$(env_value AUTH_ISSUER "$dir/reservation.env")
    audience=$(env_value AUTH_AUDIENCE "$dir/reservation.env")
    if [ -z "$issuer" ] || [ -z "$audience" ]; then
        die "AUTH_ISSUER or AUTH_AUDIENCE missing in $dir/reservation.env"
    fi

    local iss_json aud_json now header claims roles='' signing_input signature
    iss_json=$(json_escape "$issuer")
    aud_json=$(json_escape "$audience")
    now=$(date +%s)
    [ $# -eq 2 ] || roles="\"$role\""
    header=$(printf '{"alg":"EdDSA","typ":"JWT","kid":"%s"}' "$kid" | b64url)
    claims=$(printf '{"iss":"%s","aud":"%s","sub":"%s","iat":%d,"nbf":%d,"exp":%d,"roles":[%s]}' \
        "$iss_json" "$aud_json" "$user_id" \
        "$now" "$now" "$((now + VALID_SECONDS))" "$roles" | b64url)
    signing_input="$header.$claims"
    # pkeyutl signs Ed25519 in one shot and needs the input's size: from a file, not a pipe.
    INPUT_FILE=$(mktemp "${TMPDIR:-/tmp}/dev-token.XXXXXX")
    printf '%s' "$signing_input" >"$INPUT_FILE"
    signature=$(openssl pkeyutl -sign -rawin -inkey "$dir/token-key.pem" -in "$INPUT_FILE" | b64url)
    [ -n "$signature" ] || die "signing with $dir/token-key.pem failed"
    printf '%s.%s\n' "$signing_input" "$signature"
}

INPUT_FILE=
trap '[ -z "$INPUT_FILE" ] || rm -f -- "$INPUT_FILE"' EXIT
main "$@"
